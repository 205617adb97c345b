"""Quality of the default config: Hungarian accuracy over several seeds, beside k-means on pixels.

    python benchmarks/digits_quality.py                      # digits, seeds 0 1 2
    python benchmarks/digits_quality.py --dataset mnist5k --config configs/mnist5k.yaml

Prints one row per seed (accuracy, NMI, largest-cluster share, seconds), the mean and minimum, the
k-means baseline on raw pixels at the data's native size, and the command that made the figures.
"""

import argparse
import platform
import shlex
import sys
import time

import numpy as np
import torch
from sklearn.cluster import KMeans

from iic.config import IICConfig
from iic.data import load_dataset
from iic.metrics import clustering_metrics
from iic.train import train

NATIVE_SIZE = {"digits": 8, "mnist5k": 28}


def kmeans_accuracy(config: IICConfig, seed: int = 0) -> float:
    size = NATIVE_SIZE.get(config.dataset, config.input_size)
    data = load_dataset(config.dataset, config.data_root, split=config.split, input_size=size,
                        greyscale=config.greyscale, class_map=config.class_map, max_samples=config.max_samples, seed=config.seed)
    pixels = data.images.flatten(1).float().numpy() / 255
    clusters = KMeans(config.num_clusters, n_init=10, random_state=seed).fit_predict(pixels)
    return clustering_metrics(clusters, data.labels.numpy(), config.num_clusters, data.num_classes)["cluster_accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config (default: IICConfig defaults)")
    parser.add_argument("--dataset", help="override the config's dataset")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    config = IICConfig.from_yaml(args.config) if args.config else IICConfig()
    config = config.with_overrides(args.overrides)
    if args.dataset:
        config = config.replace(dataset=args.dataset)
    if args.epochs:
        config = config.replace(epochs=args.epochs)
    config.validate()

    print(f"{config.dataset}: {config.backbone} (width {config.backbone_width}), {config.epochs} epochs, "
          f"lr {config.lr}, batch {config.batch_size}x{config.repeats} repeats, lamb {config.lamb}, "
          f"overcluster_k {config.overcluster_k}; torch threads {torch.get_num_threads()}, {platform.processor() or platform.machine()}")
    print(f"{'seed':>4}  {'accuracy':>8}  {'nmi':>6}  {'largest':>7}  {'seconds':>7}")
    rows = []
    for seed in args.seeds:
        started = time.perf_counter()
        result = train(config.replace(seed=seed))
        seconds = time.perf_counter() - started
        m = result.metrics
        rows.append((m.get("cluster_accuracy", float("nan")), m.get("nmi", float("nan")), seconds))
        print(f"{seed:>4}  {rows[-1][0]:>8.3f}  {rows[-1][1]:>6.3f}  {m.get('largest_cluster_share', float('nan')):>7.2f}  {seconds:>7.1f}  {result.status}", flush=True)
    accuracy, nmi, seconds = (np.array(column) for column in zip(*rows))
    print(f"IIC accuracy mean {accuracy.mean():.3f}  min {accuracy.min():.3f}  NMI mean {nmi.mean():.3f}  "
          f"seconds per run {seconds.mean():.0f}")
    print(f"k-means on raw pixels: accuracy {kmeans_accuracy(config):.3f}")
    print("command: python " + " ".join(shlex.quote(a) for a in sys.argv))


if __name__ == "__main__":
    main()
