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
from dataclasses import dataclass, fields

import torch
from torch.nn import functional as F

from iic.colour import LUMA, to_grey

# The RGB -> YIQ matrix used for hue rotation; its Y row is the luma.
_RGB_TO_YIQ = (LUMA, (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))


class BatchAugment:
    """Random resized crop, rotation, shear, flips and colour jitter, drawn independently per image.

    Each strength of 0 switches that transform off (``crop_min_scale`` is the one exception: it is
    the smallest crop area as a fraction of the image, as in torchvision's ``RandomResizedCrop``, so
    1.0 is off). Crops are square, placed uniformly inside the image and resized back to the input
    size; rotation is uniform in ``±rotation_degrees``, and so is the horizontal shear in
    ``±shear_degrees`` (the slant of handwriting); corners the warp uncovers become 0.

    Args:
        crop_min_scale: smallest crop area / image area, in (0, 1]; 1.0 = no cropping.
        hflip_prob: probability of a horizontal flip.
        vflip_prob: probability of a vertical flip.
        rotation_degrees: maximum absolute rotation angle in degrees.
        shear_degrees: maximum absolute horizontal shear angle in degrees, below 90.
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
        shear_degrees: float = 0.0,
        brightness: float = 0.0,
        contrast: float = 0.0,
        saturation: float = 0.0,
        hue: float = 0.0,
    ):
        self.crop_min_scale = crop_min_scale
        self.hflip_prob = hflip_prob
        self.vflip_prob = vflip_prob
        self.rotation_degrees = rotation_degrees
        self.shear_degrees = shear_degrees
        self.brightness = brightness
        self.contrast = contrast
        self.saturation = saturation
        self.hue = hue

    @property
    def warps(self) -> bool:
        return (
            self.crop_min_scale < 1.0
            or self.hflip_prob > 0
            or self.vflip_prob > 0
            or self.rotation_degrees > 0
            or self.shear_degrees > 0
        )

    @property
    def jitters(self) -> bool:
        return self.brightness > 0 or self.contrast > 0 or self.saturation > 0 or self.hue > 0

    @property
    def is_identity(self) -> bool:
        """Every transform off: a view is its image."""
        return not (self.warps or self.jitters)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment a (N, C, H, W) float batch in [0, 1]; random draws come from ``generator``,
        which must live on the images' device (this is what makes runs reproducible)."""
        return self.apply(images, self.sample(len(images), images.shape[1], generator, images.device))

    def sample(
        self, n: int, channels: int, generator: torch.Generator, device: torch.device | str = "cpu"
    ) -> "AugmentDraw":
        """The random draw for ``n`` images, apart from applying it: several runs can draw from
        their own generators and have their images augmented in one call (``AugmentDraw.cat``)."""

        def uniform(low: float, high: float) -> torch.Tensor:
            return low + (high - low) * torch.rand(n, generator=generator, device=device)

        draw = AugmentDraw()
        if self.warps:
            draw.side = uniform(self.crop_min_scale, 1.0).sqrt()
            draw.shift_x = uniform(-1.0, 1.0) * (1 - draw.side)
            draw.shift_y = uniform(-1.0, 1.0) * (1 - draw.side)
            draw.angle = uniform(-1.0, 1.0) * math.radians(self.rotation_degrees)
            draw.flip_x = 1 - 2 * (uniform(0.0, 1.0) < self.hflip_prob).float()
            draw.flip_y = 1 - 2 * (uniform(0.0, 1.0) < self.vflip_prob).float()
            if self.shear_degrees > 0:  # drawn last, so that without shear every other draw is as before
                draw.shear = uniform(-1.0, 1.0) * math.radians(self.shear_degrees)
        if self.brightness > 0:
            draw.brightness = uniform(max(0.0, 1 - self.brightness), 1 + self.brightness)
        if self.contrast > 0:
            draw.contrast = uniform(max(0.0, 1 - self.contrast), 1 + self.contrast)
        if channels == 3 and self.saturation > 0:
            draw.saturation = uniform(max(0.0, 1 - self.saturation), 1 + self.saturation)
        if channels == 3 and self.hue > 0:
            draw.hue = uniform(-self.hue, self.hue)
        return draw

    def apply(self, images: torch.Tensor, draw: "AugmentDraw") -> torch.Tensor:
        """Augment a (N, C, H, W) float batch in [0, 1] with a draw made for N images."""
        if draw.side is not None:
            images = _warp(images, draw)
        return _jitter(images, draw)


