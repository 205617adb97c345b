"""Batched, per-sample random augmentation on the training device.

IIC learns what its augmentations leave unchanged, so their strengths are the method's most
important hyperparameters: every one is a typed constructor argument, which is exactly what a search
proposes. Every image of a batch gets its own random draw, but the whole batch is transformed with
a handful of tensor operations: crop, rotation and flips are fused into one affine warp
(``affine_grid`` + ``grid_sample``), and colour jitter is a few broadcast multiplications. On a 2-core
CPU this is far cheaper than per-op library transforms (kornia's ColorJitter took ~0.8 s per batch of
512 16x16 images there), so augmentation stays a small share of a training step.
"""

import math

import torch
from torch.nn import functional as F

from iic.colour import LUMA, to_grey

# The RGB -> YIQ matrix used for hue rotation; its Y row is the luma.
_RGB_TO_YIQ = (LUMA, (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))


class BatchAugment:
    """Random resized crop, rotation, flips and colour jitter, drawn independently per image.

    Each strength of 0 switches that transform off (``crop_min_scale`` is the one exception: it is
    the smallest crop area as a fraction of the image, as in torchvision's ``RandomResizedCrop``, so
    1.0 is off). Crops are square, placed uniformly inside the image and resized back to the input
    size; rotation is uniform in ``±rotation_degrees``; corners uncovered by rotation become 0.

    Args:
        crop_min_scale: smallest crop area / image area, in (0, 1]; 1.0 = no cropping.
        hflip_prob: probability of a horizontal flip.
        vflip_prob: probability of a vertical flip.
        rotation_degrees: maximum absolute rotation angle in degrees.
        brightness: brightness factor drawn from [1 - brightness, 1 + brightness].
        contrast: contrast factor drawn from [1 - contrast, 1 + contrast].
        saturation: saturation factor drawn from [1 - saturation, 1 + saturation] (RGB only).
        hue: hue shift drawn from [-hue, hue] turns of the colour wheel, at most 0.5 (RGB only).

    Example:
        >>> augment = BatchAugment(crop_min_scale=0.5, rotation_degrees=25, brightness=0.4)
        >>> generator = torch.Generator().manual_seed(0)
        >>> twins = augment(images, generator)   # images: (N, C, H, W) floats in [0, 1]
    """

    def __init__(
        self,
        crop_min_scale: float = 1.0,
        hflip_prob: float = 0.0,
        vflip_prob: float = 0.0,
        rotation_degrees: float = 0.0,
        brightness: float = 0.0,
        contrast: float = 0.0,
        saturation: float = 0.0,
        hue: float = 0.0,
    ):
        self.crop_min_scale = crop_min_scale
        self.hflip_prob = hflip_prob
        self.vflip_prob = vflip_prob
        self.rotation_degrees = rotation_degrees
        self.brightness = brightness
        self.contrast = contrast
        self.saturation = saturation
        self.hue = hue

    @property
    def warps(self) -> bool:
        return self.crop_min_scale < 1.0 or self.hflip_prob > 0 or self.vflip_prob > 0 or self.rotation_degrees > 0

    @property
    def jitters(self) -> bool:
        return self.brightness > 0 or self.contrast > 0 or self.saturation > 0 or self.hue > 0

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment a (N, C, H, W) float batch in [0, 1]; random draws come from ``generator``,
        which must live on the images' device (this is what makes runs reproducible)."""
        if self.warps:
            images = self._warp(images, generator)
        if self.jitters:
            images = self._jitter(images, generator)
        return images

    def _uniform(self, n: int, low: float, high: float, like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=generator, device=like.device, dtype=like.dtype)

    def _warp(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n = images.shape[0]
        # Output pixel u samples the input at A u + t (normalised coordinates in [-1, 1]).
        side = self._uniform(n, self.crop_min_scale, 1.0, images, generator).sqrt()
        shift_x = self._uniform(n, -1.0, 1.0, images, generator) * (1 - side)
        shift_y = self._uniform(n, -1.0, 1.0, images, generator) * (1 - side)
        angle = self._uniform(n, -1.0, 1.0, images, generator) * math.radians(self.rotation_degrees)
        flip_x = 1 - 2 * (self._uniform(n, 0.0, 1.0, images, generator) < self.hflip_prob).to(images.dtype)
        flip_y = 1 - 2 * (self._uniform(n, 0.0, 1.0, images, generator) < self.vflip_prob).to(images.dtype)
        cos, sin = angle.cos(), angle.sin()
        theta = torch.stack(
            [
                torch.stack([cos * side * flip_x, -sin * side * flip_y, shift_x], dim=1),
                torch.stack([sin * side * flip_x, cos * side * flip_y, shift_y], dim=1),
            ],
            dim=1,
        )
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def _jitter(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, channels = images.shape[:2]

        def factor(strength: float) -> torch.Tensor:
            return self._uniform(n, max(0.0, 1 - strength), 1 + strength, images, generator).view(n, 1, 1, 1)

        if self.brightness > 0:
            images = (images * factor(self.brightness)).clamp(0, 1)
        if self.contrast > 0:
            mean = to_grey(images).mean(dim=(1, 2, 3), keepdim=True)
            images = ((images - mean) * factor(self.contrast) + mean).clamp(0, 1)
        if channels == 3 and self.saturation > 0:
            grey = to_grey(images)
            images = ((images - grey) * factor(self.saturation) + grey).clamp(0, 1)
        if channels == 3 and self.hue > 0:
            images = _rotate_hue(images, self._uniform(n, -self.hue, self.hue, images, generator))
        return images


def _rotate_hue(images: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Shift hue by rotating the chroma (I, Q) plane of YIQ: one 3x3 matrix per image."""
    to_yiq = torch.tensor(_RGB_TO_YIQ, device=images.device, dtype=images.dtype)
    angle = turns * 2 * math.pi
    cos, sin = angle.cos(), angle.sin()
    one, zero = torch.ones_like(cos), torch.zeros_like(cos)
    rotation = torch.stack(
        [torch.stack([one, zero, zero], 1), torch.stack([zero, cos, -sin], 1), torch.stack([zero, sin, cos], 1)], 1
    )
    matrix = torch.linalg.inv(to_yiq) @ rotation @ to_yiq  # (N, 3, 3)
    return torch.einsum("nij,njhw->nihw", matrix, images).clamp(0, 1)
