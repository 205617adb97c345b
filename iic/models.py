"""Backbones and clustering heads.

An IIC model is a backbone that maps images to a feature vector, followed by a main head with k
clusters and, optionally, an overclustering head with more clusters than classes (the paper's
"auxiliary overclustering", which helps the backbone find finer structure). Each head has several
independent sub-heads: they start from different random weights, converge to different clusterings,
and the one with the lowest training loss is the model's answer.

Backbones: ``clusternet`` (small, for 8-32 px), torchvision's ``resnet18`` and ``resnet50``,
which can start from ImageNet weights (``iic.pretrained``), and timm's pretrained vision
transformers (DINOv2, CLIP, SigLIP: ``iic.timm_backbones``). A sub-head is a linear layer, or an
MLP of ``head_depth`` hidden ReLU layers of ``head_width`` units before it.

``StackedIICModel`` trains several such models (one per seed) as one: their convolutions become
grouped convolutions over the models' channels side by side, so S seeds cost one launch per layer
rather than S, and each model's numbers stay its own. A frozen pretrained backbone is the same
for every seed: it is shared, and only the heads are stacked.
"""

import copy
import pickle
from pathlib import Path

import torch
from torch import nn

from iic.pretrained import PRETRAINED_CHANNELS, WeightsError, weights_file
from iic.timm_backbones import PRETRAINED, TIMM_BACKBONES, TimmBackbone, fetch_hub_weights, is_timm_backbone

# Below these sizes the backbone's downsampling leaves nothing to pool.
MIN_INPUT_SIZE = {"clusternet": 8, "resnet18": 32, "resnet50": 32}
# ResNet's ImageNet stem (7x7 stride-2 conv + max-pool) discards too much of CIFAR-sized images.
RESNET_SMALL_STEM_BELOW = 64


class ClusterNet(nn.Module):
    """A small VGG-style backbone for 8-32 px inputs: four 3x3 conv-BN-ReLU stages of width
    w, 2w, 4w, 8w with 2x2 max-pooling between them, then global average pooling."""

    def __init__(self, in_channels: int, width: int = 16):
        super().__init__()
        widths = [width, 2 * width, 4 * width, 8 * width]
        layers: list[nn.Module] = []
        for stage, out_channels in enumerate(widths):
            if stage > 0:
                layers.append(nn.MaxPool2d(2))
            layers += [
                nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
            ]
            in_channels = out_channels
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.out_features = widths[-1]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images)


class ResNet(nn.Module):
    """A torchvision ResNet trunk (``architecture``; its classifier removed), with its first conv
    adapted to the input channels and, for inputs under 64 px, a 3x3 stride-1 stem without max-pool.

    ``weights_path`` loads a state dict in torchvision's layout (ImageNet weights: see
    ``iic.pretrained``). The layers the adaptation changed (the stem) keep their random
    initialisation; any other layer the file lacks, or holds in another shape, is an error, so that
    a wrong file does not leave the backbone silently random."""

    architecture: str  # torchvision's model name

    def __init__(self, in_channels: int, input_size: int, weights_path: str | Path | None = None):
        super().__init__()
        import torchvision  # imported here, as in iic.pretrained: ~1.5 s that only the ResNets need

        net = torchvision.models.get_model(self.architecture, weights=None)
        if input_size < RESNET_SMALL_STEM_BELOW:
            net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        elif in_channels != PRETRAINED_CHANNELS:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.out_features = net.fc.in_features
        net.fc = nn.Identity()
        if weights_path:
            stem_adapted = input_size < RESNET_SMALL_STEM_BELOW or in_channels != PRETRAINED_CHANNELS
            _load_matching(net, self.architecture, weights_path, adapted={"conv1.weight"} if stem_adapted else set())
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


class ResNet18(ResNet):
    architecture = "resnet18"  # 512 features


class ResNet50(ResNet):
    architecture = "resnet50"  # 2048 features


