"""Record IIC learning curves once (configs x seeds x epochs), so that searches can be replayed against them.

    python -m benchmarks.record_curves                 # digits_wide: 400 configs x 5 seeds x 20 epochs
    python -m benchmarks.record_curves --preset digits_schedules --workers 8 --time-budget 420 --out DIR/t.jsonl
    python -m benchmarks.record_curves --smoke --out /tmp/smoke.jsonl    # 3 configs, 2 seeds, 2 epochs, 8 px

As tabular HPO benchmarks (HPOBench, YAHPO) do, this trains a set of configs once and records every
epoch, so that ``benchmarks.search_strategies`` can replay many searches on the table. The configs are
the first ``--configs`` drawn uniformly (log-uniformly for log ranges) from the preset's space with
``--sample-seed``, so a larger count extends a table. Each trains on all ``--seeds`` at once, recording
per seed and epoch the accuracy, held-out mutual information, largest cluster's share and loss; a NaN
loss ends a config (``diverged``). One JSON object a line: the table's definition first (a rerun must
match it), a ``run`` record per invocation, a ``config`` record per config as it finishes
(``curves[metric][seed][epoch]``). A rerun resumes; ``--time-budget`` starts a config only while it
should end in time. Imports neither Ray, Optuna nor MLflow: it runs where only torch is installed.
"""

import argparse
import concurrent.futures
import dataclasses
import datetime
import gzip
import json
import math
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import command
from iic.config import ConfigError, IICConfig
from iic.status import RunStatus
from iic.trainer import train
from search.params import assign, config_changes, draw, parse_space
from search.preset import read_preset

REPOSITORY = Path(__file__).resolve().parents[1]
DEFAULT_PRESET = "digits_wide"
DEFAULT_CONFIGS, DEFAULT_SEEDS, DEFAULT_EPOCHS = 400, [0, 1, 2, 3, 4], 20
CURVE_METRICS = ("cluster_accuracy", "mutual_information", "largest_cluster_share", "loss")
SMOKE = {"configs": 3, "seeds": [0, 1], "epochs": 2, "input_size": 8}
DIGITS = 5  # decimals kept in the table (far below the seed noise; a third of the bytes); NaN is stored as None


def default_table_path(preset: str) -> Path:
    return REPOSITORY / "benchmarks" / "data" / f"curves_{preset}.jsonl"


def current_fields(config: dict) -> dict:
    """A recorded config as IICConfig reads it now: fields it gained since take their defaults, and
    fields it dropped are left out (the bundled tables hold their defaults)."""
    names = {field.name for field in dataclasses.fields(IICConfig)}
    return IICConfig.from_dict({key: value for key, value in config.items() if key in names}).to_dict()


def sample_configs(space: dict, base: IICConfig, count: int, sample_seed: int) -> list[tuple[dict, IICConfig]]:
    """The first ``count`` configs drawn from ``space`` with ``sample_seed``: (searched values, config)."""
    params = parse_space(space)
    rng = np.random.default_rng(sample_seed)
    configs = []
    for _ in range(count):
        chosen, fixed = assign(params, lambda param: draw(param, rng))
        configs.append((chosen, base.replace(**config_changes(params, chosen, fixed))))
    return configs


def read_table(path: str | Path) -> tuple[dict | None, list[dict], list[dict]]:
    """(table definition, run records, config records) of a ``.jsonl`` or ``.jsonl.gz`` table; a last
    line cut short by a kill is left out."""
    path = Path(path)
    if not path.exists():
        return None, [], []
    with (gzip.open if path.suffix == ".gz" else open)(path, "rt") as handle:
        lines = handle.read().split("\n")
    records = []
    for number, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines) - 1:  # the last line, with no newline after it: cut short
                break
            raise ValueError(f"{path} line {number + 1} is not JSON; the table is damaged") from None
    table = records[0] if records and records[0].get("kind") == "table" else None
    if records and table is None:
        raise ValueError(f'{path}: the first line is not a table definition ({{"kind": "table", ...}})')
    return table, [r for r in records if r["kind"] == "run"], [r for r in records if r["kind"] == "config"]


