"""Many trials per GPU: the aggregate throughput of N concurrent Ray Tune trials sharing one GPU.

    python benchmarks/gpu_packing.py                                   # 3 workloads x N = 1 2 4 8 16, bf16
    python benchmarks/gpu_packing.py --workloads digits --no-amp       # fp32
    python benchmarks/gpu_packing.py --mps --out mps.json              # trials share the GPU through CUDA MPS
    python benchmarks/gpu_packing.py --set batch_size=256              # any IICConfig field, for every trial
    python benchmarks/gpu_packing.py --smoke                           # CPU: tiny digits, N = 1 2, a fake GPU

For each workload and each N in ``--trials-per-gpu`` it runs N real Ray Tune trials at once, each
asking for 1/N of the one GPU (``tune.with_resources``; Ray's fractions are bookkeeping only) and
``--cpus`` / N CPUs, so that all N run at once. Every trial trains with ``iic.train.train(config, on_epoch=...)``
and reports to Tune after each epoch: images per second = images in the dataset x passes per epoch /
``epoch_seconds`` (which includes the per-epoch evaluation, as in a search's trial), when the epoch
ended, and its peak ``torch.cuda.max_memory_allocated``.

Steady state: warm-up epochs (``--warmup-epochs``, default 1: CUDA and cuDNN start-up, the first
allocations) are left out. A small Ray actor opens the measurement window when the last of the N
trials has finished its warm-up and closes it ``--seconds-per-setting`` later; each trial stops at
its first epoch end past the close, so every trial trains through the whole window. The aggregate is
the images all trials processed inside the window (an epoch's images spread evenly over its
duration) over the window's length; the time a trial spends between epochs (``tune.report``) counts
as idle. ``coverage`` is the smallest share of the window a trial spent inside epochs.

Also per setting: GPU utilisation (mean of ``nvidia-smi`` samples every 0.5 s inside the window)
and the GPU's peak memory in use (all processes, CUDA contexts included); the largest per-trial
``max_memory_allocated``; and the share of the GPU's dense bf16 peak the aggregate reaches, from
FLOPs per image counted with ``torch.utils.flop_counter.FlopCounterMode``: one forward + backward of
an image with its ``repeats`` twins per pass, plus the two evaluation forwards per epoch (the share
is quoted against the bf16 peak also for ``--no-amp`` runs). Peaks: H100 SXM and H200 989 TFLOP/s,
H100 PCIe 756, A100 312, A10G 125; otherwise give ``--peak-tflops``.

Workloads (all on the bundled digits, upscaled to ``input_size``; offline):
  digits          IICConfig() defaults: ClusterNet width 16 at 16 px, batch 64 x 4 repeats
  resnet18-32px   ResNet18 (3x3 stride-1 stem) at 32 px, Sobel, batch 64 x 3 repeats
  resnet18-64px   ResNet18 (ImageNet stem) at 64 px, Sobel, batch 64 x 3 repeats
(Sobel and 3 repeats as in step_profile.py's ResNet18 setup; its colour jitter would need RGB).

Time: a setting costs its trials' start (process, torch import, CUDA context, data, model), the
warm-up, the window and the last epoch's overrun (each row records ``first_epoch_after_seconds`` and
``setting_seconds``). Estimated at 15-20 s with the default 6 s window on a 16-core GPU machine, so
the 15 default settings take about 5 minutes; on 2 busy CPU cores a smoke setting takes 20-35 s. ``--time-budget`` skips (and lists) settings that would
not finish inside it; the JSON (``--out``) is rewritten after every setting, so a killed run keeps
what it measured. One ``ray.init`` (one GPU, ``--cpus`` CPUs) serves all settings.
"""

import argparse
import contextlib
import dataclasses
import datetime
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PROCESS_STARTED = time.time()  # --time-budget counts from here
REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))  # this checkout's iic, also where nothing is installed (the GPU machine)

import ray  # noqa: E402
import torch  # noqa: E402
from ray import tune  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from iic.config import IICConfig  # noqa: E402
from iic.data import load_dataset  # noqa: E402
from iic.models import IICModel, build_backbone  # noqa: E402
from iic.sobel import Sobel  # noqa: E402
from iic.train import train  # noqa: E402