def _load_matching(net: nn.Module, architecture: str, path: str | Path, adapted: set[str]) -> None:
    own = net.state_dict()
    try:
        loaded = torch.load(Path(path), map_location="cpu", weights_only=True)
    except (OSError, EOFError, RuntimeError, pickle.UnpicklingError) as err:
        raise WeightsError(
            f"{path} cannot be read as a state dict ({err}); save one with torch.save(model.state_dict(), path)"
        ) from None
    if not isinstance(loaded, dict):
        raise WeightsError(
            f"{path} holds a {type(loaded).__name__}, not a state "
            "dict; save one with torch.save(model.state_dict(), path)"
        )
    # Files saved before batch norm counted its batches lack num_batches_tracked; it is bookkeeping only.
    lacking = [
        name
        for name, value in own.items()
        if name not in adapted
        and not name.endswith("num_batches_tracked")
        and (name not in loaded or loaded[name].shape != value.shape)
    ]
    if lacking:
        shown = ", ".join(lacking[:3]) + (f" and {len(lacking) - 3} more" if len(lacking) > 3 else "")
        raise WeightsError(
            f"{path} is not a {architecture} state dict in torchvision's "
            f"layout: it lacks {shown} (or holds them in other shapes)"
        )
    own.update({name: value for name, value in loaded.items() if name in own and name not in adapted})
    net.load_state_dict(own)


def _subhead(in_features: int, num_clusters: int, depth: int, width: int) -> nn.Module:
    """A linear classifier, after ``depth`` hidden Linear + ReLU layers of ``width`` units."""
    if depth == 0:
        return nn.Linear(in_features, num_clusters)
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(in_features, width), nn.ReLU()]
        in_features = width
    return nn.Sequential(*layers, nn.Linear(width, num_clusters))


class ClusterHead(nn.Module):
    """``num_subheads`` independent classifiers (linear, or MLPs of ``depth`` hidden layers of
    ``width``) + softmax onto ``num_clusters`` clusters. Returns one (N, num_clusters) probability
    tensor per sub-head, in float32."""

    def __init__(self, in_features: int, num_clusters: int, num_subheads: int, depth: int = 0, width: int = 0):
        super().__init__()
        self.subheads = nn.ModuleList(_subhead(in_features, num_clusters, depth, width) for _ in range(num_subheads))

    def forward(self, features: torch.Tensor) -> list[torch.Tensor]:
        return [subhead(features).float().softmax(dim=1) for subhead in self.subheads]


class IICModel(nn.Module):
    """Backbone + main head (+ optional overclustering head). ``model(x, head="overcluster")``."""

    def __init__(
        self,
        backbone: nn.Module,
        num_clusters: int,
        overcluster_k: int,
        num_subheads: int,
        head_depth: int = 0,
        head_width: int = 0,
    ):
        super().__init__()
        self.backbone = backbone
        shape = (num_subheads, head_depth, head_width)
        self.heads = nn.ModuleDict({"main": ClusterHead(backbone.out_features, num_clusters, *shape)})
        if overcluster_k:
            self.heads["overcluster"] = ClusterHead(backbone.out_features, overcluster_k, *shape)

    def forward(self, images: torch.Tensor, head: str = "main") -> list[torch.Tensor]:
        return self.heads[head](self.backbone(images))


RESNETS = {resnet.architecture: resnet for resnet in (ResNet18, ResNet50)}
# The named backbones; any timm model also serves as timm/<model>.<tag> (iic.timm_backbones).
BACKBONES = ("clusternet", *RESNETS, *TIMM_BACKBONES)


def build_backbone(
    name: str, in_channels: int, input_size: int, width: int = 16, weights: str | None = None, lazy: bool = False
) -> nn.Module:
    """A fresh backbone; ``weights`` is a config's ``backbone_weights`` (``imagenet`` for the
    ResNets, ``pretrained`` for timm's, a state-dict file, or None for random weights). ``lazy``:
    a timm backbone is built the first time it runs (``TimmBackbone``)."""
    if name == "clusternet":
        return ClusterNet(in_channels, width)
    if name in RESNETS:
        return RESNETS[name](in_channels, input_size, weights_file(name, weights) if weights else None)
    if is_timm_backbone(name):
        path = (fetch_hub_weights(name) if weights == PRETRAINED else Path(weights)) if weights else None
        return TimmBackbone(name, input_size, path, lazy)
    raise ValueError(f"unknown backbone {name!r}: choose one of {', '.join(BACKBONES)}")