@dataclass
class AugmentDraw:
    """One augmentation draw: a value per image for each transform that is on (None when off)."""

    side: torch.Tensor | None = None  # crop side as a fraction of the image side
    shift_x: torch.Tensor | None = None
    shift_y: torch.Tensor | None = None
    angle: torch.Tensor | None = None  # radians
    flip_x: torch.Tensor | None = None  # -1 flips, 1 keeps
    flip_y: torch.Tensor | None = None
    shear: torch.Tensor | None = None  # radians; None without shear
    brightness: torch.Tensor | None = None  # factors
    contrast: torch.Tensor | None = None
    saturation: torch.Tensor | None = None
    hue: torch.Tensor | None = None  # turns of the colour wheel

    def _map(self, function) -> "AugmentDraw":
        return AugmentDraw(
            **{f.name: None if getattr(self, f.name) is None else function(f.name) for f in fields(self)}
        )

    def __getitem__(self, index: slice) -> "AugmentDraw":
        return self._map(lambda name: getattr(self, name)[index])

    @staticmethod
    def cat(draws: list["AugmentDraw"]) -> "AugmentDraw":
        """Draws for consecutive blocks of images as one draw (the same transforms must be on)."""
        return draws[0]._map(lambda name: torch.cat([getattr(draw, name) for draw in draws]))

    @staticmethod
    def stack(draws: list["AugmentDraw"]) -> "AugmentDraw":
        """Draws of the same images as one, indexed [draw, image] (the same transforms must be on)."""
        return draws[0]._map(lambda name: torch.stack([getattr(draw, name) for draw in draws]))

    def to(self, device: torch.device | str) -> "AugmentDraw":
        return self._map(lambda name: getattr(self, name).to(device))


def _warp(images: torch.Tensor, draw: AugmentDraw) -> torch.Tensor:
    """Crop, rotation, shear and flips as one affine warp: output pixel u samples the input at
    A u + t (normalised coordinates in [-1, 1]), with A = rotation @ shear @ diag(side * flips)."""
    side, flip_x, flip_y = draw.side, draw.flip_x, draw.flip_y
    cos, sin = draw.angle.cos(), draw.angle.sin()
    # The second column of rotation @ [[1, tan], [0, 1]]; without shear, tan = 0 leaves it -sin, cos.
    slant = draw.shear.tan() if draw.shear is not None else torch.zeros_like(cos)
    theta = torch.stack(
        [
            torch.stack([cos * side * flip_x, (cos * slant - sin) * side * flip_y, draw.shift_x], dim=1),
            torch.stack([sin * side * flip_x, (sin * slant + cos) * side * flip_y, draw.shift_y], dim=1),
        ],
        dim=1,
    ).to(images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _jitter(images: torch.Tensor, draw: AugmentDraw) -> torch.Tensor:
    def factor(values: torch.Tensor) -> torch.Tensor:
        return values.to(images.dtype).view(-1, 1, 1, 1)

    if draw.brightness is not None:
        images = (images * factor(draw.brightness)).clamp(0, 1)
    if draw.contrast is not None:
        mean = to_grey(images).mean(dim=(1, 2, 3), keepdim=True)
        images = ((images - mean) * factor(draw.contrast) + mean).clamp(0, 1)
    if draw.saturation is not None and images.shape[1] == 3:
        grey = to_grey(images)
        images = ((images - grey) * factor(draw.saturation) + grey).clamp(0, 1)
    if draw.hue is not None and images.shape[1] == 3:
        images = _rotate_hue(images, draw.hue.to(images.dtype))
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