WORKLOADS = {
    "digits": {},
    "resnet18-32px": {"backbone": "resnet18", "input_size": 32, "sobel": True, "repeats": 3},
    "resnet18-64px": {"backbone": "resnet18", "input_size": 64, "sobel": True, "repeats": 3},
}
SMOKE_OVERRIDES = {"max_samples": 200, "backbone_width": 4}
# Dense bf16 TFLOP/s by a substring of the device name, checked in order (datasheet figures).
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0), ("A100", 312.0), ("A10G", 125.0))
TIME_LIMITED_EPOCHS = 1_000_000  # trials stop on the clock, never on the epoch count
SAMPLE_SECONDS = 0.5


# ---- what one image costs ---------------------------------------------------------------------


def dataset_facts(config: IICConfig) -> dict:
    """Images per epoch and channels into the model, from the dataset exactly as a trial loads it."""
    data = load_dataset(
        config.dataset,
        config.data_root,
        split=config.split,
        input_size=config.input_size,
        greyscale=config.greyscale,
        class_map=config.class_map,
        max_samples=config.max_samples,
        seed=config.seed,
        download=False,
    )
    channels = Sobel.output_channels(data.channels, config.sobel_keep_input) if config.sobel else data.channels
    return {"images": len(data), "channels": channels}


def passes_per_epoch(config: IICConfig) -> int:
    return config.main_passes + (config.overcluster_passes if config.overcluster_k else 0)


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


# ---- the trial and its window -----------------------------------------------------------------


@ray.remote(num_cpus=0)
class SteadyWindow:
    """Opens when the last of a setting's trials has finished its warm-up, closes ``seconds`` later."""

    def __init__(self, trials: int, seconds: float):
        self.trials = trials
        self.seconds = seconds
        self.warmed_up: set[int] = set()
        self.opened: float | None = None

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
        tune.report(
            {
                "epoch": metrics["epoch"],
                "epoch_seconds": metrics["epoch_seconds"],
                "images": images_per_epoch,
                "images_per_second": images_per_epoch / metrics["epoch_seconds"],
                "ended": now,
                "trial_started": started,
                "peak_memory_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else float("nan"),
                "on_cuda": cuda,
            }
        )
        if closes is None:  # a setting whose window never opens (a trial died) ends rather than hangs
            return now - started > config["warmup_timeout"]
        return now >= closes

    train(iic_config, on_epoch=on_epoch)


class Results(tune.Callback):
    """Every result every trial reported, as it reached the driver."""

    def __init__(self):
        self.by_trial: dict[str, list[dict]] = {}

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.by_trial.setdefault(trial.trial_id, []).append(dict(result))


# ---- the aggregate ----------------------------------------------------------------------------


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
    return {
        "aggregate_images_per_second": total / seconds,
        "per_trial_images_per_second": total / seconds / len(trial_records),
        "coverage": min(busy for _, busy in per_trial) / seconds,
        "window_seconds": seconds,
        "epochs_in_window": sum(
            1
            for records in trial_records
            for r in records
            if r["ended"] > opened and r["ended"] - r["epoch_seconds"] < closed
        ),
    }


# ---- the GPU from outside ---------------------------------------------------------------------


def nvidia_smi() -> str | None:
    return shutil.which("nvidia-smi")


def device_name() -> str:
    if nvidia_smi():
        try:
            return subprocess.run(
                [nvidia_smi(), "--query-gpu=name", "--format=csv,noheader", "-i", "0"],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            ).stdout.strip()
        except (subprocess.SubprocessError, OSError):
            pass
    return "cpu (no CUDA GPU)"


def peak_tflops(name: str, given: float | None) -> float | None:
    if given is not None:
        return given
    return next((tflops for key, tflops in PEAK_BF16_TFLOPS if key in name), None)


class GpuSampler:
    """``nvidia-smi`` utilisation and memory in use, every 0.5 s, in a background thread (and
    whether an MPS server is up, when MPS is on)."""

    def __init__(self, mps_control: str | None = None):
        self.samples: list[tuple[float, float, float]] = []  # (time, utilisation %, MiB used)
        self.mps_control = mps_control
        self.mps_server_seen = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "GpuSampler":
        if nvidia_smi():
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        query = [nvidia_smi(), "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits", "-i", "0"]
        while not self._stop.is_set():
            try:
                util, used = subprocess.run(query, capture_output=True, text=True, timeout=10).stdout.split(",")
                self.samples.append((time.time(), float(util), float(used)))
                if self.mps_control and not self.mps_server_seen:
                    servers = subprocess.run(
                        [self.mps_control], input="get_server_list\n", capture_output=True, text=True, timeout=10
                    ).stdout
                    self.mps_server_seen = any(line.strip().isdigit() for line in servers.splitlines())
            except (subprocess.SubprocessError, OSError, ValueError):
                pass
            self._stop.wait(SAMPLE_SECONDS)

    def summary(self, opened: float | None, closed: float | None) -> dict:
        if not self.samples:
            return {"gpu_utilisation": None, "gpu_memory_peak_mib": None}
        inside = [util for t, util, _ in self.samples if opened is not None and opened <= t <= closed]
        return {
            "gpu_utilisation": sum(inside) / len(inside) if inside else None,
            "gpu_memory_peak_mib": max(used for _, _, used in self.samples),
        }


