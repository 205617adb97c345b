"""Backbones and clustering heads.

An IIC model is a backbone that maps images to a feature vector, followed by a main head with k
clusters and, optionally, an overclustering head with more clusters than classes (the paper's
"auxiliary overclustering", which helps the backbone find finer structure). Each head has several
independent sub-heads: they start from different random weights, converge to different clusterings,
and the one with the lowest training loss is the model's answer.
"""

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