# Layers that act on each channel alone (or are containers): a stack of models can share them.
_CHANNELWISE = (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Identity)


def _stacked_conv(convs: list[nn.Conv2d]) -> nn.Conv2d:
    first, count = convs[0], len(convs)
    stacked = nn.Conv2d(
        first.in_channels * count,
        first.out_channels * count,
        first.kernel_size,
        first.stride,
        first.padding,
        first.dilation,
        first.groups * count,
        first.bias is not None,
        first.padding_mode,
    )
    stacked.weight.data.copy_(torch.cat([conv.weight.data for conv in convs]))
    if first.bias is not None:
        stacked.bias.data.copy_(torch.cat([conv.bias.data for conv in convs]))
    return stacked


def _stacked_batch_norm(norms: list[nn.BatchNorm2d]) -> nn.BatchNorm2d:
    first = norms[0]
    stacked = nn.BatchNorm2d(
        first.num_features * len(norms), first.eps, first.momentum, first.affine, first.track_running_stats
    )
    # Per-channel statistics over (N, H, W): the same for a channel whichever model it belongs to.
    for name, tensor in [*stacked.named_parameters(recurse=False), *stacked.named_buffers(recurse=False)]:
        if name == "num_batches_tracked":
            tensor.copy_(first.num_batches_tracked)
        else:
            tensor.data.copy_(torch.cat([getattr(norm, name).data for norm in norms]))
    return stacked


def stack_backbones(backbones: list[nn.Module]) -> nn.Module:
    """S backbones of one architecture as one module on (N, S*C, H, W) inputs (model s reads
    channels s*C..(s+1)*C-1) giving (N, S*F) features: every convolution grouped by model,
    every batch norm over the models' channels side by side. Exact: each model sees only its own
    channels. Raises ValueError for a layer that mixes channels in another way."""
    stacked = copy.deepcopy(backbones[0])
    for name, module in backbones[0].named_modules():
        if not name or list(module.children()):
            continue
        twins = [backbone.get_submodule(name) for backbone in backbones]
        if isinstance(module, nn.Conv2d):
            stacked.set_submodule(name, _stacked_conv(twins))
        elif isinstance(module, nn.BatchNorm2d):
            stacked.set_submodule(name, _stacked_batch_norm(twins))
        elif not isinstance(module, _CHANNELWISE):
            raise ValueError(
                f"cannot stack backbone layer {name} ({type(module).__name__}): "
                "only convolutions, batch norms and channel-wise layers"
            )
    return stacked


def shared_backbone(backbones: list[nn.Module]) -> nn.Module:
    """S frozen backbones that are one and the same (one module, or pretrained weights with every
    layer loaded) as the one module they all are: it never trains, so computing it once serves
    every model. Raises ValueError if their weights differ."""
    first = backbones[0].state_dict()
    for backbone in backbones[1:]:
        if backbone is backbones[0]:
            continue
        differing = [name for name, value in backbone.state_dict().items() if not torch.equal(value, first[name])]
        if differing:
            raise ValueError(
                "frozen backbones must be identical to be shared; "
                f"{differing[0]} differs (a layer the weights do not hold?)"
            )
    shared = backbones[0].requires_grad_(False)
    return shared.eval()


def _linears(subhead: nn.Module) -> list[nn.Linear]:
    return [module for module in subhead.modules() if isinstance(module, nn.Linear)]


