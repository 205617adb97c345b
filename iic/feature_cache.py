"""Fixed views of every image, and a frozen backbone's features of them computed once.

A frozen backbone gives an image the same features every time it sees it, so when the twins an
image is paired with are drawn from a fixed set of augmented views instead of a fresh augmentation
at every step, every feature a run needs can be computed once: the image itself (view 0),
``feature_views`` augmented views (1..V) and one held-out view (V + 1) that the label-free score
reads. The views are drawn with the epoch-1 augmentation strengths from ``feature_view_seed``, on
the CPU, so that they are the same on every machine. A trial then trains its heads on those
tensors alone: no image goes through the backbone while it trains, and a timm backbone is built
only to compute features not cached yet (``TimmBackbone``'s ``lazy``).

The features are stored with the decode cache (``iic.cache``: one ``.npz`` per key, a file lock
while one process builds it, written under a temporary name and renamed into place), keyed by
what changes them: a digest of the decoded images, the backbone and its weights file (path, size,
mtime), the input size, the views, their seed and the augmentation strengths. Every trial of a
search, and later searches, read the same file.

With ``cache_view_features: false`` a run computes the same views' features with the backbone at
every step instead: the same numbers up to rounding, at the backbone's cost (for checking the
cache and timing it).
"""

import hashlib
import logging
from pathlib import Path

import numpy as np
import torch

from iic.augment import AugmentDraw, BatchAugment
from iic.cache import cached_arrays
from iic.pretrained import IMAGENET, cache_file
from iic.timm_backbones import PRETRAINED, fetch_hub_weights

FEATURE_CACHE_VERSION = 1  # bump when the same key would give other features
log = logging.getLogger(__name__)


def draw_views(config, count: int, channels: int) -> AugmentDraw:
    """The augmentation draws of views 1..V and the held-out view V + 1 of ``count`` images of
    ``channels`` channels, stacked: index [view - 1, image]."""
    augment = BatchAugment(**config.augment_kwargs(1))
    generator = torch.Generator().manual_seed(config.feature_view_seed)
    return AugmentDraw.stack([augment.sample(count, channels, generator) for _ in range(config.feature_views + 1)])


def weights_identity(config) -> dict:
    """The backbone's weights file as the key names it: resolved path, size and mtime."""
    if config.backbone_weights == PRETRAINED:
        path = fetch_hub_weights(config.backbone)
    elif config.backbone_weights == IMAGENET:
        path = cache_file(config.backbone)
    else:
        path = Path(config.backbone_weights)
    stat = path.stat()
    return {"file": str(path.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


class FixedViews:
    """The fixed views of a trainer's images (``trainer.images`` on its device) and their features
    from its frozen backbone: from a table computed once (and cached), or computed at each call.

    ``of_images(indices)`` gives view 0's features, ``of_views(indices, views)`` those of the
    views 1..V (same shapes), ``held_out(indices)`` those of the held-out view; each is
    ``indices.shape + (F,)``."""

    def __init__(self, trainer, cached: bool):
        self.trainer = trainer
        self.views = trainer.config.feature_views
        self.draws = draw_views(trainer.config, len(trainer.images), trainer.data.channels).to(trainer.device)
        self.table = None
        if cached:
            self.table = self._cached_table()  # (V + 2, N, F)

    def of_images(self, indices: torch.Tensor) -> torch.Tensor:
        if self.table is not None:
            return self.table[0][indices]
        return self._compute(indices.flatten(), None).unflatten(0, indices.shape)

    def of_views(self, indices: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        if self.table is not None:
            return self.table[views, indices]
        draw = self.draws[(views.flatten() - 1, indices.flatten())]
        return self._compute(indices.flatten(), draw).unflatten(0, indices.shape)

    def held_out(self, indices: torch.Tensor) -> torch.Tensor:
        return self.of_views(indices, torch.full_like(indices, self.views + 1))

    def draw_twin_views(self, count: int, generators: list[torch.Generator]) -> torch.Tensor:
        """A view in 1..V for each of ``count`` twins of each model, from its generator: (S, count)."""
        device = self.trainer.device
        return torch.stack([torch.randint(1, self.views + 1, (count,), generator=g, device=device) for g in generators])

    @torch.no_grad()
    def _compute(self, indices: torch.Tensor, draw: AugmentDraw | None) -> torch.Tensor:
        """The frozen backbone's features (n, F) of the images ``indices``, augmented with ``draw``."""
        trainer = self.trainer
        chunks = []
        for start in range(0, len(indices), trainer.config.eval_batch_size):
            part = slice(start, start + trainer.config.eval_batch_size)
            images = trainer.prepare(trainer.images[indices[part]], None if draw is None else [draw[part]])
            with torch.autocast(trainer.device.type, dtype=torch.bfloat16, enabled=trainer.amp):
                chunks.append(trainer.model.features(images.unsqueeze(0))[0].float())
        return torch.cat(chunks)

    def _table(self) -> np.ndarray:
        everyone = torch.arange(len(self.trainer.images), device=self.trainer.device)
        log.warning(f"computing the frozen backbone's features of {len(everyone)} images x {self.views + 2} views once")
        rows = [self.of_images(everyone)] + [
            self.of_views(everyone, torch.full_like(everyone, view)) for view in range(1, self.views + 2)
        ]
        return torch.stack(rows).cpu().numpy()

    def _cached_table(self) -> torch.Tensor:
        config, trainer = self.trainer.config, self.trainer
        images = np.ascontiguousarray(trainer.data.images.numpy())
        key = {
            "kind": "frozen_features",
            "version": FEATURE_CACHE_VERSION,
            "images": hashlib.sha256(memoryview(images)).hexdigest(),
            "images_shape": list(images.shape),
            "backbone": config.backbone,
            "weights": weights_identity(config),
            "input_size": config.input_size,
            "views": self.views,
            "view_seed": config.feature_view_seed,
            "augment": config.augment_kwargs(1),
            "bfloat16": trainer.amp,
        }
        shape = (self.views + 2, len(images))

        def check(arrays: dict) -> None:
            if arrays["features"].shape[:2] != shape or arrays["features"].dtype != np.float32:
                raise ValueError(f"features of shape {arrays['features'].shape}, not {shape} + (F,) float32")

        label = f"features-{config.dataset}-{config.backbone.replace('/', '_')}-{config.input_size}px-{self.views}views"
        arrays = cached_arrays(label, key, lambda: {"features": self._table()}, check)
        return torch.from_numpy(arrays["features"]).to(trainer.device)
