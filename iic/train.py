"""Train one IIC model from a config: the loop every other part of iic-search wraps.

``train(config, on_epoch=...)`` runs all the epochs and calls back after each one with that
epoch's metrics; the callback may save a checkpoint or stop the run. ``python -m iic.train`` is the
same loop from the command line, writing metrics, config, checkpoint and a confusion-matrix plot.

The data is decoded once into a uint8 tensor that lives on the training device; each step slices a
batch from it, makes ``repeats`` augmented twins of every image on the device, and pushes the image
and its twins through the model in one forward pass. Runs are seeded: the same config and seed give
the same result on CPU, and a resumed run continues exactly where its checkpoint left it.

The augmentation strengths, lr and lamb in force are set at the start of every epoch from the
config's ``schedule``. A run resumed with other values of those fields (what population-based
training does when a trial takes over another's checkpoint) trains on with them and adds the change
to its config's schedule, so that the config a run ends with replays it from epoch 1.
"""

import argparse
import json
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from iic.augment import AugmentDraw, BatchAugment
from iic.consensus import CONSENSUS_ACCURACY, consensus_metrics
from iic.config import CUDA_GRAPH_MODES, ConfigError, IICConfig
from iic.data import DatasetError, ImageData, load_dataset
from iic.loss import IICLoss, mutual_information
from iic.metrics import clustering_metrics, confusion_matrix
from iic.models import IICModel, StackedIICModel, build_backbone
from iic.neighbours import nearest_neighbours, pair_candidates
from iic.pretrained import PRETRAINED_CHANNELS, ImageNetInput, WeightsError
from iic.seeds import (
    INIT_SEED,
    LABEL_FREE_PICK,
    combine_seeds,
    label_free_pick,
    label_free_ranking,
    screening_candidates,
)
from iic.self_label import SELF_LABEL_SHARE, SelfLabelLoss
from iic.sobel import Sobel
from iic.status import RunStatus

# Offsets that give the shuffling, augmentation and held-out-view streams their own seeds.
AUGMENT_SEED_OFFSET = 1
_HELDOUT_SEED_OFFSET = 2
CHECKPOINT_FILE = "checkpoint.pt"  # in the CLI's --out folder
CLUSTERS_FILE = "clusters.csv"  # in the CLI's --out folder: every image's cluster


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} was asked for but no CUDA GPU is visible; use device: auto or cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def input_transform(config: IICConfig) -> torch.nn.Module | None:
    """What images go through before the backbone: Sobel, the pretrained weights' normalisation, or nothing."""
    return (
        Sobel(config.sobel_keep_input)
        if config.sobel
        else ImageNetInput(config.backbone)
        if config.backbone_weights
        else None
    )


def new_backbone(config: IICConfig, channels: int) -> torch.nn.Module:
    """The config's backbone for images of ``channels`` channels (as ``input_transform`` leaves
    them), freshly initialised from torch's global generator (or loaded with its weights)."""
    if config.sobel:
        in_channels = Sobel.output_channels(channels, config.sobel_keep_input)
    else:
        in_channels = PRETRAINED_CHANNELS if config.backbone_weights else channels
    return build_backbone(
        config.backbone, in_channels, config.input_size, config.backbone_width, config.backbone_weights
    )


def compiled(model: torch.nn.Module, mode: str) -> torch.nn.Module:
    """``model`` under torch.compile in ``mode`` (``IICConfig.compile_mode``), or itself for "off".
    Shapes are specialised (a pass has at most two batch sizes), which CUDA graphs need."""
    return model if mode == "off" else torch.compile(model, mode=mode, dynamic=False)


def prepare_images(
    images_uint8: torch.Tensor, augment: BatchAugment, draw: AugmentDraw | None, transform: torch.nn.Module | None
) -> torch.Tensor:
    """uint8 images -> floats in [0, 1], augmented with ``draw`` if given, then ``transform`` (see input_transform)."""
    images = images_uint8.float().div_(255)
    if draw is not None:
        images = augment.apply(images, draw)
    return transform(images) if transform is not None else images


def batch_bounds(count: int, batch_size: int) -> list[tuple[int, int]]:
    """(start, stop) of each batch of a pass over ``count`` images. A last batch of one image has no
    joint distribution (nor batch-norm statistics) to speak of: it is folded into the previous."""
    starts = list(range(0, count, batch_size))
    if len(starts) > 1 and count - starts[-1] < 2:
        starts.pop()
    return list(zip(starts, starts[1:] + [count]))


