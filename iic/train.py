"""``python -m iic.train`` (``iic-train``): train one IIC model, or its supervised ceiling, from the command line.

With no ``--config`` it trains the dataset's tuned recipe (``iic.recipes``; plain ``python -m
iic.train`` is digits), else IICConfig's defaults. Writes config.yaml, checkpoint.pt, metrics.json,
clusters.csv and, with labels, confusion_matrix.png into ``--out``; ``--resume`` continues there.
"""

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from iic.checkpoint import CHECKPOINT_FILE
from iic.config import ConfigError, IICConfig
from iic.data import DatasetError
from iic.inputs import resolve_device
from iic.loop import EpochCallback, run_epochs
from iic.recipes import RECIPES, recipe
from iic.result import TrainResult
from iic.seeds import LABEL_FREE_PICK, check_seeds
from iic.status import RunStatus
from iic.supervised import ACCURACY, SupervisedTrainer
from iic.trainer import Trainer, train

CLUSTERS_FILE = "clusters.csv"  # in --out: every image's cluster


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m iic.train", description="Train one IIC model (no Ray, no MLflow).")
    parser.add_argument(
        "--config",
        help="YAML config file (fields of iic.config.IICConfig); without it, the dataset's recipe "
        f"({', '.join(RECIPES)}) or IICConfig's defaults",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one field, e.g. --set lr=0.001 (repeatable)",
    )
    parser.add_argument("--dataset", help="the dataset (default: digits); its recipe unless --config is given")
    parser.add_argument("--epochs", type=int, help="shortcut for --set epochs=N")
    parser.add_argument("--seed", type=int, help="shortcut for --set seed=S")
    parser.add_argument("--out", default="runs/train", help="output directory (default: runs/train)")
    parser.add_argument("--resume", action="store_true", help=f"continue from OUT/{CHECKPOINT_FILE}")
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        metavar="SEED",
        help="train on several seeds at once (one stacked model); "
        "metrics.json gives their mean, min, sd and each seed's",
    )
    parser.add_argument(
        "--supervised",
        action="store_true",
        help="train the config's backbone with a linear classifier on the labels instead (the supervised ceiling, "
        "iic.supervised): accuracy on a held-out split, to read IIC's against",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> tuple[IICConfig, Path | None]:
    """The validated config the command line asks for, and the checkpoint to resume from (None
    without --resume). Raises ConfigError/DatasetError before anything is trained or written."""
    if args.config:
        config = IICConfig.from_yaml(args.config)
    else:  # the recipe of the dataset asked for, by --dataset or --set dataset=...
        config = recipe(args.dataset or IICConfig().with_overrides(args.overrides).dataset)
    shortcuts = {name: getattr(args, name) for name in ("dataset", "epochs", "seed") if getattr(args, name) is not None}
    config = config.with_overrides(args.overrides).replace(**shortcuts).validate()
    checkpoint = Path(args.out) / CHECKPOINT_FILE
    if args.resume and not checkpoint.is_file():
        raise ConfigError(f"--resume: no checkpoint at {checkpoint}; run without --resume to start a new run")
    resolve_device(config.device)
    return config, checkpoint if args.resume else None


def cli_error(err: Exception) -> int:
    print(f"error: {err}", file=sys.stderr)
    return 2


def start_output(out: Path, config: IICConfig, headline: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    config.to_yaml(out / "config.yaml")
    print(f"{headline} -> {out}", flush=True)


def checkpoint_and_print(out: Path, epochs: int, accuracy: str = "cluster_accuracy") -> EpochCallback:
    """The command line's epoch callback: save the checkpoint, print a progress line."""

    def on_epoch(metrics: dict, trainer) -> None:
        trainer.save_checkpoint(out / CHECKPOINT_FILE)
        print(_progress_line(metrics, epochs, accuracy), flush=True)

    return on_epoch


def write_metrics(
    out: Path, summary: dict, confusion: np.ndarray | None, class_names: list[str], title: str = ""
) -> None:
    """metrics.json (NaN written as null) and, with labels, confusion_matrix.png."""
    summary = {**summary, "per_seed": [finite(run) for run in summary.get("per_seed", [])]}
    (out / "metrics.json").write_text(json.dumps(finite(summary), indent=2))
    if confusion is not None:
        from iic.plots import plot_confusion_matrix

        plot_confusion_matrix(confusion, class_names, out / "confusion_matrix.png", title)


def write_clusters(path: Path, result: TrainResult) -> None:
    """Every image's cluster, in the dataset's order: the label-free pick's (``cluster``), each
    seed's (``seed_<s>``)."""
    columns = {"image": np.arange(len(result.clusters)), "cluster": result.clusters}
    if len(result.seeds) > 1:
        columns |= {f"seed_{run.seed}": run.clusters for run in result.seeds}
    lines = [",".join(columns)] + [",".join(map(str, row)) for row in zip(*columns.values(), strict=True)]
    path.write_text("\n".join(lines) + "\n")


def _progress_line(metrics: dict, epochs: int, accuracy: str) -> str:
    parts = [f"epoch {metrics['epoch']:>3}/{epochs}", f"loss {metrics['loss']:+.4f}"]
    if accuracy in metrics:
        parts.append(f"acc {metrics[accuracy]:.3f}")
    if "largest_cluster_share" in metrics:
        parts.append(f"largest cluster {metrics['largest_cluster_share']:.2f}")
    parts.append(f"{metrics['epoch_seconds']:.1f}s")
    return "  ".join(parts)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.supervised:
        return main_supervised(args)
    out = Path(args.out)
    try:
        config, resume_from = config_from_args(args)
        # A resumed run keeps the seeds its checkpoint was trained on unless --seeds says otherwise.
        seeds = check_seeds(args.seeds or (Trainer.saved_seeds(resume_from) if resume_from else [config.seed]))
    except (ConfigError, DatasetError) as err:
        return cli_error(err)
    on_seeds = f" on seeds {', '.join(map(str, seeds))}" if len(seeds) > 1 else ""
    start_output(out, config, f"training {config.backbone} on {config.dataset} for {config.epochs} epochs{on_seeds}")
    started = time.perf_counter()
    try:
        result = train(config, on_epoch=checkpoint_and_print(out, config.epochs), resume_from=resume_from, seeds=seeds)
    except (ConfigError, DatasetError) as err:
        return cli_error(err)
    result.config.to_yaml(out / "config.yaml")  # with the schedule, if the resume changed values
    summary = {
        **result.metrics,
        "status": result.status,
        "epochs": len(result.history),
        "seconds": time.perf_counter() - started,
        "per_seed": [{**run.metrics, "seed": run.seed} for run in result.seeds],
    }
    write_metrics(out, summary, result.confusion, result.class_names)
    write_clusters(out / CLUSTERS_FILE, result)
    if result.status == RunStatus.DIVERGED:
        print(
            f"diverged: the loss became NaN/inf at epoch {len(result.history)}; lower lr (now {config.lr}) or lamb",
            file=sys.stderr,
        )
        return 1
    shown = ["cluster_accuracy", "nmi", "largest_cluster_share", "status"]
    if len(seeds) > 1:  # a mean over seeds is read with its spread
        shown[1:1] = ["cluster_accuracy_min", "cluster_accuracy_sd", LABEL_FREE_PICK]
    print(json.dumps({k: summary[k] for k in shown if k in summary}))
    return 0


def main_supervised(args: argparse.Namespace) -> int:
    """``python -m iic.train --supervised``: the options of an IIC run, one seed (``--seed``, or
    one ``--seeds``); writes config.yaml, checkpoint.pt, metrics.json and confusion_matrix.png."""
    out = Path(args.out)
    try:
        config, resume_from = config_from_args(args)
        if args.seeds and len(args.seeds) > 1:
            raise ConfigError(
                f"--seeds {' '.join(map(str, args.seeds))}: --supervised "
                "trains one seed; give one with --seed S (or --seeds S)"
            )
        # A resumed run keeps the seed its checkpoint was trained on unless --seeds says otherwise.
        seed = (
            args.seeds[0] if args.seeds else SupervisedTrainer.saved_seed(resume_from) if resume_from else config.seed
        )
        trainer = SupervisedTrainer(config, seed)  # loads the data: every check before anything is written
    except (ConfigError, DatasetError) as err:
        return cli_error(err)
    start_output(
        out,
        config,
        f"training a supervised {config.backbone} on {config.dataset} "
        f"for {config.epochs} epochs (seed {trainer.seed}), "
        f"held out: {trainer.held_out_split}",
    )
    started = time.perf_counter()
    try:
        result = run_epochs(trainer, checkpoint_and_print(out, config.epochs, ACCURACY), resume_from)
    except ConfigError as err:  # a checkpoint of another config
        return cli_error(err)
    summary = {
        **result.metrics,
        "status": result.status,
        "epochs": len(result.history),
        "seconds": time.perf_counter() - started,
        "per_seed": [result.metrics],
        "class_names": result.class_names,
        "confusion_matrix": result.confusion.tolist() if result.confusion is not None else None,
    }  # predicted x true
    write_metrics(
        out,
        summary,
        result.confusion,
        result.class_names,
        f"predicted (rows) vs true classes, held out: {result.held_out_split}",
    )
    if result.status == RunStatus.DIVERGED:
        print(
            f"diverged: the loss became NaN/inf at epoch {len(result.history)}; lower lr (now {config.lr})",
            file=sys.stderr,
        )
        return 1
    print(json.dumps({k: summary[k] for k in (ACCURACY, "held_out_split", "status") if k in summary}))
    return 0


def finite(values: dict) -> dict:
    """JSON has no NaN: write null instead."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()}


if __name__ == "__main__":
    sys.exit(main())