def record_config(index: int, values: dict, config_dict: dict, seeds: list[int], threads: int) -> dict:
    """Train one config on all ``seeds`` at once (in a worker process); its record for the table."""
    torch.set_num_threads(threads)
    started = time.perf_counter()
    result = train(IICConfig.from_dict(config_dict), seeds=seeds)
    return {
        "kind": "config",
        "index": index,
        "values": values,
        "status": str(RunStatus.DIVERGED if result.status == RunStatus.DIVERGED else RunStatus.COMPLETED),
        "seconds": round(time.perf_counter() - started, 3),
        "epoch_seconds": [round(epoch["epoch_seconds"], 3) for epoch in result.history],
        "curves": {
            metric: [
                [round(e[metric], DIGITS) if math.isfinite(e[metric]) else None for e in run.history]
                for run in result.seeds
            ]
            for metric in CURVE_METRICS
        },
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--preset", default=DEFAULT_PRESET, help=f"bundled preset or YAML path (default {DEFAULT_PRESET})")
    add("--configs", type=int, help=f"how many configs the table holds (default {DEFAULT_CONFIGS})")
    add("--seeds", type=int, nargs="+", help="seeds every config trains on (default 0 1 2 3 4)")
    add("--epochs", type=int, help=f"epochs of every config (default {DEFAULT_EPOCHS})")
    add("--sample-seed", type=int, default=0, help="seed of the configs' draw (default 0)")
    add("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="fix an unsearched field")
    add("--workers", type=int, default=max(1, (os.cpu_count() or 2) // 2), help="configs trained at once")
    add("--time-budget", type=float, help="seconds; start no config that would end past it (running ones finish)")
    add("--out", help="table file, appended to (default benchmarks/data/curves_PRESET.jsonl)")
    add("--smoke", action="store_true", help="3 configs, 2 seeds, 2 epochs, 8 px: checks the whole path in seconds")
    return parser.parse_args(argv)


def device_name(device: str) -> str:
    if device != "cpu" and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def prepare(args: argparse.Namespace, count: int, epochs: int, out: Path) -> tuple[dict, list, dict | None, list]:
    """(table definition, configs, the table already in ``out``, its config records); a ValueError
    says why the table cannot be written or extended."""
    seeds = args.seeds or (SMOKE["seeds"] if args.smoke else DEFAULT_SEEDS)
    if len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ConfigError(f"--seeds: give distinct non-negative integers (got {seeds})")
    if out.suffix == ".gz":
        raise ConfigError(f"--out {out}: record to a .jsonl file (appendable); gzip it when the recording is done")
    _, raw = read_preset(args.preset)
    space = raw.get("space") or {}
    searched = set(space) & {assignment.partition("=")[0].strip() for assignment in args.overrides}
    if searched:
        raise ConfigError(f"--set {', '.join(sorted(searched))}: searched by the preset; a table varies it")
    smoke = {"input_size": SMOKE["input_size"]} if args.smoke else {}
    base = IICConfig.from_dict(raw.get("config") or {}).replace(epochs=epochs, **smoke)
    base = base.with_overrides(args.overrides).validate()
    configs = sample_configs(space, base, count, args.sample_seed)
    for _, config in configs:
        config.validate(check_data=False)
    # What the table holds; a rerun that appends to it must define the same.
    table = {"kind": "table", "preset": Path(args.preset).stem, "space": space, "config": base.to_dict()}
    table.update(seeds=seeds, epochs=base.epochs, sample_seed=args.sample_seed, metrics=list(CURVE_METRICS))
    existing, _, recorded = read_table(out)
    if existing is not None and {**existing, "config": current_fields(existing["config"])} != table:
        differ = sorted(key for key in table if existing.get(key) != table.get(key))
        raise ConfigError(
            f"{out} holds another table ({', '.join(differ)} differ); write to another --out or delete it"
        )
    return table, configs, existing, recorded


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    count = args.configs or (SMOKE["configs"] if args.smoke else DEFAULT_CONFIGS)
    epochs = args.epochs or (SMOKE["epochs"] if args.smoke else DEFAULT_EPOCHS)
    smoke_out = Path(tempfile.gettempdir()) / "curves_smoke.jsonl"
    out = Path(args.out) if args.out else smoke_out if args.smoke else default_table_path(args.preset)
    try:
        table, configs, existing, recorded = prepare(args, count, epochs, out)
    except ValueError as err:  # ConfigError, PresetError, a damaged or different table
        print(f"error: {err}", file=sys.stderr)
        return 2

    done = {record["index"] for record in recorded}
    todo = [index for index in range(count) if index not in done]
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists() and not out.read_bytes().endswith(b"\n"):  # drop a line cut short, so appends start afresh
        out.write_bytes(out.read_bytes()[: out.read_bytes().rfind(b"\n") + 1])
    date = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    run = {"kind": "run", "command": command("record_curves", argv), "device": device_name(table["config"]["device"])}
    run.update(torch=torch.__version__, date=date, workers=args.workers, time_budget=args.time_budget, configs=count)
    budget = f", time budget {args.time_budget:.0f} s" if args.time_budget is not None else ""
    print(f"{len(done)} of {count} configs already in {out}; {len(todo)} to record on {run['device']}{budget}")

    started, slowest = time.perf_counter(), 0.0
    recorded_here, failed = [], []
    threads = max(1, (os.cpu_count() or 1) // args.workers)
    spawn = multiprocessing.get_context("spawn")
    with open(out, "a") as table_file, concurrent.futures.ProcessPoolExecutor(args.workers, mp_context=spawn) as pool:
        table_file.write("".join(json.dumps(line) + "\n" for line in ([table] if existing is None else []) + [run]))
        table_file.flush()
        running = {}
        while todo or running:
            while todo and len(running) < args.workers:
                if args.time_budget is not None and time.perf_counter() - started + slowest > args.time_budget:
                    break
                index = todo.pop(0)
                values, config = configs[index]
                running[pool.submit(record_config, index, values, config.to_dict(), table["seeds"], threads)] = index
            if not running:
                break  # the budget holds no further config
            finished, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in finished:
                index = running.pop(future)
                try:
                    record = future.result()
                except Exception as err:  # one config's failure (e.g. out of memory) must not lose the others
                    failed.append(index)
                    print(f"config {index} failed: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
                    if isinstance(err, concurrent.futures.process.BrokenProcessPool):
                        todo.clear()
                    continue
                table_file.write(json.dumps(record) + "\n")
                table_file.flush()
                recorded_here.append(record)
                slowest = max(slowest, record["seconds"])
                accuracy = " ".join(
                    f"{c[-1]:.3f}" if c and c[-1] is not None else "nan" for c in record["curves"]["cluster_accuracy"]
                )
                print(
                    f"config {index:>4} {record['status']:<9} {record['seconds']:7.1f} s  final accuracy per seed "
                    f"{accuracy}  ({len(done) + len(recorded_here)}/{count}, {time.perf_counter() - started:.0f} s)",
                    flush=True,
                )

    wall = time.perf_counter() - started
    print(
        f"\nrecorded {len(recorded_here)} config(s) in {wall:.0f} s ({len(failed)} failed, {len(todo)} not started: "
        f"{'time budget' if todo else 'none left'}); {out}: {len(done) + len(recorded_here)} of {count} configs, "
        f"{out.stat().st_size / 1e6:.2f} MB"
    )
    print(f"command: {run['command']}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