def save_state(state: dict, path: str | Path) -> Path:
    """Write a checkpoint's state, never leaving a half-written file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, temporary)
    temporary.replace(path)
    return path


def load_state(path: str | Path, kind: str) -> dict:
    """A checkpoint's state, on the CPU (generator states must be CPU tensors whatever the device;
    models and optimisers copy their tensors to the device on load). ``kind`` is the run it must
    come from: ``iic`` (checkpoints without a kind are IIC's) or ``supervised``."""
    state = torch.load(Path(path), map_location="cpu", weights_only=False)
    found = state.get("kind", "iic")
    if found != kind:
        raise ConfigError(
            f"checkpoint {path} is from a {found!r} run, not a {kind!r} one (--supervised makes 'supervised' runs); "
            "resume it as the run it is, or write to another --out"
        )
    return state


def check_resumable(
    path: str | Path, saved_config: dict, config: IICConfig, other_changes: Sequence[str] = (), scheduled: bool = False
) -> None:
    """Refuse to continue a checkpoint trained with another config (beyond RESUMABLE_CHANGES, and
    with ``scheduled`` the SCHEDULABLE_FIELDS, which then change from the restored epoch on)."""
    saved = IICConfig.from_dict(saved_config)
    may_change = (*IICConfig.RESUMABLE_CHANGES, *((*IICConfig.SCHEDULABLE_FIELDS, "schedule") if scheduled else ()))
    changed = [
        name for name in config.to_dict() if name not in may_change and getattr(saved, name) != getattr(config, name)
    ]
    changed += other_changes
    if changed:
        allowed = f"only {', '.join(IICConfig.RESUMABLE_CHANGES)} may change" + (
            f", and {', '.join(IICConfig.SCHEDULABLE_FIELDS)}, which then change from the restored epoch on"
            if scheduled
            else ""
        )
        raise ConfigError(
            f"checkpoint {path} was trained with a different config ({', '.join(changed)} differ); "
            f"resume with the same config and seeds ({allowed}) or start a new run"
        )


def check_seeds(seeds: Sequence[int]) -> list[int]:
    seeds = list(seeds)
    if (
        not seeds
        or len(set(seeds)) != len(seeds)
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
    ):
        raise ConfigError(f"seeds: give one or more distinct non-negative integers (got {seeds})")
    return seeds


@dataclass
class SeedRun:
    """One seed's share of a run: its own metrics, history and final clustering."""

    seed: int
    metrics: dict
    history: list[dict]
    clusters: np.ndarray  # final cluster of every image (the seed's chosen sub-head)
    confusion: np.ndarray | None  # clusters x classes, None without labels
    probabilities: np.ndarray  # (N, k): the chosen sub-head's soft assignment of every image
    init_seed: int  # the initialisation kept (``seed`` itself unless screen_inits chose another)


@dataclass
class TrainResult:
    """What a finished (or stopped, or diverged) run leaves: the final metrics combined over its
    seeds (see ``iic.seeds.combine_seeds``), their history, and each seed's own."""

    status: RunStatus
    metrics: dict
    history: list[dict]
    seeds: list[SeedRun]
    class_names: list[str]
    config: IICConfig  # as trained: a resume with new schedulable values adds them to its schedule
    consensus_clusters: np.ndarray | None = None  # the seeds' label-free consensus (iic.consensus); None for one seed

    @property
    def label_free_pick(self) -> SeedRun:
        """The seed a user without labels would keep (highest held-out mutual information)."""
        return (
            self.seeds[label_free_pick([run.metrics for run in self.seeds])] if self.seeds[0].metrics else self.seeds[0]
        )

    @property
    def clusters(self) -> np.ndarray:
        return self.label_free_pick.clusters

    @property
    def confusion(self) -> np.ndarray | None:
        return self.label_free_pick.confusion


class Trainer:
    """Holds the state of one run (data on the device, model, optimiser, random streams) so that it
    can be advanced an epoch at a time, checkpointed and restored.

    A run trains the config on one or more ``seeds`` at once (default: ``config.seed``): one model
    per seed, stacked into one (``StackedIICModel``), each with its own initialisation, shuffling,
    augmentation and held-out views drawn from its seed, so that seed s of a stacked run trains as a
    run of that seed alone would. The data (and its ``max_samples`` subset, drawn with
    ``config.seed``) is shared.

    With ``screen_inits`` > 1 each seed starts as that many models (its initialisations, see
    ``iic.seeds.screening_candidates``) and reports the one with the highest held-out mutual
    information; after ``screen_epochs`` epochs only those train on (and with ``screen_cut_epochs``,
    after that many only each seed's ``screen_cut_keep`` highest)."""

    def __init__(self, config: IICConfig, data: ImageData | None = None, seeds: Sequence[int] | None = None):
        self.config = config.validate(check_data=data is None)
        self.requested_seeds = check_seeds(seeds if seeds is not None else [config.seed])
        groups = screening_candidates(self.requested_seeds, config.screen_inits)
        # The stack's models: each an initialisation of the seed in origins, the run it reports as.
        self.seeds = [init for group in groups for init in group]
        self.origins = [seed for seed, group in zip(self.requested_seeds, groups) for _ in group]
        self.device = resolve_device(config.device)
        seed_everything(config.seed)
        self.data = (
            data
            if data is not None
            else load_dataset(
                config.dataset,
                config.data_root,
                split=config.split,
                input_size=config.input_size,
                greyscale=config.greyscale,
                class_map=config.class_map,
                max_samples=config.max_samples,
                seed=config.seed,
                download=config.download,
            )
        )
        if len(self.data) < 2:
            raise ConfigError(f"dataset {config.dataset!r} has {len(self.data)} image(s); IIC needs at least 2")
        if config.twin_neighbours >= len(self.data):
            raise ConfigError(
                f"twin_neighbours: {config.twin_neighbours} is not below the {len(self.data)} images of "
                f"dataset {config.dataset!r}; set it to at most {len(self.data) - 1} (SCAN uses 5-20)"
            )
        self.images = self.data.images.to(self.device)
        self.labels = self.data.labels.numpy()

        self.input_transform = input_transform(config)
        if self.input_transform is not None:
            self.input_transform.to(self.device)
        self._build_model()
        self.criterion = IICLoss(config.lamb)
        self.self_label_criterion = SelfLabelLoss(config.self_label_threshold)
        self.apply_schedule(1)  # the augmentation, lr and lamb of epoch 1
        self.amp = config.amp and self.device.type == "cuda"
        # A frozen backbone shown the same images every epoch (no augmentation) gives the same
        # features: computed once, (N, F), and every step and evaluation slices them.
        self.cached_features = (
            self._all_features()
            if config.freeze_backbone and self.augment.is_identity and not config.schedule
            else None
        )
        # Each image's twin sources: itself, then its nearest neighbours (N, 1 + twin_neighbours).
        self.twin_candidates = (
            pair_candidates(nearest_neighbours(self._neighbour_space(), config.twin_neighbours))
            if config.twin_neighbours
            else None
        )

        self.shuffle_generators = [torch.Generator().manual_seed(seed) for seed in self.seeds]
        self.augment_generators = [
            torch.Generator(self.device).manual_seed(seed + AUGMENT_SEED_OFFSET) for seed in self.seeds
        ]
        self.held_out_draws = self._draw_held_out_views()
        self.epoch = 0
        self.history: list[dict] = []  # combined over seeds, one record per epoch
        self.seed_histories: list[list[dict]] = [[] for _ in self.seeds]
        self.status = RunStatus.RUNNING
        # Of the latest evaluation: each seed's clusters and soft assignments, and their consensus.
        self.last_clusters = [np.zeros(len(self.images), dtype=np.int64) for _ in self.seeds]
        self.last_probabilities = [
            np.zeros((len(self.images), config.num_clusters), dtype=np.float32) for _ in self.seeds
        ]
        self.last_consensus: np.ndarray | None = None

    def _build_model(self) -> None:
        """The stacked model of ``seeds`` as they start, its training forward pass and optimiser."""
        try:
            models = [self._new_model(seed) for seed in self.seeds]
        except WeightsError as err:
            raise ConfigError(f"backbone_weights: {err}") from None
        self.model = StackedIICModel(models, self.config.freeze_backbone).to(self.device)
        if self.config.channels_last:  # 4-d weights NHWC; convolutions then give NHWC outputs too
            self.model.to(memory_format=torch.channels_last)
        self.training_forward = compiled(self.model, self.config.compile_mode)
        self.optimiser = torch.optim.Adam([p for p in self.model.parameters() if p.requires_grad], lr=self.config.lr)

    def _keep_models(self, indices: list[int]) -> None:
        """Go on with the stack's models ``indices`` alone, as they are: weights, optimiser state,
        random streams, held-out views and histories."""
        select = self.model.select_models
        model_state = {name: select(name, tensor, indices) for name, tensor in self.model.state_dict().items()}
        names = [name for name, parameter in self.model.named_parameters() if parameter.requires_grad]
        optimiser_state = self.optimiser.state_dict()
        optimiser_state["state"] = {
            i: {key: select(names[i], value, indices) for key, value in state.items()}
            for i, state in optimiser_state["state"].items()
        }
        for name in (
            "seeds",
            "origins",
            "shuffle_generators",
            "augment_generators",
            "held_out_draws",
            "seed_histories",
            "last_clusters",
            "last_probabilities",
        ):
            setattr(self, name, [getattr(self, name)[i] for i in indices])
        self._build_model()
        self.model.load_state_dict(model_state)
        self.optimiser.load_state_dict(optimiser_state)

    @property
    def screen_groups(self) -> list[list[int]]:
        """The stack's models by the seed they report as: its initialisations while screening, then one."""
        return [[i for i, origin in enumerate(self.origins) if origin == seed] for seed in self.requested_seeds]

    def _picks(self, per_seed: list[dict]) -> list[int]:
        """Which model each seed reports: of its initialisations, the one whose metrics in
        ``per_seed`` (one dict per model) have the highest held-out mutual information."""
        return [group[label_free_pick([per_seed[i] for i in group])] for group in self.screen_groups]

    def _screen(self, per_seed: list[dict]) -> None:
        """Drop the initialisations this epoch's screening cuts: at ``screen_epochs`` all but each
        seed's pick, at ``screen_cut_epochs`` all but its ``screen_cut_keep`` highest in MI."""
        config = self.config
        if self.epoch >= config.screen_epochs:
            keep = 1
        elif config.screen_cut_epochs and self.epoch >= config.screen_cut_epochs:
            keep = config.screen_cut_keep
        else:
            return
        kept = sorted(
            group[i]
            for group in self.screen_groups
            for i in label_free_ranking([per_seed[member] for member in group])[:keep]
        )
        if len(kept) < len(self.seeds):
            self._keep_models(kept)

    def _current_picks(self) -> list[int]:
        return self._picks([history[-1] if history else {} for history in self.seed_histories])

    def _draw_held_out_views(self) -> list[AugmentDraw]:
        """Each seed's held-out view of every image, drawn once with the augmentation of epoch 1: the
        label-free score then depends neither on how the images are batched for evaluation nor on
        a schedule's later strengths."""
        augment = BatchAugment(**self.config.augment_kwargs(1))
        return [
            augment.sample(
                len(self.images),
                self.data.channels,
                torch.Generator(self.device).manual_seed(seed + _HELDOUT_SEED_OFFSET),
                self.device,
            )
            for seed in self.seeds
        ]

    def apply_schedule(self, epoch: int) -> None:
        """Put the schedulable fields' values for ``epoch`` in force: the augmentation strengths,
        the optimiser's learning rate (its state, Adam's moments, stays) and the loss's lamb."""
        values = self.config.values_at(epoch)
        self.augment = BatchAugment(**self.config.augment_kwargs(epoch))
        for group in self.optimiser.param_groups:
            group["lr"] = values["lr"]
        self.criterion.lamb = values["lamb"]

    def _new_model(self, seed: int) -> IICModel:
        """The model a run of ``seed`` alone starts from."""
        config = self.config
        torch.manual_seed(seed)
        return IICModel(
            new_backbone(config, self.data.channels), config.num_clusters, config.overcluster_k, config.num_subheads
        )

    # ---- one epoch ----------------------------------------------------------------------------

    def _prepare(self, images_uint8: torch.Tensor, draws: list[AugmentDraw] | None) -> torch.Tensor:
        """uint8 images of all seeds, (S*n, C, H, W) -> floats, augmented with each seed's draw for
        its block of n, then Sobel or the pretrained weights' normalisation if on."""
        return prepare_images(
            images_uint8, self.augment, AugmentDraw.cat(draws) if draws is not None else None, self.input_transform
        )

    @torch.no_grad()
    def features_of_all_images(self, models: slice = slice(None)) -> torch.Tensor:
        """The backbone features of every image (unaugmented) as the ``models`` are now, (S, N, F),
        in evaluation batches and mode (batch norm's statistics do not move)."""
        self.model.eval()
        chunks = []
        for start in range(0, len(self.images), self.config.eval_batch_size):
            images = self._prepare(self.images[start : start + self.config.eval_batch_size], None)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                chunks.append(self.model.features_of_same_images(images)[models])
        self.model.train()
        return torch.cat(chunks, dim=1)

    def _all_features(self) -> torch.Tensor:
        """The first model's features of every image, (N, F) (a frozen backbone is shared)."""
        return self.features_of_all_images(slice(0, 1))[0]

    def _neighbour_space(self) -> torch.Tensor:
        """Where twin neighbours are found: the pretrained backbone's features of every image as
        it starts (the seeds' pretrained weights are the same), else the pixels."""
        if not self.config.backbone_weights:
            return self.images
        return self.cached_features if self.cached_features is not None else self._all_features()

    def twin_sources(self, batches: torch.Tensor) -> torch.Tensor:
        """The images whose views are the twins of ``batches`` (S, B) of indices: (S, repeats * B),
        the batch repeated; with ``twin_neighbours``, each twin's source drawn uniformly from its
        image and the image's neighbours (from the seed's shuffling stream, as a run of it alone)."""
        repeated = batches.repeat(1, self.config.repeats)
        if self.twin_candidates is None:
            return repeated
        choices = torch.stack(
            [
                torch.randint(self.twin_candidates.shape[1], (repeated.shape[1],), generator=generator)
                for generator in self.shuffle_generators
            ]
        ).to(self.device)
        return self.twin_candidates[repeated, choices]

    def make_views(
        self, batches: torch.Tensor, twin_images: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 batches, one per seed (S, B, C, H, W) -> (images, ``repeats`` augmented twins of
        each), shaped (S, B, ...) and (S, repeats * B, ...), ready for the model. ``twin_images``
        (S, repeats * B, C, H, W) are the twins' sources (see ``twin_sources``); by default the
        batches themselves, repeated."""
        count, size = batches.shape[:2]
        repeats, channels = self.config.repeats, self.data.channels
        base_draws, twin_draws = [], []
        for generator in self.augment_generators:  # per seed: its base draw first, as a run of its own
            if self.config.augment_both_views:
                base_draws.append(self.augment.sample(size, channels, generator, self.device))
            twin_draws.append(self.augment.sample(size * repeats, channels, generator, self.device))
        base = self._prepare(batches.flatten(0, 1), base_draws or None)
        if twin_images is None:
            twin_images = batches.repeat(1, repeats, 1, 1, 1)
        twins = self._prepare(twin_images.flatten(0, 1), twin_draws)
        return base.unflatten(0, (count, size)), twins.unflatten(0, (count, size * repeats))

    def step(self, base: torch.Tensor, twins: torch.Tensor, head: str, self_label: bool = False) -> torch.Tensor | None:
        """One optimiser step on ``head`` for every seed: both views through the model in one
        forward pass, the IIC loss per sub-head and seed, each seed's mean over its sub-heads
        minimised (with ``self_label``, the self-labelling loss of the twins against the images'
        confident assignments is minimised instead). Returns the (sub-heads, seeds) IIC losses,
        or None if any minimised loss is no longer finite (the step is then not taken)."""
        size = base.shape[1]
        # Views are images, or with cached features already the frozen backbone's features of them.
        classify = self.model.classify if self.cached_features is not None else self.training_forward
        if self.config.compile_mode in CUDA_GRAPH_MODES:  # a new step: the graphs' earlier outputs may be reused
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            probabilities = classify(torch.cat([base, twins], dim=1), head)
        repeats = twins.shape[1] // size
        losses = torch.stack([self.criterion(p[:, :size].repeat(1, repeats, 1), p[:, size:]) for p in probabilities])
        minimised = losses
        if self_label:  # IIC's loss still chooses the sub-head and is reported
            minimised = torch.stack(
                [self.self_label_criterion(p[:, :size].repeat(1, repeats, 1), p[:, size:]) for p in probabilities]
            )
        per_seed = minimised.mean(dim=0)
        if not torch.isfinite(per_seed).all():
            return None
        self.optimiser.zero_grad(set_to_none=True)
        per_seed.sum().backward()  # the seeds share no parameter: each gets its own loss's gradient
        self.optimiser.step()
        return losses.detach()

    def _pass(self, head: str, self_label: bool = False) -> torch.Tensor | None:
        """One pass over the data (shuffled per seed) training ``head`` (by self-labelling if
        ``self_label``); returns the mean IIC loss per sub-head and seed, or None if the loss
        stopped being finite."""
        config = self.config
        orders = torch.stack([torch.randperm(len(self.images), generator=g) for g in self.shuffle_generators]).to(
            self.device
        )
        bounds = batch_bounds(len(self.images), config.batch_size)
        loss_sums = torch.zeros(config.num_subheads, len(self.seeds), device=self.device)
        for start, stop in bounds:
            batches = orders[:, start:stop]
            sources = self.twin_sources(batches)
            if self.cached_features is not None:  # no augmentation: twins are their sources' features
                losses = self.step(self.cached_features[batches], self.cached_features[sources], head, self_label)
            else:
                losses = self.step(*self.make_views(self.images[batches], self.images[sources]), head, self_label)
            if losses is None:
                return None
            loss_sums += losses
        return loss_sums / len(bounds)

    @torch.no_grad()
    def _predict(self, held_out_views: bool) -> list[torch.Tensor]:
        """Main-head probabilities of every image, (S, N, k) per sub-head: of the images
        themselves, or of each seed's held-out augmented views of them."""
        self.model.eval()
        outputs = []
        count = len(self.seeds)
        for start in range(0, len(self.images), self.config.eval_batch_size):
            stop = min(start + self.config.eval_batch_size, len(self.images))
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                if self.cached_features is not None:  # held-out views without augmentation are the images
                    features = self.cached_features[start:stop].expand(count, -1, -1)
                elif held_out_views:
                    draws = [draw[start:stop] for draw in self.held_out_draws]
                    batch = self._prepare(self.images[start:stop].repeat(count, 1, 1, 1), draws)
                    features = self.model.features(batch.unflatten(0, (count, stop - start)))
                else:
                    features = self.model.features_of_same_images(self._prepare(self.images[start:stop], None))
                outputs.append(self.model.classify(features, "main"))
        self.model.train()
        return [torch.cat(per_subhead, dim=1) for per_subhead in zip(*outputs)]

    def run_epoch(self) -> dict:
        """Train one epoch (overclustering head, then main head) and evaluate; returns its metrics
        combined over the seeds (each seed's own go to ``seed_histories``)."""
        started = time.perf_counter()
        config = self.config
        self.apply_schedule(self.epoch + 1)
        self_label = config.self_labels_at(self.epoch + 1)
        overcluster_passes = config.overcluster_passes if config.overcluster_k and not self_label else 0
        heads = ["overcluster"] * overcluster_passes + ["main"] * config.main_passes
        losses = {}
        for head in heads:
            mean_losses = self._pass(head, self_label and head == "main")
            if mean_losses is None:
                return mark_diverged(self, time.perf_counter() - started)
            losses[head] = mean_losses
        self.epoch += 1
        per_seed = self.evaluate(losses["main"])
        if "overcluster" in losses:
            for metrics, seed_losses in zip(per_seed, losses["overcluster"].t()):
                metrics["loss_overcluster"] = float(seed_losses.min())
        for history, metrics in zip(self.seed_histories, per_seed):
            history.append(metrics)
        picks = self._picks(per_seed)
        self._screen(per_seed)
        metrics = {
            "epoch": self.epoch,
            "status": self.status,
            **combine_seeds([per_seed[i] for i in picks]),
            **self._consensus(self._current_picks()),
            "epoch_seconds": time.perf_counter() - started,
        }
        self.history.append(metrics)
        return metrics

    def evaluate(self, subhead_losses: torch.Tensor) -> list[dict]:
        """Each seed's metrics, of its sub-head with the lowest training loss (chosen without
        labels), with the mutual information it reaches on held-out augmented views (a label-free
        objective). ``subhead_losses``: (sub-heads, seeds)."""
        probabilities = self._predict(held_out_views=False)
        twin_probabilities = self._predict(held_out_views=True)
        num_clusters, num_classes = self.config.num_clusters, self.data.num_classes
        per_seed = []
        for index, seed in enumerate(self.seeds):
            chosen = int(subhead_losses[:, index].argmin())
            clusters = probabilities[chosen][index].argmax(dim=1).cpu().numpy()
            metrics = {
                "seed": self.origins[index],
                "loss": float(subhead_losses[chosen, index]),
                "mutual_information": mutual_information(
                    probabilities[chosen][index], twin_probabilities[chosen][index]
                ),
                "chosen_subhead": chosen,
                **clustering_metrics(clusters, self.labels, num_clusters, num_classes),
            }
            if self.config.screen_inits > 1:
                metrics[INIT_SEED] = self.seeds[index]
            if self.config.self_label_epochs:  # how many images would be pseudo-labels
                metrics[SELF_LABEL_SHARE] = float(
                    self.self_label_criterion.confident_share(probabilities[chosen][index])
                )
            if "cluster_accuracy" in metrics and len(probabilities) > 1:
                # Picks a sub-head by looking at labels: a diagnostic of sub-head spread, never the result.
                metrics["diagnostic_best_subhead_accuracy"] = max(
                    clustering_metrics(p[index].argmax(dim=1).cpu().numpy(), self.labels, num_clusters, num_classes)[
                        "cluster_accuracy"
                    ]
                    for p in probabilities
                )
            self.last_clusters[index] = clusters
            self.last_probabilities[index] = probabilities[chosen][index].float().cpu().numpy()
            per_seed.append(metrics)
        return per_seed

    def _consensus(self, picks: list[int]) -> dict:
        """The label-free consensus clustering of the latest evaluation of the models ``picks`` (one
        per seed) and its metrics (``consensus_accuracy``, ...); nothing for a run of one seed."""
        if len(picks) < 2:
            return {}
        probabilities = [self.last_probabilities[i] for i in picks]
        self.last_consensus, metrics = consensus_metrics(
            probabilities, self.labels, self.config.num_clusters, self.data.num_classes
        )
        return metrics

    def result(self) -> TrainResult:
        labelled = self.labels >= 0
        runs = []
        for i in self._current_picks():
            clusters, history = self.last_clusters[i], self.seed_histories[i]
            confusion = None
            if labelled.any():
                confusion = confusion_matrix(
                    clusters[labelled], self.labels[labelled], self.config.num_clusters, self.data.num_classes
                )
            runs.append(
                SeedRun(
                    self.origins[i],
                    history[-1] if history else {},
                    list(history),
                    clusters,
                    confusion,
                    self.last_probabilities[i],
                    self.seeds[i],
                )
            )
        return TrainResult(
            self.status,
            self.history[-1] if self.history else {},
            list(self.history),
            runs,
            self.data.class_names,
            self.config,
            self.last_consensus,
        )

    # ---- checkpoints --------------------------------------------------------------------------

    def save_checkpoint(self, path: str | Path) -> Path:
        """Everything needed to continue exactly: weights, optimiser, epoch, random streams, history."""
        state = {
            "kind": "iic",
            "config": self.config.to_dict(),
            "seeds": self.requested_seeds,
            "trained_seeds": self.seeds,  # after screening, the initialisations kept
            "epoch": self.epoch,
            "status": str(self.status),
            "history": self.history,
            "seed_histories": self.seed_histories,
            # A frozen backbone is left out: it is the config's weights file, as loaded again on resume.
            "model": {
                name: value
                for name, value in self.model.state_dict().items()
                if not (self.config.freeze_backbone and name.startswith("backbone."))
            },
            "optimiser": self.optimiser.state_dict(),
            "shuffle_generators": [g.get_state() for g in self.shuffle_generators],
            "augment_generators": [g.get_state() for g in self.augment_generators],
            "last_clusters": self.last_clusters,
            "last_probabilities": self.last_probabilities,
        }
        return save_state(state, path)

    @staticmethod
    def saved_seeds(path: str | Path) -> list[int]:
        return load_state(path, "iic")["seeds"]

    def load_checkpoint(self, path: str | Path) -> None:
        state = load_state(path, "iic")
        other = (
            [f"seeds ({state['seeds']} there, {self.requested_seeds} here)"]
            if state["seeds"] != self.requested_seeds
            else []
        )
        other += self.config.self_labelling_changes(IICConfig.from_dict(state["config"]), state["epoch"])
        check_resumable(path, state["config"], self.config, other, scheduled=True)
        # The epochs trained keep the values they had; new ones apply from the next epoch on.
        self.config = self.config.continuing(IICConfig.from_dict(state["config"]), state["epoch"])
        trained = state.get("trained_seeds", state["seeds"])
        if trained != self.seeds:  # saved after screening: only the initialisations kept go on
            self._keep_models([self.seeds.index(seed) for seed in trained])
        self.held_out_draws = self._draw_held_out_views()
        # A frozen backbone is not saved (it is the pretrained weights): keep the one built here.
        self.model.load_state_dict({**self.model.state_dict(), **state["model"]})
        self.optimiser.load_state_dict(state["optimiser"])
        for generator, saved_state in zip(
            self.shuffle_generators + self.augment_generators, state["shuffle_generators"] + state["augment_generators"]
        ):
            generator.set_state(saved_state.cpu())
        self.epoch = state["epoch"]
        self.status = RunStatus(state["status"])
        self.history = state["history"]
        self.seed_histories = state["seed_histories"]
        self.last_clusters = state["last_clusters"]
        # Checkpoints written before the consensus existed: the next epoch's evaluation fills them in.
        if "last_probabilities" in state:
            self.last_probabilities = state["last_probabilities"]
            if self.epoch:
                self._consensus(self._current_picks())  # derived from the probabilities (deterministic): not saved


def mark_diverged(trainer, seconds: float) -> dict:
    """End ``trainer``'s run (an IIC or supervised trainer) as diverged: the epoch whose loss
    stopped being finite, recorded with a NaN loss."""
    trainer.status = RunStatus.DIVERGED
    trainer.epoch += 1
    metrics = {"epoch": trainer.epoch, "status": trainer.status, "loss": float("nan"), "epoch_seconds": seconds}
    trainer.history.append(metrics)
    return metrics


# What an epoch callback may return to end the run: a status (e.g. RunStatus.COLLAPSED), or True
# for RunStatus.STOPPED; None or False carries on.
StopReason = RunStatus | bool | None
EpochCallback = Callable[[dict, Trainer], StopReason]


def train(
    config: IICConfig,
    on_epoch: EpochCallback | None = None,
    resume_from: str | Path | None = None,
    data: ImageData | None = None,
    seeds: Sequence[int] | None = None,
) -> TrainResult:
    """Train ``config`` to ``config.epochs`` epochs on ``seeds`` (default: ``config.seed``) and
    return the result.

    ``on_epoch(metrics, trainer)`` is called after every epoch, with ``metrics["status"]`` the
    status the run will have unless the callback ends it (``completed`` after the last epoch); it
    may call ``trainer.save_checkpoint(path)`` and return a stop reason (see ``StopReason``), which
    becomes the run's status even in its last epoch. ``resume_from`` continues from a checkpoint
    written by ``save_checkpoint``. A loss that turns NaN or infinite ends the run with status
    "diverged" rather than an exception.
    """
    return run_epochs(Trainer(config, data, seeds), on_epoch, resume_from)


def run_epochs(trainer, on_epoch: EpochCallback | None, resume_from: str | Path | None):
    """The epoch loop that ``train`` and the supervised ceiling (``iic.supervised``) share, for a
    trainer with ``config``, ``epoch``, ``status``, ``run_epoch``, ``load_checkpoint`` and ``result``."""
    config = trainer.config
    if resume_from is not None:
        trainer.load_checkpoint(resume_from)
        if trainer.status != RunStatus.DIVERGED:  # a finished run given more epochs carries on
            trainer.status = RunStatus.RUNNING if trainer.epoch < config.epochs else RunStatus.COMPLETED
    while trainer.status == RunStatus.RUNNING and trainer.epoch < config.epochs:
        metrics = trainer.run_epoch()
        if trainer.status == RunStatus.RUNNING and trainer.epoch >= config.epochs:
            metrics["status"] = RunStatus.COMPLETED
        reason = on_epoch(metrics, trainer) if on_epoch is not None else None
        if trainer.status == RunStatus.RUNNING:
            trainer.status = RunStatus.STOPPED if reason is True else RunStatus(reason) if reason else metrics["status"]
            metrics["status"] = trainer.status
    return trainer.result()


# ---- command line -----------------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m iic.train", description="Train one IIC model (no Ray, no MLflow).")
    parser.add_argument(
        "--config", help="YAML config file (fields of iic.config.IICConfig); defaults apply to missing fields"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one field, e.g. --set lr=0.001 (repeatable)",
    )
    parser.add_argument("--dataset", help="shortcut for --set dataset=NAME")
    parser.add_argument("--epochs", type=int, help="shortcut for --set epochs=N")
    parser.add_argument("--seed", type=int, help="shortcut for --set seed=S")
    parser.add_argument("--out", default="runs/train", help="output directory (default: runs/train)")
    parser.add_argument("--resume", action="store_true", help=f"continue from OUT/{CHECKPOINT_FILE}")
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        metavar="SEED",
        help="train on several seeds at once (one stacked model); metrics.json gives their mean, min, sd and each seed's",
    )
    parser.add_argument(
        "--supervised",
        action="store_true",
        help="train the config's backbone with a linear classifier on the labels instead (the supervised ceiling, "
        "iic.supervised): accuracy on a held-out split, to read IIC's against",
    )
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> tuple[IICConfig, Path | None]:
    """The validated config the command line asks for, and the checkpoint to resume from (None
    without --resume). Raises ConfigError/DatasetError before anything is trained or written."""
    config = IICConfig.from_yaml(args.config) if args.config else IICConfig()
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
    seed's (``seed_<s>``) and, for several seeds, their consensus (``consensus``)."""
    columns = {"image": np.arange(len(result.clusters)), "cluster": result.clusters}
    if len(result.seeds) > 1:
        columns |= {f"seed_{run.seed}": run.clusters for run in result.seeds}
        if result.consensus_clusters is not None:
            columns["consensus"] = result.consensus_clusters
    lines = [",".join(columns)] + [",".join(map(str, row)) for row in zip(*columns.values())]
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
    args = _parse_args(argv)
    if args.supervised:
        from iic.supervised import main as supervised_main  # imported here: iic.supervised builds on this module

        return supervised_main(args)
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
        shown[1:1] = ["cluster_accuracy_min", "cluster_accuracy_sd", LABEL_FREE_PICK, CONSENSUS_ACCURACY]
    print(json.dumps({k: summary[k] for k in shown if k in summary}))
    return 0


def finite(values: dict) -> dict:
    """JSON has no NaN: write null instead."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()}


if __name__ == "__main__":
    sys.exit(main())
