"""Pretrained vision transformers through timm: DINOv2, CLIP and SigLIP image towers, or any timm model.

``backbone`` names one of ``TIMM_BACKBONES`` (``dinov2_vits14``, ...) or any timm model as its
Hugging Face hub id, ``timm/<model>.<tag>`` (``timm/vit_small_patch14_dinov2.lvd142m``).
``backbone_weights: pretrained`` loads the model's hub weights, downloaded once into the Hugging
Face cache (``$HF_HUB_CACHE``, by default ``~/.cache/huggingface/hub``), where a machine without
network finds a copied folder just the same; a local file (a state dict in timm's layout, saved with
``torch.save(model.state_dict(), path)`` or as ``.safetensors``) stands for weights saved beforehand.
Images are normalised with the mean and std of the model's pretrained config, and ``input_size``
must be a multiple of a vision transformer's patch size (its position embeddings are resampled to
the size by timm when loaded).

timm is the ``backbones`` extra (``pip install -e ".[backbones]"``): imported only when one of
these backbones is asked for.
"""

import functools
from pathlib import Path

import torch
from torch import nn

from iic.pretrained import WeightsError

PRETRAINED = "pretrained"  # the backbone_weights value that asks for the model's hub weights
HUB_PREFIX = "timm/"  # a backbone named by its hub id: timm/<model>.<tag>
# Short names of the backbones the clustering literature uses, as timm's hub ids.
TIMM_BACKBONES = {
    "dinov2_vits14": "timm/vit_small_patch14_dinov2.lvd142m",
    "dinov2_vitb14": "timm/vit_base_patch14_dinov2.lvd142m",
    "clip_vitb16": "timm/vit_base_patch16_clip_224.openai",
    "siglip_vitb16": "timm/vit_base_patch16_siglip_224.webli",
}
HUB_WEIGHTS_FILE = "model.safetensors"  # the file timm's hub repositories hold the weights in
INSTALL_HINT = 'pip install -e ".[backbones]" (timm)'


def is_timm_backbone(backbone: str) -> bool:
    return backbone in TIMM_BACKBONES or backbone.startswith(HUB_PREFIX)


def hub_id(backbone: str) -> str:
    """The backbone's hub id, ``timm/<model>.<tag>``."""
    return TIMM_BACKBONES.get(backbone, backbone)


def model_name(backbone: str) -> str:
    """timm's model name with its pretrained tag, ``<model>.<tag>``."""
    return hub_id(backbone).removeprefix(HUB_PREFIX)


def _timm():
    try:
        import timm
    except ImportError:
        raise WeightsError(f"the timm backbones need timm, which is not installed: {INSTALL_HINT}") from None
    return timm


def _create(backbone: str, input_size: int, **kwargs) -> nn.Module:
    """timm's model without its classifier, for square images of ``input_size`` where the
    architecture has a fixed size (vision transformers' position embeddings)."""
    timm = _timm()
    name = model_name(backbone)
    try:
        fixed_size = timm.models.get_pretrained_cfg(name, allow_unregistered=False).fixed_input_size
    except RuntimeError:
        raise WeightsError(
            f"{backbone}: timm has no pretrained model {name!r}; name one of {', '.join(TIMM_BACKBONES)} "
            "or timm/<model>.<tag> as timm.list_pretrained() lists them"
        ) from None
    size = {"img_size": input_size} if fixed_size else {}
    return timm.create_model(name, num_classes=0, **size, **kwargs)


@functools.cache
def _architecture(backbone: str, input_size: int) -> nn.Module:
    """The model on the meta device (no memory, no weights, no random number drawn), built once a process."""
    with torch.device("meta"):
        return _create(backbone, input_size)


def patch_size(backbone: str, input_size: int) -> int:
    """The size ``input_size`` must be a multiple of: a vision transformer's patch size, else 1."""
    embed = getattr(_architecture(backbone, input_size), "patch_embed", None)
    return max(embed.patch_size) if embed is not None else 1


