"""The supervised ceiling: the IIC config's backbone trained on the labels, to read IIC's accuracy against.

IIC's 12.2% on the seed study's 15 human actions meant little until it stood beside a supervised
ResNet18's 95% on the same images. This trains the same backbone an IIC config builds (backbone,
width, Sobel, input size, greyscale, weights) with a linear classifier and cross-entropy, on the
same augmentations, lr, batch size, epochs and seed, and measures accuracy on images it never
trained on: the dataset's own test split where it has one, else a stratified 20% of the config's
images drawn from the seed. IIC-only fields (heads, clusters, lamb, repeats, passes) play no part;
an epoch is one pass over the training images.

``train_supervised(config, on_epoch=...)`` runs it with the epoch loop and callback of
``iic.trainer.train``; ``python -m iic.train --supervised ...`` writes the same files as an IIC run.
"""

import functools
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch import nn
from torch.nn import functional as F

from iic.augment import BatchAugment
from iic.checkpoint import check_resumable, load_state, save_state
from iic.config import ConfigError, IICConfig
from iic.data import DATASET_SPECS, ImageData, check_dataset_source, load_dataset
from iic.inputs import (
    AUGMENT_SEED_OFFSET,
    batch_bounds,
    input_transform,
    new_backbone,
    prepare_images,
    resolve_device,
    seed_everything,
)
from iic.loop import EpochCallback, mark_diverged, run_epochs
from iic.metrics import clustering_metrics, confusion_matrix
from iic.seeds import check_seeds
from iic.status import RunStatus

ACCURACY = "supervised_accuracy"  # accuracy on the held-out split
TEST_SPLIT = "test"
HELD_OUT_SHARE = 0.2  # of the config's images, for datasets without a test split
CHECKPOINT_KIND = "supervised"


@dataclass
class HeldOutSplit:
    """The images the ceiling trains on and those it is measured on, and which these are."""

    train: ImageData
    held_out: ImageData
    name: str  # "test", or how the hold-out was drawn


def _labelled_test_split(dataset: str) -> bool:
    """Whether the dataset has a test split with labels (HAR's test images have none)."""
    spec = DATASET_SPECS[dataset]
    return TEST_SPLIT in spec.splits and TEST_SPLIT not in spec.unlabelled_parts


def check_held_out_source(config: IICConfig) -> None:
    """Raise DatasetError unless the files the ceiling reads are there (the config's own split is
    checked by its validation; the ceiling also reads train and test where a dataset has a labelled
    test split). Cheap: decodes nothing."""
    if _labelled_test_split(config.dataset) and not config.download:
        for split in ("train", TEST_SPLIT):
            check_dataset_source(config.dataset, config.data_root, split)


def held_out_split(config: IICConfig, seed: int) -> HeldOutSplit:
    """Train on the dataset's train split and measure on its test split when it has a labelled one (so that
    no test image is trained on, whatever ``config.split`` says; ``max_samples`` caps the training
    images only). Otherwise hold out a stratified ``HELD_OUT_SHARE`` of the config's images (its
    split and ``max_samples`` subset, as IIC sees them), drawn from ``seed``."""
    check_held_out_source(config)
    load = functools.partial(
        load_dataset,
        config.dataset,
        config.data_root,
        input_size=config.input_size,
        greyscale=config.greyscale,
        class_map=config.class_map,
        seed=config.seed,
        download=config.download,
    )
    if _labelled_test_split(config.dataset):
        return HeldOutSplit(load(split="train", max_samples=config.max_samples), load(split=TEST_SPLIT), TEST_SPLIT)
    data = load(split=config.split, max_samples=config.max_samples)
    labels = data.labels.numpy()
    _check_stratifiable(labels, data.class_names, config)
    train_indices, held_out_indices = train_test_split(
        np.arange(len(labels)), test_size=HELD_OUT_SHARE, stratify=labels, random_state=seed
    )
    name = f"stratified {HELD_OUT_SHARE:.0%} of {config.split} (seed {seed})"
    return HeldOutSplit(_subset(data, np.sort(train_indices)), _subset(data, np.sort(held_out_indices)), name)


