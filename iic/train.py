"""Train one IIC model from a config: the loop every other part of iic-search wraps.

``train(config, on_epoch=...)`` runs the whole schedule and calls back after each epoch with that
epoch's metrics; the callback may save a checkpoint or stop the run. ``python -m iic.train`` is the
same loop from the command line, writing metrics, config, checkpoint and a confusion-matrix plot.

The data is decoded once into a uint8 tensor that lives on the training device; each step slices a
batch from it, makes ``repeats`` augmented twins of every image on the device, and pushes the image
and its twins through the model in one forward pass. Runs are seeded: the same config and seed give
the same result on CPU, and a resumed run continues exactly where its checkpoint left it.
"""

import argparse
import json
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from iic.augment import BatchAugment
from iic.config import ConfigError, IICConfig
from iic.data import DatasetError, ImageData, load_dataset
from iic.loss import IICLoss, mutual_information
from iic.metrics import clustering_metrics, confusion_matrix
from iic.models import IICModel, build_backbone
from iic.sobel import Sobel

# Offsets that give the shuffling, augmentation and held-out-view streams their own seeds.
_AUGMENT_SEED_OFFSET = 1
_HELDOUT_SEED_OFFSET = 2


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} was asked for but no CUDA GPU is visible; use device: auto or cpu")
    return torch.device(name)


@dataclass
class TrainResult:
    """What a finished (or stopped, or diverged) run leaves: its final metrics and the history."""

    status: str  # "completed", "stopped" (by the callback) or "diverged"
    metrics: dict
    history: list[dict]
    clusters: np.ndarray  # final cluster of every image (chosen sub-head)
    confusion: np.ndarray | None  # clusters x classes, None without labels
    class_names: list[str]


