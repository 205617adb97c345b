"""Throughput of a training step, and the share of it spent preparing the views.

    python benchmarks/step_profile.py                 # CPU (or CUDA with AMP when present)
    python benchmarks/step_profile.py --device cuda --no-amp

Two setups: the default config (digits, ClusterNet, 16 px) and ResNet18 at 64 px on RGB images
with the full augmentation (crop, flip, rotation, colour jitter) and Sobel. For each it prints
images per second through a training step (source images, and all views: each image plus its
``repeats`` twins) and the share of the step spent slicing the batch from the device tensor,
augmenting and applying Sobel. The goal is a preparation share of at most 15% on CPU.
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
        backbone="resnet18", input_size=64, batch_size=64, repeats=3, sobel=True, overcluster_k=0,
        crop_min_scale=0.5, hflip_prob=0.5, rotation_degrees=15, brightness=0.4, contrast=0.4,
        saturation=0.4, hue=0.1, device=device, amp=amp,
    )
    return {"default (digits, clusternet 16px)": default, "resnet18 64px RGB + sobel": resnet}


def synthetic_rgb(size: int, count: int = 512) -> ImageData:
    """Random RGB images: step timing does not depend on what the pixels show."""
    images = torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return ImageData(images=images, labels=torch.zeros(count, dtype=torch.int64), class_names=["x"], name="synthetic")


def profile(config: IICConfig, steps: int, warmup: int) -> dict:
    data = None if config.backbone == "clusternet" else synthetic_rgb(config.input_size)
    trainer = Trainer(config, data)
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
    order = torch.randperm(len(trainer.images), generator=torch.Generator().manual_seed(0)).to(trainer.device)
    prepare_seconds = total_seconds = 0.0
    for index in range(warmup + steps):
        start = (index * config.batch_size) % (len(order) - config.batch_size)
        sync()
        began = time.perf_counter()
        views = trainer.make_views(trainer.images[order[start : start + config.batch_size]])
        sync()
        prepared = time.perf_counter()
        trainer.step(*views, "main")
        sync()
        if index >= warmup:
            prepare_seconds += prepared - began
            total_seconds += time.perf_counter() - began
    return {
        "images_per_second": steps * config.batch_size / total_seconds,
        "views_per_second": steps * config.batch_size * (1 + config.repeats) / total_seconds,
        "prepare_share": prepare_seconds / total_seconds,
        "step_ms": 1000 * total_seconds / steps,
        "device": str(trainer.device) + (" (bf16 autocast)" if trainer.amp else ""),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-amp", action="store_true")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))
    print(f"{'setup':<36} {'device':<22} {'images/s':>9} {'views/s':>9} {'step ms':>8} {'prep share':>10}")
    for name, config in setups(args.device, not args.no_amp).items():
        r = profile(config, args.steps, args.warmup)
        print(f"{name:<36} {r['device']:<22} {r['images_per_second']:>9.0f} {r['views_per_second']:>9.0f} "
              f"{r['step_ms']:>8.1f} {100 * r['prepare_share']:>9.1f}%", flush=True)
    print("command: python " + " ".join(shlex.quote(a) for a in sys.argv))


if __name__ == "__main__":
    main()
