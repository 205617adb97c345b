"""Where a trained IIC model loses accuracy: in reading its clusters out, or in what it learned.

    python benchmarks/readouts.py --seeds 0 1 2 100 101 102 103 104 105 106 107 108 109 --epochs 30 --report-epochs 20

Trains the config (default configs/digits.yaml, without screening: each seed keeps its own
initialisation) on the seeds at once and, at each reported epoch, reads each seed's model out four
ways, printing each read-out's accuracy per seed and its mean, min and sd over the seeds:

- picked: the sub-head with the lowest training loss, IIC's answer (the run's cluster_accuracy);
- MI: the sub-head with the highest held-out mutual information (label-free);
- oracle: the best sub-head by labels, how far any choice among the sub-heads could go;
- k-means: k-means (num_clusters, 10 inits) on the backbone's L2-normalised features of the images,
  a label-free read-out that ignores the heads.

If the oracle and k-means are no better than the picked sub-head, the lost points are in the
backbone's features (classes merged there), not in the read-out, and no label-free read-out will
bring them back. A diagnosis, not a quality figure: it may run on tuning seeds.
"""

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.cluster import KMeans

from iic.config import IICConfig
from iic.loss import mutual_information
from iic.metrics import clustering_metrics
from iic.train import Trainer, run_epochs

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "digits.yaml"
READOUTS = ("picked", "MI", "oracle", "k-means")


def readouts(trainer: Trainer) -> list[dict]:
    """Each seed's accuracy under each read-out (READOUTS), at the trainer's current epoch."""
    num_clusters, num_classes = trainer.config.num_clusters, trainer.data.num_classes

    def accuracy(clusters: np.ndarray) -> float:
        return clustering_metrics(clusters, trainer.labels, num_clusters, num_classes)["cluster_accuracy"]

    images, held_out = trainer._predict(held_out_views=False), trainer._predict(held_out_views=True)
    all_features = trainer.features_of_all_images().float().cpu().numpy()
    rows = []
    for index, seed in enumerate(trainer.seeds):
        per_subhead = [accuracy(p[index].argmax(dim=1).cpu().numpy()) for p in images]
        information = [mutual_information(p[index], twin[index]) for p, twin in zip(images, held_out)]
        normalised = all_features[index] / (np.linalg.norm(all_features[index], axis=1, keepdims=True) + 1e-8)
        kmeans = KMeans(num_clusters, n_init=10, random_state=0).fit_predict(normalised)
        rows.append(
            {
                "seed": seed,
                "picked": per_subhead[trainer.seed_histories[index][-1]["chosen_subhead"]],
                "MI": per_subhead[int(np.argmax(information))],
                "oracle": max(per_subhead),
                "k-means": accuracy(kmeans),
            }
        )
    return rows


def print_readouts(epoch: int, rows: list[dict]) -> None:
    print(f"\nat epoch {epoch}:")
    print(f"{'seed':>6}  " + "  ".join(f"{name:>8}" for name in READOUTS))
    for row in rows:
        print(f"{row['seed']:>6}  " + "  ".join(f"{row[name]:>8.3f}" for name in READOUTS))
    for name in READOUTS:
        values = np.array([row[name] for row in rows])
        spread = values.std(ddof=1) if len(values) > 1 else 0.0
        print(f"{name:>8}: mean {values.mean():.3f}  min {values.min():.3f}  sd {spread:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="YAML config (default: configs/digits.yaml)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument(
        "--report-epochs", type=int, nargs="+", default=[], metavar="E", help="also read out at these epochs"
    )
    parser.add_argument("--seeds", type=int, nargs="+", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    config = IICConfig.from_yaml(args.config).with_overrides(args.overrides).replace(screen_inits=1)
    if args.epochs:
        config = config.replace(epochs=args.epochs)
    config.validate()
    print(
        f"{config.dataset} at {config.input_size} px: {config.backbone} (width {config.backbone_width}), sobel {config.sobel}, {config.epochs} epochs, "
        f"{config.num_subheads} sub-heads, no screening; seeds {args.seeds}; torch threads {torch.get_num_threads()}"
    )
    report_at = {*args.report_epochs, config.epochs}

    def on_epoch(metrics: dict, trainer: Trainer) -> None:
        if trainer.epoch in report_at:
            print_readouts(trainer.epoch, readouts(trainer))

    started = time.perf_counter()
    run_epochs(Trainer(config, None, args.seeds), on_epoch, None)
    print(f"\n{time.perf_counter() - started:.0f} s for all {len(args.seeds)} seeds at once")
    print("command: python " + " ".join(shlex.quote(a) for a in sys.argv))


if __name__ == "__main__":
    main()
