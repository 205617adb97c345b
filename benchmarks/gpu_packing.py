"""Many trials per GPU: the aggregate throughput of N concurrent Ray Tune trials sharing one GPU.

    python -m benchmarks.gpu_packing --out packing.json              # 3 workloads x N = 1 2 4 8 16, bf16
    python -m benchmarks.gpu_packing --workloads digits --no-amp     # fp32
    python -m benchmarks.gpu_packing --mps --set channels_last=true  # trials share the GPU through CUDA MPS
    python -m benchmarks.gpu_packing --smoke                         # CPU: tiny digits, N = 1 2, a fake GPU

N real Tune trials train at once, each asking for 1/N of the GPU and of ``--cpus``. A window of
``--seconds-per-setting`` opens when the last trial has finished its warm-up epochs; the aggregate is
the images all trials trained inside it (an epoch's spread over its duration) over its length, and
``coverage`` the smallest share of it a trial spent in epochs. Also GPU utilisation and memory
(``nvidia-smi``), each trial's peak memory, and the share of the card's dense bf16 peak from FLOPs per
image. Workloads, on the bundled digits: ``digits`` (IICConfig's defaults), ``resnet18-32px`` (3x3 stride-1
stem) and ``resnet18-64px`` (ImageNet stem), both with Sobel and 3 repeats. ``--out`` is rewritten after
every setting, so a run stopped by ``timeout`` keeps what it measured.
"""

import argparse
import contextlib
import datetime
import json
import math
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import ray
import torch
from ray import tune
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import command, table
from iic.config import IICConfig
from iic.inputs import load_config_data
from iic.models import IICModel, build_backbone
from iic.trainer import train

REPOSITORY = Path(__file__).resolve().parent.parent
WORKLOADS = {
    "digits": {},
    "resnet18-32px": {"backbone": "resnet18", "input_size": 32, "sobel": True, "repeats": 3},
    "resnet18-64px": {"backbone": "resnet18", "input_size": 64, "sobel": True, "repeats": 3},
}
SMOKE_OVERRIDES = {"max_samples": 200, "backbone_width": 4}
# Dense bf16 TFLOP/s by a substring of the device name, checked in order (datasheet figures).
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0), ("A100", 312.0), ("A10G", 125.0))
TIME_LIMITED_EPOCHS = 1_000_000  # trials stop on the clock, never on the epoch count
COLUMNS = (  # header, row key, format
    ("workload", "workload", "{}"),
    ("N", "trials_per_gpu", "{}"),
    ("agg img/s", "aggregate_images_per_second", "{:,.0f}"),
    ("per trial", "per_trial_images_per_second", "{:,.0f}"),
    ("speed-up", "speedup_over_1", "{:.2f}x"),
    ("GPU util", "gpu_utilisation", "{:.0f}%"),
    ("GPU MiB", "gpu_memory_peak_mib", "{:,.0f}"),
    ("trial MiB", "trial_peak_memory_mib", "{:,.0f}"),
    ("TFLOP/s", "tflops", "{:.2f}"),
    ("bf16 peak", "fraction_of_bf16_peak", "{:.2%}"),
    ("coverage", "coverage", "{:.0%}"),
    ("setting s", "setting_seconds", "{:.1f}"),
)


def passes_per_epoch(config: IICConfig) -> int:
    """An epoch is one pass of the main head, after the overclustering head's passes."""
    return 1 + (config.overcluster_passes if config.overcluster_k else 0)


def flops_per_image(config: IICConfig, channels: int) -> float:
    """FLOPs one source image costs per pass of an epoch: a forward + backward of the image and its
    ``repeats`` twins, plus its share of the epoch's evaluation (two forwards: plain and augmented)."""
    backbone = build_backbone(config.backbone, channels, config.input_size, config.backbone_width)
    model = IICModel(backbone, config.num_clusters, config.overcluster_k, config.num_subheads)
    views = torch.rand(1 + config.repeats, channels, config.input_size, config.input_size)
    with FlopCounterMode(display=False) as step:
        sum(p.sum() for p in model(views, "main")).backward()
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as forward:
        model(views[:1], "main")
    return step.get_total_flops() + 2 * forward.get_total_flops() / passes_per_epoch(config)


