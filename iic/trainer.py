"""The trainer: one IIC run of one or more seeds, an epoch at a time, checkpointed and resumable.

``train(config, on_epoch=...)`` runs all the epochs and calls back after each one with that
epoch's metrics; the callback may save a checkpoint or stop the run.

The data is decoded once into a uint8 tensor that lives on the training device; each step slices a
batch from it, makes ``repeats`` augmented twins of every image on the device, and pushes the image
and its twins through the model in one forward pass. Runs are seeded: the same config and seed give
the same result on CPU, and a resumed run continues exactly where its checkpoint left it. With
``feature_views``, a frozen backbone's twins are fixed views whose features were computed once
(``iic.feature_cache``), and a step trains the heads on those tensors alone.

The augmentation strengths, lr and lamb in force are set at the start of every epoch from the
config's ``schedule``. A run resumed with other values of those fields (what population-based
training does when a trial takes over another's checkpoint) trains on with them and adds the change
to its config's schedule, so that the config a run ends with replays it from epoch 1.
"""

import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from iic.augment import AugmentDraw, BatchAugment
from iic.checkpoint import check_resumable, load_state, save_state
from iic.checks import CUDA_GRAPH_MODES
from iic.config import ConfigError, IICConfig
from iic.data import ImageData
from iic.evaluation import evaluate, run_scores
from iic.feature_cache import FixedViews
from iic.inputs import (
    AUGMENT_SEED_OFFSET,
    HELD_OUT_SEED_OFFSET,
    batch_bounds,
    compiled,
    input_transform,
    load_config_data,
    new_backbone,
    prepare_images,
    resolve_device,
    seed_everything,
)
from iic.loop import EpochCallback, mark_diverged, run_epochs
from iic.loss import IICLoss
from iic.metrics import confusion_matrix
from iic.models import IICModel, StackedIICModel
from iic.neighbours import nearest_neighbours, pair_candidates
from iic.pretrained import WeightsError
from iic.result import SeedRun, TrainResult
from iic.screening import groups_by_seed, initialisations, kept_after, picks
from iic.seeds import check_seeds, combine_seeds
from iic.status import RunStatus
from iic.timm_backbones import is_timm_backbone