def _check_stratifiable(labels: np.ndarray, class_names: list[str], config: IICConfig) -> None:
    """What sklearn's stratified split needs, said in the config's terms: every class present at
    least twice, and both sides at least one image of each class."""
    counts = np.bincount(labels, minlength=len(class_names))
    present = np.flatnonzero(counts)
    held_out = math.ceil(HELD_OUT_SHARE * len(labels))
    single = [class_names[c] for c in present if counts[c] < 2]
    if single or min(held_out, len(labels) - held_out) < len(present):
        problem = (
            f"class(es) {', '.join(single)} have one image"
            if single
            else f"{len(labels)} images are too few for {len(present)} classes"
        )
        raise ConfigError(
            f"the supervised ceiling holds out a stratified {HELD_OUT_SHARE:.0%} "
            f"of {config.dataset} split {config.split!r}, which "
            f"needs every class twice and one image of each class on both sides; {problem}: raise max_samples "
            f"(now {config.max_samples}) or leave it out"
        )


def _subset(data: ImageData, indices: np.ndarray) -> ImageData:
    index = torch.from_numpy(indices)
    return ImageData(data.images[index], data.labels[index], data.class_names, data.name)


class SupervisedModel(nn.Module):
    """A backbone and a linear classifier onto the classes: logits, (N, C, H, W) -> (N, classes)."""

    def __init__(self, backbone: nn.Module, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.classifier = nn.Linear(backbone.out_features, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.backbone(images))


@dataclass
class SupervisedResult:
    status: RunStatus
    metrics: dict  # of the last epoch
    history: list[dict]
    confusion: np.ndarray | None  # predicted class x true class on the held-out split; None before any evaluation
    class_names: list[str]
    held_out_split: str


class SupervisedTrainer:
    """One supervised run that advances an epoch at a time, checkpoints and restores, like
    ``iic.train.Trainer`` (whose epoch loop, ``run_epochs``, drives it). ``seed`` (default
    ``config.seed``) draws the initialisation, shuffling, augmentation and hold-out; the
    ``max_samples`` subset is drawn with ``config.seed``, as in an IIC run of that config."""

    def __init__(self, config: IICConfig, seed: int | None = None):
        self.config = config.validate()
        self.seed = check_seeds([config.seed if seed is None else seed])[0]
        self.device = resolve_device(config.device)
        seed_everything(self.seed)
        split = held_out_split(config, self.seed)
        if len(split.train) < 2:
            raise ConfigError(
                f"the supervised ceiling has {len(split.train)} training image(s) "
                f"of {config.dataset}; it needs at least 2: raise max_samples"
            )
        self.held_out_split = split.name
        self.class_names = split.train.class_names
        self.channels = split.train.channels
        self.train_images, self.train_labels = split.train.images.to(self.device), split.train.labels.to(self.device)
        self.held_out_images, self.held_out_labels = (
            split.held_out.images.to(self.device),
            split.held_out.labels.to(self.device),
        )

        self.input_transform = input_transform(config)
        if self.input_transform is not None:
            self.input_transform.to(self.device)
        torch.manual_seed(self.seed)
        self.model = SupervisedModel(new_backbone(config, self.channels), len(self.class_names)).to(self.device)
        self.optimiser = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.augment = BatchAugment(**config.augment_kwargs())
        self.amp = config.amp and self.device.type == "cuda"
        self.shuffle_generator = torch.Generator().manual_seed(self.seed)
        self.augment_generator = torch.Generator(self.device).manual_seed(self.seed + AUGMENT_SEED_OFFSET)

        self.epoch = 0
        self.history: list[dict] = []
        self.status = RunStatus.RUNNING
        self.last_predictions: np.ndarray | None = None  # of the held-out images, at the latest evaluation

    def _logits(self, images: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            return self.model(images).float()

    def run_epoch(self) -> dict:
        """One pass over the training images (each augmented afresh), then the held-out evaluation."""
        started = time.perf_counter()
        count = len(self.train_images)
        order = torch.randperm(count, generator=self.shuffle_generator).to(self.device)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.int64)
        for start, stop in batch_bounds(count, self.config.batch_size):
            index = order[start:stop]
            draw = self.augment.sample(stop - start, self.channels, self.augment_generator, self.device)
            logits = self._logits(prepare_images(self.train_images[index], self.augment, draw, self.input_transform))
            labels = self.train_labels[index]
            loss = F.cross_entropy(logits, labels)
            if not torch.isfinite(loss):
                return mark_diverged(self, time.perf_counter() - started)
            self.optimiser.zero_grad(set_to_none=True)
            loss.backward()
            self.optimiser.step()
            loss_sum += loss.detach() * (stop - start)
            correct += (logits.argmax(dim=1) == labels).sum()
        self.epoch += 1
        metrics = {
            "epoch": self.epoch,
            "status": self.status,
            "seed": self.seed,
            "loss": float(loss_sum) / count,
            "train_accuracy": int(correct) / count,  # of the augmented training images
            **self.evaluate(),
            "epoch_seconds": time.perf_counter() - started,
        }
        self.history.append(metrics)
        return metrics

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Accuracy and loss on the held-out images (not augmented), and the clustering metrics of
        an IIC run computed on the predicted classes, so that the two read side by side."""
        self.model.eval()
        logits = torch.cat(
            [
                self._logits(
                    prepare_images(
                        self.held_out_images[start : start + self.config.eval_batch_size],
                        self.augment,
                        None,
                        self.input_transform,
                    )
                )
                for start in range(0, len(self.held_out_images), self.config.eval_batch_size)
            ]
        )
        self.model.train()
        predictions = logits.argmax(dim=1)
        self.last_predictions = predictions.cpu().numpy()
        classes = len(self.class_names)
        return {
            ACCURACY: int((predictions == self.held_out_labels).sum()) / len(predictions),
            "held_out_loss": float(F.cross_entropy(logits, self.held_out_labels)),
            "held_out_split": self.held_out_split,
            "train_images": len(self.train_images),
            "held_out_images": len(self.held_out_images),
            **clustering_metrics(self.last_predictions, self.held_out_labels.cpu().numpy(), classes, classes),
        }

    def result(self) -> SupervisedResult:
        confusion = None
        if self.last_predictions is not None:
            classes = len(self.class_names)
            confusion = confusion_matrix(self.last_predictions, self.held_out_labels.cpu().numpy(), classes, classes)
        return SupervisedResult(
            self.status,
            self.history[-1] if self.history else {},
            list(self.history),
            confusion,
            self.class_names,
            self.held_out_split,
        )

    # ---- checkpoints --------------------------------------------------------------------------

    def save_checkpoint(self, path: str | Path) -> Path:
        return save_state(
            {
                "kind": CHECKPOINT_KIND,
                "config": self.config.to_dict(),
                "seed": self.seed,
                "epoch": self.epoch,
                "status": str(self.status),
                "history": self.history,
                "model": self.model.state_dict(),
                "optimiser": self.optimiser.state_dict(),
                "shuffle_generator": self.shuffle_generator.get_state(),
                "augment_generator": self.augment_generator.get_state(),
                "last_predictions": self.last_predictions,
            },
            path,
        )

    @staticmethod
    def saved_seed(path: str | Path) -> int:
        return load_state(path, CHECKPOINT_KIND)["seed"]

    def load_checkpoint(self, path: str | Path) -> None:
        state = load_state(path, CHECKPOINT_KIND)
        check_resumable(
            path,
            state["config"],
            self.config,
            [f"seed ({state['seed']} there, {self.seed} here)"] if state["seed"] != self.seed else [],
        )
        self.model.load_state_dict(state["model"])
        self.optimiser.load_state_dict(state["optimiser"])
        self.shuffle_generator.set_state(state["shuffle_generator"].cpu())
        self.augment_generator.set_state(state["augment_generator"].cpu())
        self.epoch = state["epoch"]
        self.status = RunStatus(state["status"])
        self.history = state["history"]
        self.last_predictions = state["last_predictions"]


def train_supervised(
    config: IICConfig,
    on_epoch: EpochCallback | None = None,
    resume_from: str | Path | None = None,
    seed: int | None = None,
) -> SupervisedResult:
    """Train the ceiling of ``config`` on ``seed`` (default ``config.seed``) to ``config.epochs``
    epochs. ``on_epoch``, ``resume_from`` and the statuses work as in ``iic.train.train``."""
    return run_epochs(SupervisedTrainer(config, seed), on_epoch, resume_from)
