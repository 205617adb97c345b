"""Trials per minute of a head search on cached features against the same trials with the backbone in the loop.

A vision transformer of the ``--backbone`` architecture at ``--input-size`` with random weights (written
to a file; speed does not depend on the weights), frozen, on the bundled digits. ``--trials`` head trials
drawn from the ``frozen_features`` preset's space with ``--seed`` run end to end on ``--workers`` processes
of one thread each (as a search's trials run), the one-time feature extraction (into an empty cache
folder) counted in. A trial with the backbone in the loop computes the same views' features at every step
(``cache_view_features: false``); its time is the backbone's throughput on one thread times the images it
pushes through it, counted from its config (no such trial is run whole: one takes hours on a CPU), plus
the head time the cached trial took, with the same workers.
"""

import argparse
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch

from benchmarks.common import command
from iic.config import IICConfig
from iic.feature_cache import FixedViews
from iic.timm_backbones import model_name
from iic.trainer import Trainer, train
from search.params import assign, config_changes, draw
from search.preset import Preset


def backbone_images(config: IICConfig, count: int) -> int:
    """Images a trial with the backbone in the loop pushes through it: each pass's images and twins,
    then each epoch's evaluation (the images and their held-out views), once the neighbours' features."""
    passes = config.epochs * ((config.overcluster_passes if config.overcluster_k else 0) + 1)
    return passes * count * (1 + config.repeats) + config.epochs * 2 * count + count


def head_trial(config: IICConfig) -> float:
    """Seconds the trial took on one thread."""
    torch.set_num_threads(1)
    started = time.perf_counter()
    train(config)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cached_features", description=__doc__)
    parser.add_argument("--backbone", default="dinov2_vits14")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--max-samples", type=int, help="digits images (default: all 1,797)")
    parser.add_argument("--views", type=int, default=4, help="feature_views")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--seed", type=int, default=100, help="draws the trials' heads (and seeds them)")
    parser.add_argument("--workers", type=int, default=2, help="processes of one thread each")
    args = parser.parse_args(argv)
    previous = os.environ.get("IIC_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="cached-features-") as folder:
        os.environ["IIC_CACHE_DIR"] = folder  # an empty cache: the extraction is measured
        try:
            measure(args, folder)
        finally:
            if previous is None:
                del os.environ["IIC_CACHE_DIR"]
            else:
                os.environ["IIC_CACHE_DIR"] = previous
    print(command("cached_features", argv))


def measure(args: argparse.Namespace, folder: str) -> None:
    """Extract the features into ``folder``, time the head trials on them, and print the figures."""
    import timm

    weights = os.path.join(folder, "random_weights.pt")
    architecture = model_name(args.backbone).split(".")[0]
    torch.save(timm.create_model(architecture, num_classes=0, img_size=args.input_size).state_dict(), weights)
    preset = Preset.load("frozen_features")
    base = IICConfig.from_dict(preset.config).replace(
        dataset="digits",
        data_root=None,
        backbone=args.backbone,
        backbone_weights=weights,
        input_size=args.input_size,
        max_samples=args.max_samples,
        feature_views=args.views,
        epochs=args.epochs,
        device="cpu",
        seed=args.seed,
    )
    started = time.perf_counter()
    first = Trainer(base)  # decodes the images and extracts the features into the cache
    extraction = time.perf_counter() - started
    count = len(first.images)
    rng = np.random.default_rng(args.seed)
    configs = []
    for _ in range(args.trials):  # one seed: the max_samples draw, and so the cached features, stay the same
        chosen, fixed = assign(preset.params, lambda param: draw(param, rng))
        configs.append(base.replace(**config_changes(preset.params, chosen, fixed), seed=args.seed))
    with ProcessPoolExecutor(args.workers) as pool:
        head_seconds = list(pool.map(head_trial, configs))
    search = time.perf_counter() - started
    threads = torch.get_num_threads()  # restored after: a caller's process keeps its own
    torch.set_num_threads(1)
    try:
        timed = time.perf_counter()
        FixedViews(first, cached=False).of_images(torch.arange(min(count, 32)))  # as a trial in the loop would
        images_per_second = min(count, 32) / (time.perf_counter() - timed)
    finally:
        torch.set_num_threads(threads)
    # The same trials in the loop, on the same workers: a worker's share of their seconds.
    live = sum(
        seconds + backbone_images(config, count) / images_per_second
        for seconds, config in zip(head_seconds, configs, strict=True)
    )
    live /= args.workers
    print(
        f"{args.backbone} ({architecture}, random weights) at {args.input_size} px, {count} digits, {args.views} views"
    )
    print(f"backbone throughput: {images_per_second:.2f} images/s on one thread; {args.workers} workers")
    print(f"one-time extraction (decode included): {extraction:.0f} s")
    print(f"{args.trials} head trials on cached features, end to end: {search:.0f} s", end=" ")
    print(f"= {args.trials / search * 60:.1f} trials/min")
    low, middle, high = np.percentile(head_seconds, [0, 50, 100])
    print(f"seconds a head trial: median {middle:.1f}  min {low:.1f}  max {high:.1f}")
    print(f"the same trials with the backbone in the loop (estimated): {live:.0f} s", end=" ")
    print(f"= {args.trials / live * 60:.2f} trials/min")
    print(f"speed-up, extraction counted in: {live / search:.0f}x")


if __name__ == "__main__":
    main()