class Trainer:
    """Holds the state of one run (data on the device, model, optimiser, random streams) so that it
    can be advanced an epoch at a time, checkpointed and restored.

    A run trains the config on one or more ``seeds`` at once (default: ``config.seed``): one model
    per seed, stacked into one (``StackedIICModel``), each with its own initialisation, shuffling,
    augmentation and held-out views drawn from its seed, so that seed s of a stacked run trains as a
    run of that seed alone would. The data (and its ``max_samples`` subset, drawn with
    ``config.seed``) is shared.

    With ``screen_inits`` > 1 each seed starts as that many models, its initialisations, and keeps
    one (``iic.screening``). ``seeds`` are the run's seeds; ``inits`` the initialisation of each
    model in the stack, and ``seed_of_model`` the seed each reports as."""

    def __init__(self, config: IICConfig, data: ImageData | None = None, seeds: Sequence[int] | None = None):
        self.config = config.validate(check_data=data is None)
        self.seeds = check_seeds(seeds if seeds is not None else [config.seed])
        groups = initialisations(self.seeds, config.screen_inits)
        self.inits = [init for group in groups for init in group]
        self.seed_of_model = [seed for seed, group in zip(self.seeds, groups, strict=True) for _ in group]
        self.device = resolve_device(config.device)
        seed_everything(config.seed)
        self.data = data if data is not None else load_config_data(config)
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
        self.apply_schedule(1)  # the augmentation, lr and lamb of epoch 1
        self.amp = config.amp and self.device.type == "cuda"
        # A frozen backbone shown the same images every epoch (no augmentation) gives the same
        # features: computed once, (N, F), and every step and evaluation slices them.
        self.cached_features = (
            self._all_features()
            if config.freeze_backbone and self.augment.is_identity and not config.schedule
            else None
        )
        # Twins drawn from fixed views whose features are computed once (iic.feature_cache).
        try:  # a lazy backbone is built here if they are not cached yet
            self.fixed_views = FixedViews(self, config.cache_view_features) if config.feature_views else None
        except WeightsError as err:
            raise ConfigError(f"backbone_weights: {err}") from None
        # Each image's twin sources: itself, then its nearest neighbours (N, 1 + twin_neighbours).
        self.twin_candidates = (
            pair_candidates(nearest_neighbours(self._neighbour_space(), config.twin_neighbours))
            if config.twin_neighbours
            else None
        )

        self.shuffle_generators = [torch.Generator().manual_seed(init) for init in self.inits]
        self.augment_generators = [
            torch.Generator(self.device).manual_seed(init + AUGMENT_SEED_OFFSET) for init in self.inits
        ]
        self.held_out_draws = self._draw_held_out_views()
        self.epoch = 0
        self.history: list[dict] = []  # combined over seeds, one record per epoch
        self.seed_histories: list[list[dict]] = [[] for _ in self.inits]  # one per model
        self.status = RunStatus.RUNNING
        self.last_clusters = [np.zeros(len(self.images), dtype=np.int64) for _ in self.inits]  # of the last evaluation

    def _build_model(self) -> None:
        """The stacked model of ``inits`` as they start, its training forward pass and optimiser. A
        timm backbone takes every weight from its file: one serves the stack, built before any seed is
        set (the heads start from their seeds alone), and lazy when its fixed views' features are cached."""
        config = self.config
        lazy = config.feature_views > 0 and config.cache_view_features
        try:
            shared = new_backbone(config, self.data.channels, lazy) if is_timm_backbone(config.backbone) else None
            models = [self._new_model(init, shared) for init in self.inits]
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
        model_state = {name: select(name, tensor, indices) for name, tensor in self._trained_state().items()}
        names = [name for name, parameter in self.model.named_parameters() if parameter.requires_grad]
        optimiser_state = self.optimiser.state_dict()
        optimiser_state["state"] = {
            i: {key: select(names[i], value, indices) for key, value in state.items()}
            for i, state in optimiser_state["state"].items()
        }
        for name in (
            "inits",
            "seed_of_model",
            "shuffle_generators",
            "augment_generators",
            "held_out_draws",
            "seed_histories",
            "last_clusters",
        ):
            setattr(self, name, [getattr(self, name)[i] for i in indices])
        self._build_model()
        self.model.load_state_dict({**self.model.state_dict(), **model_state})
        self.optimiser.load_state_dict(optimiser_state)

    def _current_picks(self) -> list[int]:
        """The model each seed reports, by its models' latest metrics."""
        latest = [history[-1] if history else {} for history in self.seed_histories]
        return picks(groups_by_seed(self.seed_of_model, self.seeds), latest)

    def _draw_held_out_views(self) -> list[AugmentDraw]:
        """Each seed's held-out view of every image, drawn once with the augmentation of epoch 1: the
        label-free score then depends neither on how the images are batched for evaluation nor on
        a schedule's later strengths."""
        augment = BatchAugment(**self.config.augment_kwargs(1))
        return [
            augment.sample(
                len(self.images),
                self.data.channels,
                torch.Generator(self.device).manual_seed(init + HELD_OUT_SEED_OFFSET),
                self.device,
            )
            for init in self.inits
        ]

    def apply_schedule(self, epoch: int) -> None:
        """Put the schedulable fields' values for ``epoch`` in force: the augmentation strengths,
        the optimiser's learning rate (its state, Adam's moments, stays) and the loss's lamb."""
        values = self.config.values_at(epoch)
        self.augment = BatchAugment(**self.config.augment_kwargs(epoch))
        for group in self.optimiser.param_groups:
            group["lr"] = values["lr"]
        self.criterion.lamb = values["lamb"]

    def _new_model(self, init: int, backbone: torch.nn.Module | None = None) -> IICModel:
        """The model a run of seed ``init`` alone starts from: ``backbone`` (by default its own,
        drawn from the seed) and heads drawn from the seed."""
        config = self.config
        torch.manual_seed(init)
        return IICModel(
            backbone if backbone is not None else new_backbone(config, self.data.channels),
            config.num_clusters,
            config.overcluster_k,
            config.num_subheads,
            config.head_depth,
            config.head_width,
        )

    # ---- one epoch ----------------------------------------------------------------------------

    def prepare(self, images_uint8: torch.Tensor, draws: list[AugmentDraw] | None) -> torch.Tensor:
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
            images = self.prepare(self.images[start : start + self.config.eval_batch_size], None)
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
        if self.fixed_views is not None:
            return self.fixed_views.of_images(torch.arange(len(self.images), device=self.device))
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
        twin_draws = [self.augment.sample(size * repeats, channels, g, self.device) for g in self.augment_generators]
        base = self.prepare(batches.flatten(0, 1), None)
        if twin_images is None:
            twin_images = batches.repeat(1, repeats, 1, 1, 1)
        twins = self.prepare(twin_images.flatten(0, 1), twin_draws)
        return base.unflatten(0, (count, size)), twins.unflatten(0, (count, size * repeats))

    def step(self, base: torch.Tensor, twins: torch.Tensor, head: str) -> torch.Tensor | None:
        """One optimiser step on ``head`` for every model: both views through the stack in one
        forward pass, the IIC loss per sub-head and model, each model's mean over its sub-heads
        minimised. Returns the (sub-heads, models) losses, or None if any is no longer finite (the
        step is then not taken)."""
        size = base.shape[1]
        # Views are images, or with cached features already the frozen backbone's features of them.
        features_given = self.cached_features is not None or self.fixed_views is not None
        classify = self.model.classify if features_given else self.training_forward
        if self.config.compile_mode in CUDA_GRAPH_MODES:  # a new step: the graphs' earlier outputs may be reused
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            probabilities = classify(torch.cat([base, twins], dim=1), head)
        repeats = twins.shape[1] // size
        losses = torch.stack([self.criterion(p[:, :size].repeat(1, repeats, 1), p[:, size:]) for p in probabilities])
        per_model = losses.mean(dim=0)
        if not torch.isfinite(per_model).all():
            return None
        self.optimiser.zero_grad(set_to_none=True)
        per_model.sum().backward()  # the models share no parameter: each gets its own loss's gradient
        self.optimiser.step()
        return losses.detach()

    def _pass(self, head: str) -> torch.Tensor | None:
        """One pass over the data (shuffled per model) training ``head``; returns the mean IIC loss
        per sub-head and model, or None if the loss stopped being finite."""
        config = self.config
        orders = torch.stack([torch.randperm(len(self.images), generator=g) for g in self.shuffle_generators]).to(
            self.device
        )
        bounds = batch_bounds(len(self.images), config.batch_size)
        loss_sums = torch.zeros(config.num_subheads, len(self.inits), device=self.device)
        for start, stop in bounds:
            batches = orders[:, start:stop]
            sources = self.twin_sources(batches)
            if self.cached_features is not None:  # no augmentation: twins are their sources' features
                losses = self.step(self.cached_features[batches], self.cached_features[sources], head)
            elif self.fixed_views is not None:  # twins are fixed views of their sources
                views = self.fixed_views.draw_twin_views(sources.shape[1], self.augment_generators)
                fixed = self.fixed_views
                losses = self.step(fixed.of_images(batches), fixed.of_views(sources, views), head)
            else:
                losses = self.step(*self.make_views(self.images[batches], self.images[sources]), head)
            if losses is None:
                return None
            loss_sums += losses
        return loss_sums / len(bounds)

    def run_epoch(self) -> dict:
        """Train one epoch (overclustering head, then main head) and evaluate; returns its metrics
        combined over the seeds (each seed's own go to ``seed_histories``)."""
        started = time.perf_counter()
        config = self.config
        self.apply_schedule(self.epoch + 1)
        heads = ["overcluster"] * (config.overcluster_passes if config.overcluster_k else 0) + ["main"]
        losses = {}
        for head in heads:
            mean_losses = self._pass(head)
            if mean_losses is None:
                return mark_diverged(self, time.perf_counter() - started)
            losses[head] = mean_losses
        self.epoch += 1
        per_model = evaluate(self, losses["main"])
        if "overcluster" in losses:
            for metrics, model_losses in zip(per_model, losses["overcluster"].t(), strict=True):
                metrics["loss_overcluster"] = float(model_losses.min())
        for history, metrics in zip(self.seed_histories, per_model, strict=True):
            history.append(metrics)
        groups = groups_by_seed(self.seed_of_model, self.seeds)
        reported_models = picks(groups, per_model)
        combined = combine_seeds([per_model[i] for i in reported_models])
        combined.update(run_scores(self, reported_models, combined))
        kept = kept_after(self.epoch, config.pick_epoch, groups, per_model)
        if kept is not None:
            self._keep_models(kept)
        metrics = {
            "epoch": self.epoch,
            "status": self.status,
            **combined,
            "epoch_seconds": time.perf_counter() - started,
        }
        self.history.append(metrics)
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
            metrics = history[-1] if history else {}
            runs.append(SeedRun(self.seed_of_model[i], metrics, list(history), clusters, confusion, self.inits[i]))
        latest = self.history[-1] if self.history else {}
        return TrainResult(self.status, latest, list(self.history), runs, self.data.class_names, self.config)

    # ---- checkpoints --------------------------------------------------------------------------

    def save_checkpoint(self, path: str | Path) -> Path:
        """Everything needed to continue exactly: weights, optimiser, epoch, random streams, history."""
        state = {
            "kind": "iic",
            "config": self.config.to_dict(),
            "seeds": self.seeds,
            "inits": self.inits,  # after screening, the initialisations kept
            "epoch": self.epoch,
            "status": str(self.status),
            "history": self.history,
            "seed_histories": self.seed_histories,
            "model": self._trained_state(),
            "optimiser": self.optimiser.state_dict(),
            "shuffle_generators": [g.get_state() for g in self.shuffle_generators],
            "augment_generators": [g.get_state() for g in self.augment_generators],
            "last_clusters": self.last_clusters,
        }
        return save_state(state, path)

    def _trained_state(self) -> dict[str, torch.Tensor]:
        """The model's state less a frozen backbone: that is the config's weights file, loaded again."""
        state, frozen = self.model.state_dict(), self.config.freeze_backbone
        return {name: value for name, value in state.items() if not (frozen and name.startswith("backbone."))}

    @staticmethod
    def saved_seeds(path: str | Path) -> list[int]:
        return load_state(path, "iic")["seeds"]

    def load_checkpoint(self, path: str | Path) -> None:
        state = load_state(path, "iic")
        other = [f"seeds ({state['seeds']} there, {self.seeds} here)"] if state["seeds"] != self.seeds else []
        check_resumable(path, state["config"], self.config, other, scheduled=True)
        # The epochs trained keep the values they had; new ones apply from the next epoch on.
        self.config = self.config.continuing(IICConfig.from_dict(state["config"]), state["epoch"])
        if state["inits"] != self.inits:  # saved after screening: only the initialisations kept go on
            self._keep_models([self.inits.index(init) for init in state["inits"]])
        self.held_out_draws = self._draw_held_out_views()
        # A frozen backbone is not saved (it is the pretrained weights): keep the one built here.
        self.model.load_state_dict({**self.model.state_dict(), **state["model"]})
        self.optimiser.load_state_dict(state["optimiser"])
        saved_streams = state["shuffle_generators"] + state["augment_generators"]
        for generator, saved_state in zip(
            self.shuffle_generators + self.augment_generators, saved_streams, strict=True
        ):
            generator.set_state(saved_state.cpu())
        self.epoch = state["epoch"]
        self.status = RunStatus(state["status"])
        self.history = state["history"]
        self.seed_histories = state["seed_histories"]
        self.last_clusters = state["last_clusters"]


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
