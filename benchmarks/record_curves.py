"""Record IIC learning curves once (configs x seeds x epochs), to replay searches against them.

    python benchmarks/record_curves.py                                   # digits_wide: 400 configs x 5 seeds x 20 epochs
    python benchmarks/record_curves.py --workers 8 --time-budget 420 --out /tmp/out/curves_digits_wide.jsonl
    python benchmarks/record_curves.py --smoke --out /tmp/smoke.jsonl    # 3 configs, 2 seeds, 2 epochs, 8 px

Comparing search strategies takes many searches per strategy, far more compute than one search.
Tabular HPO benchmarks (HPOBench, YAHPO) train a set of configs once, record every epoch, and let
searches read the results instead of training (``benchmarks/search_strategies.py`` does that with
this table). The configs are the first ``--configs`` of a sequence drawn uniformly (log-uniformly
for log ranges) from the preset's space with ``--sample-seed``: config i is the same whatever the
count, so a larger count extends a table. Each config trains on all ``--seeds`` at once as one
stacked run (``iic.train.Trainer``: each seed trains as a run of that seed alone would) for
``--epochs`` epochs, and every epoch of every seed is recorded: Hungarian accuracy, held-out mutual
information (label-free), the largest cluster's share, the training loss; and each epoch's seconds
(all seeds together). A loss that turns NaN ends a config (status ``diverged``, shorter curves).

The output has one JSON object a line, appended as configs finish:

- ``{"kind": "table", ...}`` (first line): what the table is: preset, its space, the complete fixed
  config, seeds, epochs, sample seed, metrics. A rerun must match it;
- ``{"kind": "run", ...}``: how each invocation ran: command, device, torch version, date, workers;
- ``{"kind": "config", ...}``: one config: its index, its searched values, status, seconds, epoch
  seconds and ``curves[metric][seed][epoch]``.

Rerunning the same command resumes: configs already in the file are skipped, a line cut short by a
kill is dropped. ``--time-budget S``: a config is started only while the seconds spent plus those of
the slowest config so far fit in S; configs already running are let finish (so a run passes S only
when a config is slower than every one before it). ``--workers`` processes train configs in
parallel, sharing the one GPU where there is one.

This script imports neither Ray, Optuna nor MLflow (only torch, numpy, pyyaml and what ``iic``
needs): it runs where torch alone is installed (``record_curves_device.sh``).
"""

import argparse
import concurrent.futures
import datetime
import gzip
import json
import math
import multiprocessing
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from iic.config import ConfigError, IICConfig
from iic.status import RunStatus
from iic.train import Trainer, check_seeds, resolve_device
from search.preset_file import assign, config_changes, draw, parse_space, read_preset

REPOSITORY = Path(__file__).resolve().parents[1]
DEFAULT_PRESET = "digits_wide"
DEFAULT_CONFIGS = 400
DEFAULT_SEEDS = [0, 1, 2, 3, 4]
DEFAULT_EPOCHS = 20
CURVE_METRICS = ("cluster_accuracy", "mutual_information", "largest_cluster_share", "loss")
SMOKE = {"configs": 3, "seeds": [0, 1], "epochs": 2, "input_size": 8}
DIGITS = 5  # decimals kept in the table: far below the seed-to-seed noise, and a third of the bytes


def default_table_path(preset: str) -> Path:
    return REPOSITORY / "benchmarks" / "data" / f"curves_{preset}.jsonl"


# ---- the table -----------------------------------------------------------------------------------


def table_definition(preset: str, space: dict, config: IICConfig, seeds: list[int], sample_seed: int) -> dict:
    """What a table holds; a rerun that appends to it must define the same."""
    return {
        "kind": "table",
        "preset": preset,
        "space": space,
        "config": config.to_dict(),
        "seeds": seeds,
        "epochs": config.epochs,
        "sample_seed": sample_seed,
        "metrics": list(CURVE_METRICS),
    }


def sample_configs(space: dict, base: IICConfig, count: int, sample_seed: int) -> list[tuple[dict, IICConfig]]:
    """The first ``count`` configs drawn from ``space`` with ``sample_seed``: (searched values, config)."""
    params = parse_space(space)
    rng = np.random.default_rng(sample_seed)
    configs = []
    for _ in range(count):
        chosen, fixed = assign(params, lambda param: draw(param, rng))
        configs.append((chosen, base.replace(**config_changes(params, chosen, fixed))))
    return configs


