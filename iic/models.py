"""Backbones and clustering heads.

An IIC model is a backbone that maps images to a feature vector, followed by a main head with k
clusters and, optionally, an overclustering head with more clusters than classes (the paper's
"auxiliary overclustering", which helps the backbone find finer structure). Each head has several
independent sub-heads: they start from different random weights, converge to different clusterings,
and the one with the lowest training loss is the model's answer.

``StackedIICModel`` trains several such models (one per seed) as one: their convolutions become
grouped convolutions over the models' channels side by side, so S seeds cost one launch per layer
rather than S, and each model's numbers stay its own.
"""

import copy
from pathlib import Path

import torch
import torchvision
from torch import nn

BACKBONES = ("clusternet", "resnet18")
# Below these sizes the backbone's downsampling leaves nothing to pool.
MIN_INPUT_SIZE = {"clusternet": 8, "resnet18": 32}
# ResNet18's ImageNet stem (7x7 stride-2 conv + max-pool) discards too much of CIFAR-sized images.
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
            layers += [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]
            in_channels = out_channels
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.out_features = widths[-1]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images)


class ResNet18(nn.Module):
    """torchvision's ResNet18 trunk (no pretrained download: ``weights=None``), with its first conv
    adapted to the input channels and, for inputs under 64 px, a 3x3 stride-1 stem without max-pool.
    ``weights_path`` loads a local state dict (e.g. ImageNet weights saved beforehand); layers whose
    shapes no longer match (the adapted stem, the classifier) keep their random initialisation."""

    def __init__(self, in_channels: int, input_size: int, weights_path: str | None = None):
        super().__init__()
        net = torchvision.models.resnet18(weights=None)
        if input_size < RESNET_SMALL_STEM_BELOW:
            net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        elif in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        if weights_path:
            own = net.state_dict()
            loaded = torch.load(Path(weights_path), map_location="cpu", weights_only=True)
            own.update({name: value for name, value in loaded.items() if name in own and own[name].shape == value.shape})
            net.load_state_dict(own)
        net.fc = nn.Identity()
        self.net = net
        self.out_features = 512

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


class ClusterHead(nn.Module):
    """``num_subheads`` independent linear + softmax classifiers onto ``num_clusters`` clusters.
    Returns one (N, num_clusters) probability tensor per sub-head, in float32."""

    def __init__(self, in_features: int, num_clusters: int, num_subheads: int):
        super().__init__()
        self.subheads = nn.ModuleList(nn.Linear(in_features, num_clusters) for _ in range(num_subheads))

    def forward(self, features: torch.Tensor) -> list[torch.Tensor]:
        return [subhead(features).float().softmax(dim=1) for subhead in self.subheads]


class IICModel(nn.Module):
    """Backbone + main head (+ optional overclustering head). ``model(x, head="overcluster")``."""

    def __init__(self, backbone: nn.Module, num_clusters: int, overcluster_k: int, num_subheads: int):
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleDict({"main": ClusterHead(backbone.out_features, num_clusters, num_subheads)})
        if overcluster_k:
            self.heads["overcluster"] = ClusterHead(backbone.out_features, overcluster_k, num_subheads)

    def forward(self, images: torch.Tensor, head: str = "main") -> list[torch.Tensor]:
        return self.heads[head](self.backbone(images))


def build_backbone(name: str, in_channels: int, input_size: int, width: int = 16, weights_path: str | None = None) -> nn.Module:
    if name == "clusternet":
        return ClusterNet(in_channels, width)
    if name == "resnet18":
        return ResNet18(in_channels, input_size, weights_path)
    raise ValueError(f"unknown backbone {name!r}: choose one of {', '.join(BACKBONES)}")


# Layers that act on each channel alone (or are containers): a stack of models can share them.
_CHANNELWISE = (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Identity)


def _stacked_conv(convs: list[nn.Conv2d]) -> nn.Conv2d:
    first, count = convs[0], len(convs)
    stacked = nn.Conv2d(
        first.in_channels * count, first.out_channels * count, first.kernel_size, first.stride, first.padding,
        first.dilation, first.groups * count, first.bias is not None, first.padding_mode,
    )
    stacked.weight.data.copy_(torch.cat([conv.weight.data for conv in convs]))
    if first.bias is not None:
        stacked.bias.data.copy_(torch.cat([conv.bias.data for conv in convs]))
    return stacked


def _stacked_batch_norm(norms: list[nn.BatchNorm2d]) -> nn.BatchNorm2d:
    first = norms[0]
    stacked = nn.BatchNorm2d(first.num_features * len(norms), first.eps, first.momentum, first.affine, first.track_running_stats)
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
            raise ValueError(f"cannot stack backbone layer {name} ({type(module).__name__}): only convolutions, batch norms and channel-wise layers")
    return stacked


class StackedClusterHead(nn.Module):
    """S models' ``ClusterHead``s as one: features (N, S, F) -> one (S, N, k) probability tensor
    per sub-head, in float32."""

    def __init__(self, heads: list[ClusterHead]):
        super().__init__()
        self.weights = nn.ParameterList(
            nn.Parameter(torch.stack([head.subheads[i].weight.data for head in heads])) for i in range(len(heads[0].subheads))
        )
        self.biases = nn.ParameterList(
            nn.Parameter(torch.stack([head.subheads[i].bias.data for head in heads])) for i in range(len(heads[0].subheads))
        )

    def forward(self, features: torch.Tensor) -> list[torch.Tensor]:
        return [
            (torch.einsum("nsf,skf->snk", features, weight) + bias.unsqueeze(1)).float().softmax(dim=-1)
            for weight, bias in zip(self.weights, self.biases)
        ]


class StackedIICModel(nn.Module):
    """S ``IICModel``s of one architecture (one per seed) trained as one.

    ``model(images, head)`` takes (S, N, C, H, W) — each model its own images — and returns one
    (S, N, k) probability tensor per sub-head. Parameters of model s are slices of the stacked
    ones, so one optimiser step of an element-wise optimiser such as Adam on the stack is S
    independent steps.

    Example:
        >>> models = []
        >>> for seed in (0, 1, 2):
        ...     torch.manual_seed(seed)
        ...     models.append(IICModel(build_backbone("clusternet", 1, 16), 10, 0, 5))
        >>> stacked = StackedIICModel(models)
        >>> [p.shape for p in stacked(torch.rand(3, 8, 1, 16, 16))][0]
        torch.Size([3, 8, 10])
    """

    def __init__(self, models: list[IICModel]):
        super().__init__()
        self.num_models = len(models)
        self.backbone = stack_backbones([model.backbone for model in models])
        self.heads = nn.ModuleDict({name: StackedClusterHead([model.heads[name] for model in models]) for name in models[0].heads})

    def forward(self, images: torch.Tensor, head: str = "main") -> list[torch.Tensor]:
        count, n = images.shape[:2]
        side_by_side = images.transpose(0, 1).reshape(n, count * images.shape[2], *images.shape[3:])
        features = self.backbone(side_by_side).view(n, count, -1)
        return self.heads[head](features)
