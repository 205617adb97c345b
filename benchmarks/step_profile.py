"""Throughput of a training step, the share of it spent preparing the views, and what training
several seeds at once costs.

    python benchmarks/step_profile.py                 # CPU (or CUDA with AMP when present)
    python benchmarks/step_profile.py --device cuda --no-amp
    python benchmarks/step_profile.py --seeds 1 2 4   # S seeds stacked vs the same seeds one after another
    python benchmarks/step_profile.py --set channels_last=true --set compile_mode=reduce-overhead

Two setups: the default config (digits, ClusterNet, 16 px) and ResNet18 at 64 px on RGB images
with the full augmentation (crop, flip, rotation, colour jitter) and Sobel. For each it prints
images per second through a training step (source images, and all views: each image plus its
``repeats`` twins) and the share of the step spent slicing the batch from the device tensor,
augmenting and applying Sobel. The goal is a preparation share of at most 15% on CPU.

With ``--seeds``, each setup is also timed with S seeds trained as one stacked model (one step
trains all S) and as S runs of one seed each stepping in turn: the wall time of one step of all S
seeds either way. Goals: stacked no slower than in turn on CPU; on a GPU, S = 4 at most 1.3x S = 1.
"""

import argparse
import shlex
import sys
import time

import torch

from iic.config import IICConfig
from iic.data import ImageData
from iic.train import Trainer


def setups(device: str, amp: bool) -> dict[str, IICConfig]:
    default = IICConfig(device=device, amp=amp)
    resnet = IICConfig(
        backbone="resnet18",
        input_size=64,
        batch_size=64,
        repeats=3,
        sobel=True,
        overcluster_k=0,
        crop_min_scale=0.5,
        hflip_prob=0.5,
        rotation_degrees=15,
        brightness=0.4,
        contrast=0.4,
        saturation=0.4,
        hue=0.1,
        device=device,
        amp=amp,
    )
    return {"default (digits, clusternet 16px)": default, "resnet18 64px RGB + sobel": resnet}


def synthetic_rgb(size: int, count: int = 512) -> ImageData:
    """Random RGB images: step timing does not depend on what the pixels show."""
    images = torch.randint(
        0, 256, (count, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    return ImageData(images=images, labels=torch.zeros(count, dtype=torch.int64), class_names=["x"], name="synthetic")


def setup_data(config: IICConfig) -> ImageData | None:
    return None if config.backbone == "clusternet" else synthetic_rgb(config.input_size)


def timed_step(trainer: Trainer, index: int, sync) -> tuple[float, float]:
    """One training step of all the trainer's seeds: (seconds preparing views, seconds in all)."""
    batch_size = trainer.config.batch_size
    start = (index * batch_size) % (len(trainer.images) - batch_size)
    sync()
    began = time.perf_counter()
    batches = torch.stack([trainer.images[start : start + batch_size]] * len(trainer.seeds))
    views = trainer.make_views(batches)
    sync()
    prepared = time.perf_counter()
    trainer.step(*views, "main")
    sync()
    return prepared - began, time.perf_counter() - began


def profile(config: IICConfig, steps: int, warmup: int) -> dict:
    trainer = Trainer(config, setup_data(config))
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
    prepare_seconds = total_seconds = 0.0
    for index in range(warmup + steps):
        prepare, total = timed_step(trainer, index, sync)
        if index >= warmup:
            prepare_seconds += prepare
            total_seconds += total
    return {
        "images_per_second": steps * config.batch_size / total_seconds,
        "views_per_second": steps * config.batch_size * (1 + config.repeats) / total_seconds,
        "prepare_share": prepare_seconds / total_seconds,
        "step_ms": 1000 * total_seconds / steps,
        "device": str(trainer.device) + (" (bf16 autocast)" if trainer.amp else ""),
    }


def seeds_profile(config: IICConfig, count: int, steps: int, warmup: int) -> dict:
    """Milliseconds per step of ``count`` seeds: stacked in one trainer, and one trainer per seed in turn."""
    data = setup_data(config)
    stacked = Trainer(config, data, seeds=list(range(count)))
    in_turn = [Trainer(config, data, seeds=[seed]) for seed in range(count)]
    sync = torch.cuda.synchronize if stacked.device.type == "cuda" else (lambda: None)
    stacked_seconds = in_turn_seconds = 0.0
    for index in range(warmup + steps):  # alternate, so that both see the same machine load
        stacked_step = timed_step(stacked, index, sync)[1]
        in_turn_step = sum(timed_step(trainer, index, sync)[1] for trainer in in_turn)
        if index >= warmup:
            stacked_seconds += stacked_step
            in_turn_seconds += in_turn_step
    return {"stacked_ms": 1000 * stacked_seconds / steps, "in_turn_ms": 1000 * in_turn_seconds / steps}


def print_seeds_table(configs: dict[str, IICConfig], counts: list[int], steps: int, warmup: int) -> None:
    print(
        f"\n{'setup':<36} {'seeds':>5} {'stacked ms':>10} {'in turn ms':>10} {'stacked/in turn':>15} {'vs 1 seed':>9}"
    )
    for name, config in configs.items():
        single = None
        for count in counts:
            r = seeds_profile(config, count, steps, warmup)
            single = single or r["stacked_ms"] if count == 1 else single
            versus = f"{r['stacked_ms'] / single:>8.2f}x" if single else f"{'':>9}"
            print(
                f"{name:<36} {count:>5} {r['stacked_ms']:>10.1f} {r['in_turn_ms']:>10.1f} {r['stacked_ms'] / r['in_turn_ms']:>14.2f}x {versus}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-amp", action="store_true")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--seeds", type=int, nargs="+", metavar="S", help="also time S seeds stacked vs in turn, e.g. --seeds 1 2 4"
    )
    parser.add_argument("--only", choices=["default", "resnet18"], help="profile one setup only")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an IICConfig field for both setups, e.g. --set channels_last=true or "
        "--set compile_mode=reduce-overhead (compiling happens in the warm-up steps)",
    )
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
        + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "")
    )
    print(f"{'setup':<36} {'device':<22} {'images/s':>9} {'views/s':>9} {'step ms':>8} {'prep share':>10}")
    configs = {
        name: config.with_overrides(args.overrides)
        for name, config in setups(args.device, not args.no_amp).items()
        if not args.only or name.startswith(args.only)
    }
    for name, config in configs.items():
        r = profile(config, args.steps, args.warmup)
        print(
            f"{name:<36} {r['device']:<22} {r['images_per_second']:>9.0f} {r['views_per_second']:>9.0f} "
            f"{r['step_ms']:>8.1f} {100 * r['prepare_share']:>9.1f}%",
            flush=True,
        )
    if args.seeds:
        print_seeds_table(configs, args.seeds, args.steps, args.warmup)
    print("command: python " + " ".join(shlex.quote(a) for a in sys.argv))


if __name__ == "__main__":
    main()