def cache_folder(backbone: str) -> Path:
    """The Hugging Face cache folder of the backbone's hub weights."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE) / f"models--{hub_id(backbone).replace('/', '--')}"


def fetch_hub_weights(backbone: str) -> Path:
    """The cached file of the backbone's hub weights, downloaded if missing. Raises WeightsError
    naming the cache folder to pre-fill and the local-file alternative when it cannot be had."""
    _timm()
    import huggingface_hub
    from huggingface_hub import constants

    repository = hub_id(backbone)
    cached = huggingface_hub.try_to_load_from_cache(repository, HUB_WEIGHTS_FILE, cache_dir=constants.HF_HUB_CACHE)
    if isinstance(cached, str):
        return Path(cached)
    try:
        return Path(
            huggingface_hub.hf_hub_download(
                repository,
                HUB_WEIGHTS_FILE,
                cache_dir=constants.HF_HUB_CACHE,
                local_files_only=bool(constants.HF_HUB_OFFLINE),
            )
        )
    except (OSError, ValueError) as err:  # no network, offline mode, unknown repository
        reason = " ".join(str(err).split())[:200]
        raise WeightsError(
            f"{backbone}'s pretrained weights ({repository}) are not in the Hugging Face cache and could "
            f"not be downloaded ({reason}). Without network, copy the folder {cache_folder(backbone).name} "
            f"of a machine that has them (downloaded there by `python -m iic.pretrained`) into "
            f"{cache_folder(backbone).parent} (the Hugging Face cache, $HF_HUB_CACHE), or give a local file: "
            "backbone_weights: /path/to/state_dict.pt (timm's layout)"
        ) from None


def _load(backbone: str, input_size: int, weights_path: str | Path | None) -> nn.Module:
    """timm's model with the weights of ``weights_path`` (random without), every layer of it from the file."""
    overlay = {"pretrained_cfg_overlay": {"file": str(weights_path)}} if weights_path else {}
    try:
        net = _create(backbone, input_size, pretrained=weights_path is not None, **overlay)
        # timm loads loosely once the classifier is dropped: every layer of the model must be in the file.
        held = _timm().models.load_state_dict(str(weights_path)) if weights_path else {}
        lacking = sorted(set(net.state_dict()) - set(held)) if weights_path else []
    except (RuntimeError, KeyError, OSError) as err:  # a file that is no state dict, or of other shapes
        if not weights_path:
            raise
        lacking = [" ".join(str(err).split())[:300]]
    if lacking:
        shown = ", ".join(lacking[:3]) + (f" and {len(lacking) - 3} more" if len(lacking) > 3 else "")
        raise WeightsError(f"{weights_path} does not hold {model_name(backbone)}'s weights: it lacks {shown}")
    return net


class TimmBackbone(nn.Module):
    """A timm model's pooled features (its classifier removed) of (N, 3, H, W) normalised images.

    ``weights_path`` loads a state dict in timm's layout through timm's own loader, which resamples
    position embeddings to ``input_size`` and drops a classifier; any other layer the file lacks
    or holds in another shape is an error, so that a wrong file does not leave the backbone random.

    ``lazy``: the model is built frozen the first time it runs, on its input's device, without
    drawing from torch's random stream; until then ``net`` is None. A run that reads every feature
    from a cache (``iic.feature_cache``) never builds it."""

    def __init__(self, backbone: str, input_size: int, weights_path: str | Path | None = None, lazy: bool = False):
        super().__init__()
        self.out_features = _architecture(backbone, input_size).num_features
        self._build = functools.partial(_load, backbone, input_size, weights_path)
        self.net = None if lazy else self._build()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.net is None:
            with torch.random.fork_rng(devices=[]):
                net = self._build()
            self.net = net.requires_grad_(False).train(self.training).to(images.device)
        return self.net(images)


def normalisation(backbone: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean and std (per RGB channel) the backbone's pretrained weights were trained with."""
    config = _timm().models.get_pretrained_cfg(model_name(backbone))
    return tuple(config.mean), tuple(config.std)
