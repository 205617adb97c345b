"""Throughput of a training step, the share spent preparing the views, and what stacking seeds costs.

    python -m benchmarks.step_profile                 # CPU (or CUDA with AMP when present)
    python -m benchmarks.step_profile --device cuda --no-amp
    python -m benchmarks.step_profile --seeds 1 2 4   # S seeds stacked vs the same seeds one after another
    python -m benchmarks.step_profile --set channels_last=true --set compile_mode=reduce-overhead

Two setups: IICConfig's defaults (digits, ClusterNet, 16 px) and ResNet18 at 64 px on RGB with Sobel
and every augmentation. With ``--seeds``, S seeds trained as one stacked model against S one-seed runs
stepping in turn: milliseconds per step of all S either way.
"""

import argparse
import time

import torch

from benchmarks.common import command, table
from iic.config import IICConfig
from iic.data import ImageData
from iic.trainer import Trainer


def setups(device: str, amp: bool) -> dict[str, IICConfig]:
    """IICConfig's defaults, and ResNet18 at 64 px on RGB images with Sobel and every augmentation."""
    model = dict(backbone="resnet18", input_size=64, batch_size=64, repeats=3, sobel=True, overcluster_k=0)
    augment = dict(crop_min_scale=0.5, hflip_prob=0.5, rotation_degrees=15, brightness=0.4, contrast=0.4)
    resnet = IICConfig(**model, **augment, saturation=0.4, hue=0.1, device=device, amp=amp)
    return {"default (digits, clusternet 16px)": IICConfig(device=device, amp=amp), "resnet18 64px RGB + sobel": resnet}


def setup_data(config: IICConfig, count: int = 512) -> ImageData | None:
    """The bundled digits for ClusterNet, else random RGB images: a step's time does not depend on the pixels."""
    if config.backbone == "clusternet":
        return None
    size = config.input_size
    images = torch.randint(
        0, 256, (count, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    return ImageData(images=images, labels=torch.zeros(count, dtype=torch.int64), class_names=["x"], name="synthetic")


def timed_step(trainer: Trainer, seeds: int, index: int) -> tuple[float, float]:
    """One training step of the trainer's ``seeds`` stacked seeds: (seconds preparing views, seconds in all)."""
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
    batch_size = trainer.config.batch_size
    start = (index * batch_size) % (len(trainer.images) - batch_size)
    sync()
    began = time.perf_counter()
    views = trainer.make_views(torch.stack([trainer.images[start : start + batch_size]] * seeds))
    sync()
    prepared = time.perf_counter()
    trainer.step(*views, "main")
    sync()
    return prepared - began, time.perf_counter() - began


def measure(ways: list[list[tuple[Trainer, int]]], steps: int, warmup: int) -> list[tuple[float, float]]:
    """Mean seconds (preparing views, in all) of a step of each way of training: its (trainer, seeds)
    stepped in turn. The ways alternate step by step, so that all see the same machine load."""
    totals = [[0.0, 0.0] for _ in ways]
    for index in range(warmup + steps):
        for total, way in zip(totals, ways, strict=True):
            for trainer, seeds in way:
                prepare, step = timed_step(trainer, seeds, index)
                if index >= warmup:
                    total[0] += prepare / steps
                    total[1] += step / steps
    return [tuple(total) for total in totals]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-amp", action="store_true")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3, help="steps left out (compiling happens in them)")
    parser.add_argument("--seeds", type=int, nargs="+", metavar="S", help="also time S seeds stacked vs in turn")
    parser.add_argument("--only", choices=["default", "resnet18"], help="profile one setup only")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads{gpu}, amp {not args.no_amp}")
    configs = {
        name: config.with_overrides(args.overrides)
        for name, config in setups(args.device, not args.no_amp).items()
        if not args.only or name.startswith(args.only)
    }
    rows = []
    for name, config in configs.items():
        trainer = Trainer(config, setup_data(config))
        [(prepare, step)] = measure([[(trainer, 1)]], args.steps, args.warmup)
        views = config.batch_size * (1 + config.repeats)
        rows.append([name, trainer.device, f"{config.batch_size / step:.0f}", f"{views / step:.0f}"])
        rows[-1] += [f"{1000 * step:.1f}", f"{100 * prepare / step:.1f}%"]
    print(table(["setup", "device", "images/s", "views/s", "step ms", "prep share"], rows))
    rows = []
    for name, config in configs.items() if args.seeds else ():
        data, single = setup_data(config), None
        for count in args.seeds:
            stacked = [(Trainer(config, data, seeds=list(range(count))), count)]
            in_turn = [(Trainer(config, data, seeds=[seed]), 1) for seed in range(count)]
            (_, stacked_step), (_, in_turn_step) = measure([stacked, in_turn], args.steps, args.warmup)
            single = stacked_step if count == 1 else single
            versus = f"{stacked_step / single:.2f}x" if single else ""
            rows.append([name, count, f"{1000 * stacked_step:.1f}", f"{1000 * in_turn_step:.1f}"])
            rows[-1] += [f"{stacked_step / in_turn_step:.2f}x", versus]
    if rows:
        print("\n" + table(["setup", "seeds", "stacked ms", "in turn ms", "stacked/in turn", "vs 1 seed"], rows))
    print("command: " + command("step_profile", argv))


if __name__ == "__main__":
    main()