class Trainer:
    """Holds the state of one run (data on the device, model, optimiser, random streams) so that it
    can be advanced an epoch at a time, checkpointed and restored."""

    def __init__(self, config: IICConfig, data: ImageData | None = None):
        self.config = config.validate(check_data=data is None)
        self.device = resolve_device(config.device)
        _seed_everything(config.seed)
        self.data = data if data is not None else load_dataset(
            config.dataset, config.data_root, split=config.split, input_size=config.input_size,
            greyscale=config.greyscale, class_map=config.class_map, max_samples=config.max_samples,
            seed=config.seed, download=config.download,
        )
        if len(self.data) < 2:
            raise ConfigError(f"dataset {config.dataset!r} has {len(self.data)} image(s); IIC needs at least 2")
        self.images = self.data.images.to(self.device)
        self.labels = self.data.labels.numpy()

        image_channels = self.data.channels
        self.sobel = Sobel(config.sobel_keep_input).to(self.device) if config.sobel else None
        in_channels = Sobel.output_channels(image_channels, config.sobel_keep_input) if config.sobel else image_channels
        backbone = build_backbone(config.backbone, in_channels, config.input_size, config.backbone_width, config.backbone_weights)
        self.model = IICModel(backbone, config.num_clusters, config.overcluster_k, config.num_subheads).to(self.device)
        self.optimiser = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.criterion = IICLoss(config.lamb)
        self.augment = BatchAugment(**config.augment_kwargs())
        self.amp = config.amp and self.device.type == "cuda"

        self.shuffle_generator = torch.Generator().manual_seed(config.seed)
        self.augment_generator = torch.Generator(self.device).manual_seed(config.seed + _AUGMENT_SEED_OFFSET)
        self.epoch = 0
        self.history: list[dict] = []
        self.status = "running"
        self.last_clusters = np.zeros(len(self.images), dtype=np.int64)  # of the latest evaluation

    # ---- one epoch ----------------------------------------------------------------------------

    def _prepare(self, images_uint8: torch.Tensor, augment: bool, generator: torch.Generator | None = None) -> torch.Tensor:
        images = images_uint8.float().div_(255)
        if augment:
            images = self.augment(images, generator or self.augment_generator)
        return self.sobel(images) if self.sobel is not None else images

    def make_views(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A uint8 batch -> (images, ``repeats`` augmented twins of each), ready for the model."""
        base = self._prepare(batch, augment=self.config.augment_both_views)
        twins = self._prepare(batch.repeat(self.config.repeats, 1, 1, 1), augment=True)
        return base, twins

    def step(self, base: torch.Tensor, twins: torch.Tensor, head: str) -> torch.Tensor | None:
        """One optimiser step on ``head``: both views through the model in one forward pass, the
        IIC loss per sub-head, their mean minimised. Returns the per-sub-head losses, or None if
        the loss is no longer finite (the step is then not taken)."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            probabilities = self.model(torch.cat([base, twins]), head)
        repeats = len(twins) // len(base)
        losses = torch.stack([self.criterion(p[: len(base)].repeat(repeats, 1), p[len(base):]) for p in probabilities])
        loss = losses.mean()
        if not torch.isfinite(loss):
            return None
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        self.optimiser.step()
        return losses.detach()

    def _pass(self, head: str) -> torch.Tensor | None:
        """One pass over the shuffled data training ``head``; returns the mean loss per sub-head,
        or None if the loss stopped being finite."""
        config = self.config
        order = torch.randperm(len(self.images), generator=self.shuffle_generator).to(self.device)
        # A last batch of one image has no joint distribution to speak of: fold it into the previous.
        starts = list(range(0, len(order), config.batch_size))
        if len(starts) > 1 and len(order) - starts[-1] < 2:
            starts.pop()
        loss_sums = torch.zeros(config.num_subheads, device=self.device)
        for index, start in enumerate(starts):
            stop = starts[index + 1] if index + 1 < len(starts) else len(order)
            losses = self.step(*self.make_views(self.images[order[start:stop]]), head)
            if losses is None:
                return None
            loss_sums += losses
        return loss_sums / len(starts)

    @torch.no_grad()
    def _predict(self, generator: torch.Generator | None) -> list[torch.Tensor]:
        """Main-head probabilities of every image per sub-head (augmented views if a generator)."""
        self.model.eval()
        outputs = []
        for start in range(0, len(self.images), self.config.eval_batch_size):
            batch = self._prepare(self.images[start : start + self.config.eval_batch_size], augment=generator is not None, generator=generator)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                outputs.append(self.model(batch, "main"))
        self.model.train()
        return [torch.cat(per_subhead) for per_subhead in zip(*outputs)]

    def run_epoch(self) -> dict:
        """Train one epoch (overclustering head, then main head) and evaluate; returns its metrics."""
        started = time.perf_counter()
        config = self.config
        schedule = ["overcluster"] * (config.overcluster_passes if config.overcluster_k else 0) + ["main"] * config.main_passes
        losses = {}
        for head in schedule:
            mean_losses = self._pass(head)
            if mean_losses is None:
                self.status = "diverged"
                self.epoch += 1
                metrics = {"epoch": self.epoch, "status": self.status, "loss": float("nan"), "epoch_seconds": time.perf_counter() - started}
                self.history.append(metrics)
                return metrics
            losses[head] = mean_losses
        self.epoch += 1
        metrics = {"epoch": self.epoch, **self.evaluate(losses["main"]), "epoch_seconds": time.perf_counter() - started}
        if "overcluster" in losses:
            metrics["loss_overcluster"] = float(losses["overcluster"].min())
        self.history.append(metrics)
        return metrics

    def evaluate(self, subhead_losses: torch.Tensor) -> dict:
        """Metrics of the sub-head with the lowest training loss (chosen without labels), plus the
        mutual information it reaches on held-out augmented views (a label-free objective)."""
        chosen = int(subhead_losses.argmin())
        probabilities = self._predict(generator=None)
        held_out = torch.Generator(self.device).manual_seed(self.config.seed + _HELDOUT_SEED_OFFSET)
        twin_probabilities = self._predict(generator=held_out)[chosen]
        clusters = probabilities[chosen].argmax(dim=1).cpu().numpy()
        num_classes = self.data.num_classes
        metrics = {
            "status": self.status,
            "loss": float(subhead_losses[chosen]),
            "mutual_information": mutual_information(probabilities[chosen], twin_probabilities),
            "chosen_subhead": chosen,
            **clustering_metrics(clusters, self.labels, self.config.num_clusters, num_classes),
        }
        if "cluster_accuracy" in metrics and len(probabilities) > 1:
            # Picks a sub-head by looking at labels: a diagnostic of sub-head spread, never the result.
            metrics["diagnostic_best_subhead_accuracy"] = max(
                clustering_metrics(p.argmax(dim=1).cpu().numpy(), self.labels, self.config.num_clusters, num_classes)["cluster_accuracy"]
                for p in probabilities
            )
        self.last_clusters = clusters
        return metrics

    def result(self) -> TrainResult:
        clusters = self.last_clusters
        labelled = self.labels >= 0
        confusion = None
        if labelled.any():
            confusion = confusion_matrix(clusters[labelled], self.labels[labelled], self.config.num_clusters, self.data.num_classes)
        return TrainResult(self.status, self.history[-1] if self.history else {}, list(self.history), clusters, confusion, self.data.class_names)

    # ---- checkpoints --------------------------------------------------------------------------

    def save_checkpoint(self, path: str | Path) -> Path:
        """Everything needed to continue exactly: weights, optimiser, epoch, random streams, history."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "config": self.config.to_dict(),
            "epoch": self.epoch,
            "status": self.status,
            "history": self.history,
            "model": self.model.state_dict(),
            "optimiser": self.optimiser.state_dict(),
            "shuffle_generator": self.shuffle_generator.get_state(),
            "augment_generator": self.augment_generator.get_state(),
            "last_clusters": self.last_clusters,
        }
        temporary = path.with_suffix(path.suffix + ".tmp")
        torch.save(state, temporary)
        temporary.replace(path)  # never leave a half-written checkpoint behind
        return path

    def load_checkpoint(self, path: str | Path) -> None:
        state = torch.load(Path(path), map_location=self.device, weights_only=False)
        saved = IICConfig.from_dict(state["config"])
        changed = [
            name for name in self.config.to_dict()
            if name not in IICConfig.RESUMABLE_CHANGES and getattr(saved, name) != getattr(self.config, name)
        ]
        if changed:
            raise ConfigError(
                f"checkpoint {path} was trained with a different config ({', '.join(changed)} differ); "
                f"resume with the same config (only {', '.join(IICConfig.RESUMABLE_CHANGES)} may change) or start a new run"
            )
        self.model.load_state_dict(state["model"])
        self.optimiser.load_state_dict(state["optimiser"])
        self.shuffle_generator.set_state(state["shuffle_generator"])
        self.augment_generator.set_state(state["augment_generator"].cpu() if self.device.type == "cpu" else state["augment_generator"])
        self.epoch = state["epoch"]
        self.status = state["status"]
        self.history = state["history"]
        self.last_clusters = state["last_clusters"]


EpochCallback = Callable[[dict, Trainer], bool | None]


def train(
    config: IICConfig,
    on_epoch: EpochCallback | None = None,
    resume_from: str | Path | None = None,
    data: ImageData | None = None,
) -> TrainResult:
    """Train ``config`` to ``config.epochs`` epochs and return the result.

    ``on_epoch(metrics, trainer)`` is called after every epoch; it may call
    ``trainer.save_checkpoint(path)``, and returning True stops the run (status "stopped").
    ``resume_from`` continues from a checkpoint written by ``save_checkpoint``. A loss that turns
    NaN or infinite ends the run with status "diverged" rather than an exception.
    """
    trainer = Trainer(config, data)
    if resume_from is not None:
        trainer.load_checkpoint(resume_from)
        if trainer.status != "diverged":  # a finished run given more epochs carries on
            trainer.status = "running" if trainer.epoch < config.epochs else "completed"
    while trainer.status == "running" and trainer.epoch < config.epochs:
        metrics = trainer.run_epoch()
        if trainer.status == "running" and trainer.epoch >= config.epochs:
            trainer.status = metrics["status"] = "completed"
        if on_epoch is not None and on_epoch(metrics, trainer) and trainer.status == "running":
            trainer.status = metrics["status"] = "stopped"
    return trainer.result()


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---- command line -----------------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m iic.train", description="Train one IIC model (no Ray, no MLflow).")
    parser.add_argument("--config", help="YAML config file (fields of iic.config.IICConfig); defaults apply to missing fields")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override one field, e.g. --set lr=0.001 (repeatable)")
    parser.add_argument("--dataset", help="shortcut for --set dataset=NAME")
    parser.add_argument("--epochs", type=int, help="shortcut for --set epochs=N")
    parser.add_argument("--seed", type=int, help="shortcut for --set seed=S")
    parser.add_argument("--out", default="runs/train", help="output directory (default: runs/train)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    return parser.parse_args(argv)


def _progress_line(metrics: dict, epochs: int) -> str:
    parts = [f"epoch {metrics['epoch']:>3}/{epochs}", f"loss {metrics['loss']:+.4f}"]
    if "cluster_accuracy" in metrics:
        parts.append(f"acc {metrics['cluster_accuracy']:.3f}")
    if "largest_cluster_share" in metrics:
        parts.append(f"largest cluster {metrics['largest_cluster_share']:.2f}")
    parts.append(f"{metrics['epoch_seconds']:.1f}s")
    return "  ".join(parts)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    out = Path(args.out)
    try:
        config = IICConfig.from_yaml(args.config) if args.config else IICConfig()
        shortcuts = {name: getattr(args, name) for name in ("dataset", "epochs", "seed") if getattr(args, name) is not None}
        config = config.with_overrides(args.overrides).replace(**shortcuts).validate()
        checkpoint = out / "checkpoint.pt"
        if args.resume and not checkpoint.is_file():
            raise ConfigError(f"--resume: no checkpoint at {checkpoint}; run without --resume to start a new run")
        resolve_device(config.device)
    except (ConfigError, DatasetError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    config.to_yaml(out / "config.yaml")
    print(f"training {config.backbone} on {config.dataset} for {config.epochs} epochs -> {out}", flush=True)

    def on_epoch(metrics: dict, trainer: Trainer) -> None:
        trainer.save_checkpoint(checkpoint)
        print(_progress_line(metrics, config.epochs), flush=True)

    started = time.perf_counter()
    try:
        result = train(config, on_epoch=on_epoch, resume_from=checkpoint if args.resume else None)
    except (ConfigError, DatasetError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    summary = {**result.metrics, "status": result.status, "epochs": len(result.history), "seconds": time.perf_counter() - started}
    (out / "metrics.json").write_text(json.dumps(_finite(summary), indent=2))
    if result.confusion is not None:
        from iic.plots import plot_confusion_matrix

        plot_confusion_matrix(result.confusion, result.class_names, out / "confusion_matrix.png")
    if result.status == "diverged":
        print(f"diverged: the loss became NaN/inf at epoch {len(result.history)}; lower lr (now {config.lr}) or lamb", file=sys.stderr)
        return 1
    print(json.dumps({k: summary[k] for k in ("cluster_accuracy", "nmi", "largest_cluster_share", "status") if k in summary}))
    return 0


def _finite(values: dict) -> dict:
    """JSON has no NaN: write null instead."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()}


if __name__ == "__main__":
    sys.exit(main())