class StackedClusterHead(nn.Module):
    """S models' ``ClusterHead``s as one: features (S, N, F) -> one (S, N, k) probability tensor
    per sub-head, in float32. Each linear layer's weights are the S models' stacked, listed
    sub-head by sub-head, layer by layer (a linear sub-head's are at its own index)."""

    def __init__(self, heads: list[ClusterHead]):
        super().__init__()
        layers = [
            list(zip(*(_linears(head.subheads[i]) for head in heads), strict=True))
            for i in range(len(heads[0].subheads))
        ]
        self.layers_per_subhead = len(layers[0])
        stacked = [linears for subhead in layers for linears in subhead]
        self.weights = nn.ParameterList(
            nn.Parameter(torch.stack([lin.weight.data for lin in linears])) for linears in stacked
        )
        self.biases = nn.ParameterList(
            nn.Parameter(torch.stack([lin.bias.data for lin in linears])) for linears in stacked
        )

    def forward(self, features: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for start in range(0, len(self.weights), self.layers_per_subhead):
            hidden = features
            for layer in range(start, start + self.layers_per_subhead):
                if layer > start:
                    hidden = hidden.relu()
                hidden = torch.einsum("snf,skf->snk", hidden, self.weights[layer]) + self.biases[layer].unsqueeze(1)
            outputs.append(hidden.float().softmax(dim=-1))
        return outputs


class StackedIICModel(nn.Module):
    """S ``IICModel``s of one architecture (one per seed) trained as one.

    ``model(images, head)`` takes (S, N, C, H, W) — each model its own images — and returns one
    (S, N, k) probability tensor per sub-head. Parameters of model s are slices of the stacked
    ones, so one optimiser step of an element-wise optimiser such as Adam on the stack is S
    independent steps.

    With ``freeze_backbone`` only the heads train: the models' backbones, identical pretrained
    weights, become one shared module that runs without gradients and in eval mode (its batch
    norms keep the statistics they were trained with), over all S models' images in one batch.
    ``features`` and ``classify`` are the two halves of ``forward``, so that features can be
    computed once and reused.

    Example:
        >>> models = []
        >>> for seed in (0, 1, 2):
        ...     torch.manual_seed(seed)
        ...     models.append(IICModel(build_backbone("clusternet", 1, 16), 10, 0, 5))
        >>> stacked = StackedIICModel(models)
        >>> [p.shape for p in stacked(torch.rand(3, 8, 1, 16, 16))][0]
        torch.Size([3, 8, 10])
    """

    def __init__(self, models: list[IICModel], freeze_backbone: bool = False):
        super().__init__()
        self.num_models = len(models)
        self.freeze_backbone = freeze_backbone
        backbones = [model.backbone for model in models]
        self.backbone = shared_backbone(backbones) if freeze_backbone else stack_backbones(backbones)
        self.heads = nn.ModuleDict(
            {name: StackedClusterHead([model.heads[name] for model in models]) for name in models[0].heads}
        )

    def select_models(self, name: str, tensor: torch.Tensor, indices: list[int]) -> torch.Tensor:
        """The part of ``tensor`` (the stack's parameter or buffer ``name``, or optimiser state shaped
        like it) that a stack of just the models ``indices`` holds: every stacked tensor keeps
        model s's block at s along dim 0; a shared frozen backbone's tensors and scalars are
        everyone's."""
        if tensor.ndim == 0 or (self.freeze_backbone and name.startswith("backbone.")):
            return tensor
        return tensor.unflatten(0, (self.num_models, -1))[indices].flatten(0, 1)

    def train(self, mode: bool = True) -> "StackedIICModel":
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
        return self

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(S, N, C, H, W), each model its own images -> (S, N, F)."""
        count, n = images.shape[:2]
        if self.freeze_backbone:
            with torch.no_grad():
                return self.backbone(images.flatten(0, 1)).view(count, n, -1)
        side_by_side = images.transpose(0, 1).reshape(n, count * images.shape[2], *images.shape[3:])
        return self.backbone(side_by_side).view(n, count, -1).transpose(0, 1)

    def features_of_same_images(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W), the same images for every model -> (S, N, F); a shared backbone runs once."""
        if self.freeze_backbone:
            return self.features(images.unsqueeze(0)).expand(self.num_models, -1, -1)
        return self.features(images.expand(self.num_models, *images.shape))

    def classify(self, features: torch.Tensor, head: str = "main") -> list[torch.Tensor]:
        """(S, N, F) features -> one (S, N, k) probability tensor per sub-head of ``head``."""
        return self.heads[head](features)

    def forward(self, images: torch.Tensor, head: str = "main") -> list[torch.Tensor]:
        return self.classify(self.features(images), head)
