"""ImageNet weights for the ResNet backbones: which ones, where torch keeps them, and the input
they expect.

``backbone_weights: imagenet`` loads torchvision's ImageNet weights through its weights API. They
are downloaded once into torch's cache (``torch.hub.get_dir()/checkpoints``, under ``$TORCH_HOME``
when set), where a machine without network finds a copied file just the same. A state-dict file
(``backbone_weights: /path/to/state_dict.pt``) stands for the same weights saved beforehand. Either
way the backbone reads what ImageNet training gave it: three channels (grey images repeated),
normalised with the weights' mean and std; Sobel's two gradient channels do not fit.

``python -m iic.pretrained`` fetches every backbone's weights into the caches, torch's for the
ResNets and Hugging Face's for the timm backbones (``iic.timm_backbones``; the cluster's setup runs
it), and prints where they are.
"""

import sys
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

IMAGENET = "imagenet"  # the backbone_weights value that asks for these weights
# torchvision's names of the weights. ResNet18 has one set; for ResNet50 torchvision's newer recipe
# (80.9% top-1 against V1's 76.1%).
IMAGENET_WEIGHTS = {"resnet18": "ResNet18_Weights.IMAGENET1K_V1", "resnet50": "ResNet50_Weights.IMAGENET1K_V2"}
PRETRAINED_CHANNELS = 3  # what the weights' first layer reads: RGB


class WeightsError(ValueError):
    """Pretrained weights that cannot be had or do not fit; the message says how to fix it."""


def imagenet_weights(backbone: str):
    """torchvision's ``WeightsEnum`` member for the backbone's ImageNet weights (URL, transforms)."""
    # Imported here: torchvision takes ~1.5 s to import (it loads torch's compiler), which every
    # trial process would pay, and only the ResNet backbones need it.
    from torchvision.models import get_weight

    return get_weight(IMAGENET_WEIGHTS[backbone])


def cache_file(backbone: str) -> Path:
    """Where torch keeps (and first looks for) the backbone's ImageNet weights: the cache folder
    and file name that ``torch.hub.load_state_dict_from_url`` give the weights' URL."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(imagenet_weights(backbone).url).path).name


def fetch_imagenet_weights(backbone: str) -> Path:
    """The cached file of the backbone's ImageNet weights, downloaded (hash-checked) if missing.
    Raises WeightsError naming the file to pre-fill and the local-file alternative when it is
    missing and cannot be downloaded."""
    path = cache_file(backbone)
    if not path.is_file():
        weights = imagenet_weights(backbone)
        try:
            weights.get_state_dict(progress=False, check_hash=True)
        except OSError as err:  # urllib's URLError: no network, no DNS, refused
            reason = getattr(err, "reason", err)
            raise WeightsError(
                f"{backbone}'s ImageNet weights ({weights}) are not in "
                f"torch's cache and could not be downloaded ({reason}). "
                f"Without network, copy {weights.url} (downloaded on a machine "
                "that is online, or by `python -m iic.pretrained` there) "
                f"to {path} (torch's cache: $TORCH_HOME/hub/checkpoints/{path.name}), or give a local file: "
                f"backbone_weights: /path/to/state_dict.pt"
            ) from None
    return path


def weights_file(backbone: str, weights: str) -> Path:
    """The file that ``backbone_weights`` names: torchvision's cached ImageNet file for ``imagenet``
    (fetched if missing), else the path itself."""
    return fetch_imagenet_weights(backbone) if weights == IMAGENET else Path(weights)


class PretrainedInput(nn.Module):
    """(N, 1 or 3, H, W) images in [0, 1] -> (N, 3, H, W) as pretrained weights were trained on
    them: grey repeated to three channels, then normalised with the weights' ``mean`` and ``std``."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        rgb = images.expand(-1, PRETRAINED_CHANNELS, -1, -1)  # a view for grey, unchanged for RGB
        return (rgb - self.mean.to(images.dtype)) / self.std.to(images.dtype)


class ImageNetInput(PretrainedInput):
    """The input of a ResNet's ImageNet weights (torchvision's mean and std).

    Example:
        >>> ImageNetInput("resnet18")(torch.rand(8, 1, 64, 64)).shape
        torch.Size([8, 3, 64, 64])
    """

    def __init__(self, backbone: str):
        transforms = imagenet_weights(backbone).transforms()
        super().__init__(transforms.mean, transforms.std)


def main() -> int:
    """Fetch every backbone's pretrained weights into its cache; print their files."""
    from iic.timm_backbones import TIMM_BACKBONES, fetch_hub_weights

    fetchers = {
        **dict.fromkeys(IMAGENET_WEIGHTS, fetch_imagenet_weights),
        **dict.fromkeys(TIMM_BACKBONES, fetch_hub_weights),
    }
    failed = 0
    for backbone, fetch in fetchers.items():
        try:
            print(f"{backbone}: {fetch(backbone)}")
        except WeightsError as err:
            print(f"{backbone}: {err}", file=sys.stderr)
            failed = 1
    return failed


if __name__ == "__main__":
    sys.exit(main())