def same_values(recorded: dict, drawn: dict) -> bool:
    """Whether a recorded config's values are this draw's: equal, floats up to the last digits
    (another machine's log and exp may round the last bit otherwise)."""
    return recorded.keys() == drawn.keys() and all(
        math.isclose(a, b, rel_tol=1e-12) if isinstance(a, float) and isinstance(b, float) else a == b
        for a, b in ((recorded[k], drawn[k]) for k in recorded)
    )


def read_table(path: str | Path) -> tuple[dict | None, list[dict], list[dict]]:
    """(table definition, run records, config records) of a table file (``.jsonl`` or ``.jsonl.gz``);
    a last line cut short by a kill is left out."""
    path = Path(path)
    if not path.exists():
        return None, [], []
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as handle:
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


def drop_cut_line(path: Path) -> None:
    """Truncate ``path`` to its last complete line, so that appended records start on a line of their own."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


def _rounded(value: float) -> float | None:
    return round(float(value), DIGITS) if math.isfinite(value) else None  # JSON has no NaN


# ---- one config (in a worker process) ------------------------------------------------------------


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def record_config(index: int, values: dict, config_dict: dict, seeds: list[int]) -> dict:
    """Train one config on all ``seeds`` at once for its epochs; its record for the table."""
    started = time.perf_counter()
    trainer = Trainer(IICConfig.from_dict(config_dict), seeds=seeds)
    epoch_seconds = []
    while trainer.status == RunStatus.RUNNING and trainer.epoch < trainer.config.epochs:
        epoch_seconds.append(round(trainer.run_epoch()["epoch_seconds"], 3))
    return {
        "kind": "config",
        "index": index,
        "values": values,
        "status": str(RunStatus.DIVERGED if trainer.status == RunStatus.DIVERGED else RunStatus.COMPLETED),
        "seconds": round(time.perf_counter() - started, 3),
        "epoch_seconds": epoch_seconds,
        "curves": {
            metric: [[_rounded(epoch[metric]) for epoch in history] for history in trainer.seed_histories]
            for metric in CURVE_METRICS
        },
    }


# ---- the command ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--preset", default=DEFAULT_PRESET, help=f"bundled preset or YAML path (default {DEFAULT_PRESET})"
    )
    parser.add_argument("--configs", type=int, help=f"how many configs the table holds (default {DEFAULT_CONFIGS})")
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        help=f"seeds every config trains on (default {' '.join(map(str, DEFAULT_SEEDS))})",
    )
    parser.add_argument("--epochs", type=int, help=f"epochs of every config (default {DEFAULT_EPOCHS})")
    parser.add_argument("--sample-seed", type=int, default=0, help="seed of the configs' draw (default 0)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fix an IICConfig field of every config (not a searched one), e.g. --set max_samples=600",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=max(1, (os.cpu_count() or 2) // 2),
        help="configs trained at once (default: half the CPUs)",
    )
    parser.add_argument(
        "--time-budget", type=float, help="seconds; start no config that would end past it (running ones finish)"
    )
    parser.add_argument(
        "--out",
        help=f"table file, appended to (default {default_table_path(DEFAULT_PRESET).relative_to(REPOSITORY)}; with --smoke a temporary file)",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="3 configs, 2 seeds, 2 epochs, 8 px: checks the whole path in seconds"
    )
    return parser.parse_args(argv)


def device_name(config: IICConfig) -> str:
    device = resolve_device(config.device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    count = args.configs or (SMOKE["configs"] if args.smoke else DEFAULT_CONFIGS)
    epochs = args.epochs or (SMOKE["epochs"] if args.smoke else DEFAULT_EPOCHS)
    out = (
        Path(args.out)
        if args.out
        else Path(tempfile.gettempdir()) / "curves_smoke.jsonl"
        if args.smoke
        else default_table_path(args.preset)
    )
    try:
        seeds = check_seeds(args.seeds or (SMOKE["seeds"] if args.smoke else DEFAULT_SEEDS))
        if out.suffix == ".gz":
            raise ConfigError(f"--out {out}: record to a .jsonl file (appendable); gzip it when the recording is done")
        _, raw = read_preset(args.preset)
        space = raw.get("space") or {}
        searched = set(space) & {assignment.partition("=")[0].strip() for assignment in args.overrides}
        if searched:
            raise ConfigError(f"--set {', '.join(sorted(searched))}: searched by the preset; a table varies it")
        base = IICConfig.from_dict(raw.get("config") or {}).replace(
            epochs=epochs, **({"input_size": SMOKE["input_size"]} if args.smoke else {})
        )
        base = base.with_overrides(args.overrides).validate()
        configs = sample_configs(space, base, count, args.sample_seed)
        for _, config in configs:
            config.validate(check_data=False)
        table = table_definition(Path(args.preset).stem, space, base, seeds, args.sample_seed)
        existing, _, recorded = read_table(out)
        if existing is not None:  # a field IICConfig gained since has its default there
            existing = {**existing, "config": IICConfig.from_dict(existing["config"]).to_dict()}
        if existing is not None and existing != table:
            differ = sorted(key for key in table if existing.get(key) != table.get(key))
            raise ConfigError(
                f"{out} holds another table ({', '.join(differ)} differ); write to another --out or delete it"
            )
    except ValueError as err:  # ConfigError, PresetError, a damaged table
        print(f"error: {err}", file=sys.stderr)
        return 2
    for record in recorded:  # config i must be the one this draw gives: the sampler may have changed
        if record["index"] < count and not same_values(record["values"], configs[record["index"]][0]):
            print(
                f"error: {out}: config {record['index']} was recorded with other values than this draw gives; the table cannot be extended",
                file=sys.stderr,
            )
            return 2

    done = {record["index"] for record in recorded}
    todo = [index for index in range(count) if index not in done]
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        drop_cut_line(out)
    command = "python benchmarks/record_curves.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    run = {
        "kind": "run",
        "command": command,
        "device": device_name(base),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "workers": args.workers,
        "time_budget": args.time_budget,
        "configs": count,
    }
    print(
        f"{len(done)} of {count} configs already in {out}; {len(todo)} to record on {run['device']} with {args.workers} worker(s)"
        + (f", time budget {args.time_budget:.0f} s" if args.time_budget is not None else ""),
        flush=True,
    )

    started = time.perf_counter()
    slowest = 0.0
    recorded_here, failed = [], []
    threads = max(1, (os.cpu_count() or 1) // args.workers)
    with open(out, "a") as table_file:
        if existing is None:
            table_file.write(json.dumps(table) + "\n")
        table_file.write(json.dumps(run) + "\n")
        table_file.flush()
        pool = concurrent.futures.ProcessPoolExecutor(
            args.workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker, initargs=(threads,)
        )
        running = {}
        with pool:
            while todo or running:
                while (
                    todo
                    and len(running) < args.workers
                    and (args.time_budget is None or time.perf_counter() - started + slowest <= args.time_budget)
                ):
                    index = todo.pop(0)
                    values, config = configs[index]
                    running[pool.submit(record_config, index, values, config.to_dict(), seeds)] = index
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
                    accuracy = [curve[-1] for curve in record["curves"]["cluster_accuracy"] if curve]
                    print(
                        f"config {index:>4} {record['status']:<9} {record['seconds']:7.1f} s  final accuracy per seed "
                        + " ".join(f"{a:.3f}" if a is not None else "nan" for a in accuracy)
                        + f"  ({len(done) + len(recorded_here)}/{count}, {time.perf_counter() - started:.0f} s)",
                        flush=True,
                    )

    wall = time.perf_counter() - started
    epoch_seconds = [s for record in recorded_here for s in record["epoch_seconds"]]
    print(
        f"\nrecorded {len(recorded_here)} config(s) in {wall:.0f} s ({len(failed)} failed, {len(todo)} not started: "
        f"{'time budget' if todo else 'none left'}); table {out}: {len(done) + len(recorded_here)} of {count} configs, {out.stat().st_size / 1e6:.2f} MB"
    )
    if epoch_seconds:
        print(
            f"seconds per config-epoch ({len(seeds)} seeds stacked): mean {np.mean(epoch_seconds):.2f}, min {min(epoch_seconds):.2f}, "
            f"max {max(epoch_seconds):.2f}; wall seconds per config {wall / len(recorded_here):.1f} with {args.workers} worker(s)"
        )
    print(f"command: {command}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