def mps_control_binary() -> str | None:
    return shutil.which("nvidia-cuda-mps-control") or next(
        (str(p) for p in [Path("/usr/local/nvidia/bin/nvidia-cuda-mps-control")] if p.is_file()), None
    )


@contextlib.contextmanager
def mps_daemon(control: str):
    """CUDA MPS for the processes started inside: its pipe and log folders go in a temporary folder
    named by the environment, which Ray's workers inherit (so set before ``ray.init``)."""
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


# ---- one setting ------------------------------------------------------------------------------


@dataclasses.dataclass
class Options:
    seconds_per_setting: float
    warmup_epochs: int
    warmup_timeout: float
    cpus: float
    peak_tflops: float | None


def run_setting(
    workload: str, config: IICConfig, facts: dict, trials: int, options: Options, mps_control: str | None
) -> dict:
    """N concurrent trials of ``config`` on the one GPU; returns the setting's row of the table."""
    name = f"window-{workload}-{trials}-{time.time_ns()}"
    window = SteadyWindow.options(name=name).remote(trials, options.seconds_per_setting)
    results = Results()
    # Shares that let all N run at once (Ray's shares are bookkeeping; a trial gets at least one thread).
    resources = {"cpu": options.cpus / trials, "gpu": 1 / trials}
    began = time.time()
    with tempfile.TemporaryDirectory(prefix="gpu-packing-") as storage, GpuSampler(mps_control) as sampler:
        tuner = tune.Tuner(
            tune.with_resources(packing_trial, resources),
            param_space={
                "iic": config.to_dict(),
                "images": facts["images"],
                "window": name,
                "warmup_epochs": options.warmup_epochs,
                "warmup_timeout": options.warmup_timeout,
                "index": tune.grid_search(list(range(trials))),
            },
            tune_config=tune.TuneConfig(max_concurrent_trials=trials),
            run_config=tune.RunConfig(storage_path=storage, name=name, callbacks=[results], verbose=0),
        )
        grid = tuner.fit()
    opened, closed = ray.get(window.bounds.remote())
    ray.kill(window)
    row = {
        "workload": workload,
        "trials_per_gpu": trials,
        "amp": config.amp,
        "mps": mps_control is not None,
        "cpus_per_trial": resources["cpu"],
        "gpu_per_trial": resources["gpu"],
        "setting_seconds": time.time() - began,
        "errors": [str(error).splitlines()[0] for error in grid.errors],
        **sampler.summary(opened, closed),
    }
    if mps_control is not None:
        row["mps_server_seen"] = sampler.mps_server_seen
    records = list(results.by_trial.values())
    row["trials_reported"] = len(records)
    # The setting's fixed cost: Tune, the trials' processes, torch, CUDA, data and model, one epoch.
    row["trials_started_after_seconds"] = max(r[0]["trial_started"] for r in records) - began if records else None
    row["first_epoch_after_seconds"] = max(r[0]["ended"] for r in records) - began if records else None
    row["on_cuda"] = all(r[-1]["on_cuda"] for r in records) if records else False
    peaks = [r["peak_memory_mib"] for rs in records for r in rs if not math.isnan(r["peak_memory_mib"])]
    row["trial_peak_memory_mib"] = max(peaks) if peaks else None
    if opened is None or len(records) < trials:
        row["error"] = "no steady-state window: not every trial finished its warm-up (see errors)"
        return row
    row.update(aggregate(records, opened, closed))
    achieved = row["aggregate_images_per_second"] * facts["flops_per_image"]
    row["tflops"] = achieved / 1e12
    row["fraction_of_bf16_peak"] = achieved / (options.peak_tflops * 1e12) if options.peak_tflops else None
    return row


def add_speedups(rows: list[dict]) -> None:
    """Aggregate over the same workload and variant's 1-trial aggregate."""
    single = {
        (r["workload"], r["amp"], r["mps"]): r.get("aggregate_images_per_second")
        for r in rows
        if r["trials_per_gpu"] == 1
    }
    for row in rows:
        base = single.get((row["workload"], row["amp"], row["mps"]))
        rate = row.get("aggregate_images_per_second")
        row["speedup_over_1"] = rate / base if rate and base else None


