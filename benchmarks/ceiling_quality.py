"""The supervised ceiling of a config: the same backbone trained on the labels, over seeds, beside
which a clustering accuracy is read (``iic.supervised``; ``search/run.py --ceiling`` runs one).

    python benchmarks/ceiling_quality.py                                    # digits defaults, seeds 1000-1004
    python benchmarks/ceiling_quality.py --config configs/mnist5k.yaml --seeds 1000 1001 1002

Prints one row per seed (held-out accuracy, the held-out split, seconds), then the mean, minimum and
standard deviation, and the command. Seeds 1000 and up, as benchmarks/digits_quality.py reports IIC.
"""

import argparse
import platform
import shlex
import sys
import time

import numpy as np
import torch

from iic.config import IICConfig
from iic.supervised import ACCURACY, train_supervised

REPORTING_SEEDS = list(range(1000, 1005))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config (default: IICConfig defaults)")
    parser.add_argument("--seeds", type=int, nargs="+", default=REPORTING_SEEDS)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    config = (
        (IICConfig.from_yaml(args.config) if args.config else IICConfig()).with_overrides(args.overrides).validate()
    )
    print(
        f"{config.dataset}: supervised {config.backbone} (width {config.backbone_width}), {config.epochs} epochs, lr {config.lr}, "
        f"batch {config.batch_size}; torch threads {torch.get_num_threads()}, {platform.processor() or platform.machine()}"
    )
    accuracies = []
    for seed in args.seeds:
        started = time.perf_counter()
        result = train_supervised(config, seed=seed)
        accuracies.append(result.metrics[ACCURACY])
        print(
            f"seed {seed}: held-out accuracy {accuracies[-1]:.3f} ({result.held_out_split}; {result.status}) "
            f"in {time.perf_counter() - started:.0f} s",
            flush=True,
        )
    accuracy = np.array(accuracies)
    print(
        f"supervised ceiling over {len(accuracy)} seeds: mean {accuracy.mean():.3f}  min {accuracy.min():.3f}  "
        f"sd {accuracy.std(ddof=1) if len(accuracy) > 1 else 0.0:.3f}"
    )
    print("command: python " + " ".join(shlex.quote(a) for a in sys.argv))


if __name__ == "__main__":
    main()