@ray.remote(num_cpus=0)
class SteadyWindow:
    """Opens when the last of a setting's trials has finished its warm-up, closes ``seconds`` later."""

    def __init__(self, trials: int, seconds: float):
        self.trials, self.seconds, self.warmed_up, self.opened = trials, seconds, set(), None

    def check_in(self, trial: int, warmed_up: bool) -> float | None:
        """Note a trial's progress; returns when the window closes, or None while it is not open."""
        if warmed_up:
            self.warmed_up.add(trial)
        if self.opened is None and len(self.warmed_up) == self.trials:
            self.opened = time.time()
        return self.bounds()[1]

    def bounds(self) -> tuple[float | None, float | None]:
        return (self.opened, None if self.opened is None else self.opened + self.seconds)


def packing_trial(config: dict) -> None:
    """A Tune trial: train until the setting's window has closed, reporting every epoch."""
    iic_config = IICConfig.from_dict(config["iic"])
    window = ray.get_actor(config["window"])
    images_per_epoch = config["images"] * passes_per_epoch(iic_config)
    started = time.time()

    def on_epoch(metrics: dict, _trainer) -> bool:
        now = time.time()
        closes = ray.get(window.check_in.remote(config["index"], metrics["epoch"] >= config["warmup_epochs"]))
        cuda = torch.cuda.is_available()
        peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else math.nan
        report = {"epoch_seconds": metrics["epoch_seconds"], "images": images_per_epoch, "ended": now, "on_cuda": cuda}
        tune.report({**report, "peak_memory_mib": peak})
        if closes is None:  # a setting whose window never opens (a trial died) ends rather than hangs
            return now - started > config["warmup_timeout"]
        return now >= closes

    train(iic_config, on_epoch=on_epoch)


def images_in_window(records: list[dict], opened: float, closed: float) -> tuple[float, float]:
    """(images, seconds of training) of one trial inside [opened, closed]; an epoch's images are
    spread evenly over the epoch, which ended at ``ended`` after ``epoch_seconds``."""
    images = busy = 0.0
    for record in records:
        began, ended = record["ended"] - record["epoch_seconds"], record["ended"]
        overlap = max(0.0, min(ended, closed) - max(began, opened))
        images += record["images"] * overlap / record["epoch_seconds"]
        busy += overlap
    return images, busy


def aggregate(trial_records: list[list[dict]], opened: float, closed: float) -> dict:
    seconds = closed - opened
    per_trial = [images_in_window(records, opened, closed) for records in trial_records]
    total = sum(images for images, _ in per_trial)
    inside = [r for records in trial_records for r in records if opened < r["ended"] < closed + r["epoch_seconds"]]
    return {
        "aggregate_images_per_second": total / seconds,
        "per_trial_images_per_second": total / seconds / len(trial_records),
        "coverage": min(busy for _, busy in per_trial) / seconds,
        "window_seconds": seconds,
        "epochs_in_window": len(inside),
    }