# ---- output -----------------------------------------------------------------------------------

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
    ("window s", "window_seconds", "{:.1f}"),
    ("setting s", "setting_seconds", "{:.1f}"),
)


def format_cell(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return spec.format(value)


def format_table(rows: list[dict]) -> str:
    """Columns as wide as their widest cell; the workload left-aligned, numbers right-aligned."""
    cells = [[header for header, _, _ in COLUMNS]] + [
        [format_cell(row.get(key), spec) for _, key, spec in COLUMNS] for row in rows
    ]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    lines = []
    for index, line in enumerate(cells):
        lines.append(
            "  ".join(
                cell.ljust(width) if column == 0 else cell.rjust(width)
                for column, (cell, width) in enumerate(zip(line, widths))
            )
        )
        row = rows[index - 1] if index else {}
        if row.get("error"):
            lines.append(f"    {row['error']}: {'; '.join(row['errors'][:2])}")
    return "\n".join(lines)


def write_json(path: Path, header: dict, rows: list[dict], skipped: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    clean = [
        {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()} for row in rows
    ]
    path.write_text(json.dumps({**header, "rows": clean, "skipped": skipped}, indent=2))


# ---- command line -----------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), help="default: all (smoke: digits)")
    parser.add_argument(
        "--trials-per-gpu", type=int, nargs="+", help="concurrent trials on the GPU (default 1 2 4 8 16; smoke 1 2)"
    )
    parser.add_argument(
        "--seconds-per-setting", type=float, help="steady-state window per setting (default 6; smoke 2)"
    )
    parser.add_argument("--warmup-epochs", type=int, default=1, help="epochs per trial left out of the window")
    parser.add_argument(
        "--warmup-timeout",
        type=float,
        default=60,
        help="a trial whose window has not opened after this many seconds stops",
    )
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True, help="bf16 autocast (config.amp)")
    parser.add_argument(
        "--mps", action="store_true", help="run the trials under the CUDA MPS daemon (started and stopped here)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an IICConfig field for every trial of every workload (repeatable)",
    )
    parser.add_argument("--cpus", type=float, help="CPUs of the local Ray (default: all; smoke: 2)")
    parser.add_argument(
        "--peak-tflops", type=float, help="the GPU's dense bf16 peak, where the device name is not known"
    )
    parser.add_argument(
        "--time-budget", type=float, help="skip settings that would end past this many seconds from the start"
    )
    parser.add_argument("--out", type=Path, help="write the table as JSON here (rewritten after every setting)")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny digits (200 images, width 4), N = 1 2, a fake GPU: runs on CPU"
    )
    args = parser.parse_args(argv)
    args.workloads = args.workloads or (["digits"] if args.smoke else list(WORKLOADS))
    args.trials_per_gpu = args.trials_per_gpu or ([1, 2] if args.smoke else [1, 2, 4, 8, 16])
    args.seconds_per_setting = args.seconds_per_setting or (2.0 if args.smoke else 6.0)
    args.cpus = args.cpus or (min(2, os.cpu_count()) if args.smoke else os.cpu_count())
    return args


def workload_config(workload: str, args: argparse.Namespace) -> IICConfig:
    changes = {
        **WORKLOADS[workload],
        **(SMOKE_OVERRIDES if args.smoke else {}),
        "amp": args.amp,
        "epochs": TIME_LIMITED_EPOCHS,
    }
    # Absolute paths: Tune runs each trial in a folder of its own.
    return (
        IICConfig(dataset="digits").replace(**changes).with_overrides(args.overrides).with_absolute_paths().validate()
    )


def prepare_environment() -> None:
    """Before ``ray.init``: Ray's workers inherit the environment."""
    # Trials run in Ray's worker processes, which must import this checkout's iic (not another install).
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")]))
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's older console output honours verbose=0


def measure_workloads(configs: dict[str, IICConfig], smoke: bool) -> dict[str, dict]:
    """Images, channels and FLOPs per image of each workload, printed as they are found."""
    facts = {}
    for workload, config in configs.items():
        facts[workload] = {
            "overrides": {**WORKLOADS[workload], **(SMOKE_OVERRIDES if smoke else {})},
            **dataset_facts(config),
        }
        facts[workload]["flops_per_image"] = flops_per_image(config, facts[workload]["channels"])
        print(
            f"  {workload}: {facts[workload]['images']} images x {passes_per_epoch(config)} pass(es) an epoch, "
            f"{facts[workload]['flops_per_image'] / 1e9:.3f} GFLOP an image a pass (train step + evaluation)",
            flush=True,
        )
    return facts


