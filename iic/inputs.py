"""What goes into a model, for the IIC and the supervised trainer alike: the device, the seeds of
the random streams, and images as floats, augmented and transformed, in batches."""

import random

import numpy as np
import torch

from iic.augment import AugmentDraw, BatchAugment
from iic.config import ConfigError, IICConfig
from iic.data import ImageData, load_dataset
from iic.models import build_backbone
from iic.pretrained import PRETRAINED_CHANNELS, ImageNetInput, PretrainedInput
from iic.sobel import Sobel
from iic.timm_backbones import is_timm_backbone, normalisation

# Offsets that give a seed's augmentation and held-out-view streams their own seeds (shuffling uses the seed itself).
AUGMENT_SEED_OFFSET = 1
HELD_OUT_SEED_OFFSET = 2


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


def load_config_data(config: IICConfig) -> ImageData:
    """The config's images and labels, decoded once (or read from the decode cache)."""
    return load_dataset(
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


def input_transform(config: IICConfig) -> torch.nn.Module | None:
    """What images go through before the backbone: Sobel, the pretrained weights' normalisation, or nothing."""
    if config.sobel:
        return Sobel()
    if is_timm_backbone(config.backbone):  # RGB as its pretrained config says, whatever the weights
        return PretrainedInput(*normalisation(config.backbone))
    return ImageNetInput(config.backbone) if config.backbone_weights else None


def new_backbone(config: IICConfig, channels: int, lazy: bool = False) -> torch.nn.Module:
    """The config's backbone for images of ``channels`` channels (as ``input_transform`` leaves
    them), freshly initialised from torch's global generator (or loaded with its weights).
    ``lazy``: a timm backbone is built the first time it runs."""
    if config.sobel:
        in_channels = Sobel.OUTPUT_CHANNELS
    else:
        pretrained_input = config.backbone_weights or is_timm_backbone(config.backbone)
        in_channels = PRETRAINED_CHANNELS if pretrained_input else channels
    return build_backbone(
        config.backbone, in_channels, config.input_size, config.backbone_width, config.backbone_weights, lazy
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
    return list(zip(starts, starts[1:] + [count], strict=True))