def nvidia_smi(*query: str) -> str | None:
    """``nvidia-smi QUERY --format=csv,noheader,nounits -i 0``'s output, or None without one."""
    binary = shutil.which("nvidia-smi")
    try:
        command_line = [binary, *query, "--format=csv,noheader,nounits", "-i", "0"]
        return subprocess.run(command_line, capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    except (subprocess.SubprocessError, OSError, TypeError):  # TypeError: no nvidia-smi (binary is None)
        return None


def peak_tflops(name: str, given: float | None) -> float | None:
    return given if given is not None else next((tflops for key, tflops in PEAK_BF16_TFLOPS if key in name), None)


@contextlib.contextmanager
def gpu_sampler(mps_control: str | None):
    """GPU utilisation and memory in use every 0.5 s in a background thread while inside, and
    whether an MPS server was up: yields ``summary(opened, closed)`` for the setting's row."""
    samples, servers, stop = [], [], threading.Event()

    def sample() -> None:
        while not stop.wait(0.5):
            try:
                reading = nvidia_smi("--query-gpu=utilization.gpu,memory.used")
                samples.append((time.time(), *map(float, reading.split(","))))
                if mps_control and not any(servers):
                    ask = {"input": "get_server_list\n", "capture_output": True, "text": True, "timeout": 10}
                    listing = subprocess.run([mps_control], **ask).stdout
                    servers.append(any(line.strip().isdigit() for line in listing.splitlines()))
            except (subprocess.SubprocessError, OSError, ValueError, AttributeError):  # AttributeError: no reading
                pass

    def summary(opened: float | None, closed: float | None) -> dict:
        inside = [util for t, util, _ in samples if opened is not None and opened <= t <= closed]
        return {
            "gpu_utilisation": sum(inside) / len(inside) if inside else None,
            "gpu_memory_peak_mib": max((used for _, _, used in samples), default=None),
            **({"mps_server_seen": any(servers)} if mps_control else {}),
        }

    thread = threading.Thread(target=sample, daemon=True)
    if shutil.which("nvidia-smi"):
        thread.start()
    try:
        yield summary
    finally:
        stop.set()
        if thread.is_alive():
            thread.join(timeout=10)


@contextlib.contextmanager
def mps_daemon(control: str):
    """CUDA MPS for the processes started inside: its pipe and log folders go in a temporary folder
    named by the environment, which Ray's workers inherit (so entered before ``ray.init``)."""
    with tempfile.TemporaryDirectory(prefix="mps-") as folder:
        for variable, sub in (("CUDA_MPS_PIPE_DIRECTORY", "pipe"), ("CUDA_MPS_LOG_DIRECTORY", "log")):
            Path(folder, sub).mkdir()
            os.environ[variable] = f"{folder}/{sub}"
        subprocess.run([control, "-d"], check=True, timeout=30)
        try:
            yield
        finally:
            subprocess.run([control], input="quit\n", text=True, timeout=60)
            time.sleep(1)  # the daemon removes its pipes as it goes
            del os.environ["CUDA_MPS_PIPE_DIRECTORY"], os.environ["CUDA_MPS_LOG_DIRECTORY"]


def run_setting(workload: str, config: IICConfig, facts: dict, trials: int, args, mps_control: str | None) -> dict:
    """N concurrent trials of ``config`` on the one GPU; returns the setting's row of the table."""
    name = f"window-{workload}-{trials}-{time.time_ns()}"
    window = SteadyWindow.options(name=name).remote(trials, args.seconds_per_setting)
    # Shares that let all N run at once (Ray's shares are bookkeeping; a trial gets at least one thread).
    resources = {"cpu": args.cpus / trials, "gpu": 1 / trials}
    settings = {key: getattr(args, key) for key in ("warmup_epochs", "warmup_timeout")}
    began = time.time()
    with tempfile.TemporaryDirectory(prefix="gpu-packing-") as storage, gpu_sampler(mps_control) as summary:
        grid = tune.Tuner(
            tune.with_resources(packing_trial, resources),
            param_space={"iic": config.to_dict(), "images": facts["images"], "window": name, **settings}
            | {"index": tune.grid_search(list(range(trials)))},
            tune_config=tune.TuneConfig(max_concurrent_trials=trials),
            run_config=tune.RunConfig(storage_path=storage, name=name, verbose=0),
        ).fit()
        # Every result each trial reported, from its folder (a trial that failed before reporting has none).
        records = [r.metrics_dataframe.to_dict("records") for r in grid if r.metrics_dataframe is not None]
    opened, closed = ray.get(window.bounds.remote())
    ray.kill(window)
    peaks = [r["peak_memory_mib"] for rs in records for r in rs if not math.isnan(r["peak_memory_mib"])]
    row = {
        "workload": workload,
        "trials_per_gpu": trials,
        "amp": config.amp,
        "mps": mps_control is not None,
        "cpus_per_trial": resources["cpu"],
        "gpu_per_trial": resources["gpu"],
        "setting_seconds": time.time() - began,
        "errors": [str(error).splitlines()[0] for error in grid.errors],
        **summary(opened, closed),
        "trials_reported": len(records),
        # The setting's fixed cost: Tune, the trials' processes, torch, CUDA, data and model, one epoch.
        "first_epoch_after_seconds": max(r[0]["ended"] for r in records) - began if records else None,
        "on_cuda": bool(records) and all(r[-1]["on_cuda"] for r in records),
        "trial_peak_memory_mib": max(peaks) if peaks else None,
    }
    if opened is None or len(records) < trials:
        row["error"] = "no steady-state window: not every trial finished its warm-up (see errors)"
        return row
    row.update(aggregate(records, opened, closed))
    achieved = row["aggregate_images_per_second"] * facts["flops_per_image"]
    row["tflops"] = achieved / 1e12
    row["fraction_of_bf16_peak"] = achieved / (args.peak_tflops * 1e12) if args.peak_tflops else None
    return row


def add_speedups(rows: list[dict]) -> None:
    """Aggregate over the same workload and variant's 1-trial aggregate."""
    key = ("workload", "amp", "mps")
    single = {tuple(r[k] for k in key): r.get("aggregate_images_per_second") for r in rows if r["trials_per_gpu"] == 1}
    for row in rows:
        base, rate = single.get(tuple(row[k] for k in key)), row.get("aggregate_images_per_second")
        row["speedup_over_1"] = rate / base if rate and base else None


def write_json(path: Path, header: dict, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    clean = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()} for r in rows]
    path.write_text(json.dumps({**header, "rows": clean}, indent=2))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--workloads", nargs="+", choices=list(WORKLOADS), help="default: all (smoke: digits)")
    add("--trials-per-gpu", type=int, nargs="+", help="concurrent trials on the GPU (default 1 2 4 8 16; smoke 1 2)")
    add("--seconds-per-setting", type=float, help="steady-state window per setting (default 6; smoke 2)")
    add("--warmup-epochs", type=int, default=1, help="epochs per trial left out of the window")
    add("--warmup-timeout", type=float, default=60, help="seconds after which a trial stops if no window opened")
    add("--amp", action=argparse.BooleanOptionalAction, default=True, help="bf16 autocast (config.amp)")
    add("--mps", action="store_true", help="run the trials under the CUDA MPS daemon (started and stopped here)")
    add("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="an IICConfig field")
    add("--cpus", type=float, help="CPUs of the local Ray (default: all; smoke: 2)")
    add("--peak-tflops", type=float, help="the GPU's dense bf16 peak, where the device name is not known")
    add("--out", type=Path, help="write the table as JSON here (rewritten after every setting)")
    add("--smoke", action="store_true", help="tiny digits (200 images, width 4), N = 1 2, a fake GPU: runs on CPU")
    args = parser.parse_args(argv)
    args.workloads = args.workloads or (["digits"] if args.smoke else list(WORKLOADS))
    args.trials_per_gpu = args.trials_per_gpu or ([1, 2] if args.smoke else [1, 2, 4, 8, 16])
    args.seconds_per_setting = args.seconds_per_setting or (2.0 if args.smoke else 6.0)
    args.cpus = args.cpus or (min(2, os.cpu_count()) if args.smoke else os.cpu_count())
    return args


def workload_config(workload: str, args: argparse.Namespace) -> IICConfig:
    smoke = SMOKE_OVERRIDES if args.smoke else {}
    changes = {**WORKLOADS[workload], **smoke, "amp": args.amp, "epochs": TIME_LIMITED_EPOCHS}
    # Absolute paths: Tune runs each trial in a folder of its own.
    return (
        IICConfig(dataset="digits").replace(**changes).with_overrides(args.overrides).with_absolute_paths().validate()
    )


def workload_facts(workload: str, config: IICConfig, smoke: bool) -> dict:
    """Images per epoch, channels into the model (Sobel: two gradients) and FLOPs per image, printed."""
    data = load_config_data(config)
    channels = 2 if config.sobel else data.channels
    facts = {"overrides": {**WORKLOADS[workload], **(SMOKE_OVERRIDES if smoke else {})}, "images": len(data)}
    facts.update(channels=channels, flops_per_image=flops_per_image(config, channels))
    print(f"  {workload}: {len(data)} images x {passes_per_epoch(config)} pass(es) an epoch, ", end="")
    print(f"{facts['flops_per_image'] / 1e9:.3f} GFLOP an image a pass (train step + evaluation)", flush=True)
    return facts


def run_settings(args, configs: dict, facts: dict, mps_control: str | None, header: dict) -> list[dict]:
    """Every (workload, N) setting, on one local Ray: their rows."""
    rows = []
    # Trials run in Ray's workers, which must import this checkout's iic; Tune's older output honours verbose=0.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")]))
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # One GPU, real or (smoke, no CUDA) Ray bookkeeping only; the trials then train on the CPU.
    ray.init(num_cpus=args.cpus, num_gpus=1, include_dashboard=False, log_to_driver=False)
    try:
        for workload, config in configs.items():
            for trials in args.trials_per_gpu:
                rows.append(run_setting(workload, config, facts[workload], trials, args, mps_control))
                add_speedups(rows)
                rate, error = rows[-1].get("aggregate_images_per_second", math.nan), rows[-1].get("error", "")
                print(f"  {workload} N={trials}: {rate:,.0f} images/s aggregate {error}".rstrip(), flush=True)
                if args.out:
                    write_json(args.out, header, rows)
    finally:
        ray.shutdown()
        if args.out:
            write_json(args.out, header, rows)
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    name = nvidia_smi("--query-gpu=name") or "cpu (no CUDA GPU)"
    args.peak_tflops = peak_tflops(name, args.peak_tflops)
    date = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    header = {"date": date, "device": name, "command": command("gpu_packing", argv), "torch": torch.__version__}
    header.update(ray=ray.__version__, amp=args.amp, mps=args.mps, peak_bf16_tflops=args.peak_tflops, cpus=args.cpus)
    header["seconds_per_setting"] = args.seconds_per_setting
    print(f"{date}  {name}  torch {torch.__version__}  ray {ray.__version__}  {args.cpus:g} CPUs", flush=True)
    configs = {workload: workload_config(workload, args) for workload in args.workloads}
    header["workloads"] = facts = {w: workload_facts(w, config, args.smoke) for w, config in configs.items()}
    fallback = Path("/usr/local/nvidia/bin/nvidia-cuda-mps-control")
    mps_control = shutil.which("nvidia-cuda-mps-control") or (str(fallback) if fallback.is_file() else None)
    if args.mps and mps_control is None:
        raise SystemExit("error: --mps: nvidia-cuda-mps-control is not on PATH (nor in /usr/local/nvidia/bin)")
    mps_control = mps_control if args.mps else None
    with mps_daemon(mps_control) if mps_control else contextlib.nullcontext():
        rows = run_settings(args, configs, facts, mps_control, header)

    variant = ("bf16 autocast" if args.amp else "fp32") + (", CUDA MPS" if args.mps else "")
    print(f"\nMany trials per GPU ({variant}); {args.seconds_per_setting:g} s window per setting; bf16 peak ", end="")
    print(f"{args.peak_tflops or 'n/a'} TFLOP/s; images/s counts source images (each with its twins)")
    print(table([h for h, _, _ in COLUMNS], [[cell(row.get(key), spec) for _, key, spec in COLUMNS] for row in rows]))
    for row in rows:
        if row.get("error") or row.get("mps_server_seen") is False:
            print(f"  N={row['trials_per_gpu']}: {row.get('error', 'no MPS server seen')} {row['errors'][:2]}")
    print(f"command: {header['command']}")
    return rows


def cell(value, spec: str) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else spec.format(value)


if __name__ == "__main__":
    main()