def progress_line(row: dict) -> str:
    line = (
        f"  {row['workload']} N={row['trials_per_gpu']}: {row.get('aggregate_images_per_second', float('nan')):,.0f} "
        f"images/s aggregate, trials on {'CUDA' if row['on_cuda'] else 'CPU'}, first epochs done after "
        f"{row['first_epoch_after_seconds'] or float('nan'):.1f} s, setting {row['setting_seconds']:.1f} s"
    )
    return line + (f"  ERROR {row['error']}: {'; '.join(row['errors'][:2])}" if "error" in row else "")


def run_settings(
    args: argparse.Namespace,
    configs: dict[str, IICConfig],
    facts: dict,
    options: Options,
    mps_control: str | None,
    header: dict,
) -> tuple[list[dict], list[dict]]:
    """Every (workload, N) setting that fits the time budget, on one local Ray; (rows, skipped)."""
    rows: list[dict] = []
    skipped: list[dict] = []
    # One GPU, real or (smoke, no CUDA) Ray bookkeeping only; the trials then train on the CPU.
    ray.init(num_cpus=args.cpus, num_gpus=1, include_dashboard=False, log_to_driver=False)
    try:
        for workload, config in configs.items():
            for trials in args.trials_per_gpu:
                longest = max((r["setting_seconds"] for r in rows), default=0.0)
                if args.time_budget and time.time() - PROCESS_STARTED + longest > args.time_budget:
                    skipped.append({"workload": workload, "trials_per_gpu": trials, "why": "time budget"})
                    print(f"  skip {workload} N={trials}: would end past the {args.time_budget:g} s budget", flush=True)
                    continue
                rows.append(run_setting(workload, config, facts[workload], trials, options, mps_control))
                add_speedups(rows)
                print(progress_line(rows[-1]), flush=True)
                if args.out:
                    write_json(args.out, header, rows, skipped)
    finally:
        ray.shutdown()
        if args.out:
            write_json(args.out, header, rows, skipped)
    return rows, skipped


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    prepare_environment()
    command = shlex.join(["python", "benchmarks/gpu_packing.py", *(argv if argv is not None else sys.argv[1:])])
    name = device_name()
    options = Options(
        args.seconds_per_setting,
        args.warmup_epochs,
        args.warmup_timeout,
        args.cpus,
        peak_tflops(name, args.peak_tflops),
    )
    header = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": name,
        "command": command,
        "torch": torch.__version__,
        "ray": ray.__version__,
        "amp": args.amp,
        "mps": args.mps,
        "peak_bf16_tflops": options.peak_tflops,
        "cpus": args.cpus,
        "seconds_per_setting": args.seconds_per_setting,
    }
    print(
        f"{header['date']}  {name}  torch {torch.__version__}  ray {ray.__version__}  {args.cpus:g} CPUs"
        f"  peak bf16 {options.peak_tflops or 'n/a'} TFLOP/s"
    )
    print(f"command: {command}", flush=True)

    configs = {workload: workload_config(workload, args) for workload in args.workloads}
    header["workloads"] = facts = measure_workloads(configs, args.smoke)
    mps_control = mps_control_binary() if args.mps else None
    if args.mps and mps_control is None:
        print("error: --mps: nvidia-cuda-mps-control is not on PATH (nor in /usr/local/nvidia/bin)", file=sys.stderr)
        raise SystemExit(2)
    with mps_daemon(mps_control) if mps_control else contextlib.nullcontext():
        rows, skipped = run_settings(args, configs, facts, options, mps_control, header)

    variant = ("bf16 autocast" if args.amp else "fp32") + (", CUDA MPS" if args.mps else "")
    print(
        f"\nMany trials per GPU ({variant}); {args.seconds_per_setting:g} s steady-state window per setting, "
        f"images/s counts source images (each with its twins)"
    )
    print(format_table(rows))
    if skipped:
        print("skipped (time budget): " + ", ".join(f"{s['workload']} N={s['trials_per_gpu']}" for s in skipped))
    if args.mps:
        print(
            "MPS server seen while trials ran: "
            + ", ".join(f"{r['workload']} N={r['trials_per_gpu']} {r.get('mps_server_seen')}" for r in rows)
        )
    print(f"command: {command}")
    return rows


if __name__ == "__main__":
    main()
