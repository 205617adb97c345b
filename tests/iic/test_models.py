import pytest
import torch
import torchvision

from iic.models import ClusterNet, IICModel, ResNet18, StackedIICModel, build_backbone, stack_backbones
from iic.pretrained import WeightsError


@pytest.mark.parametrize("size", [8, 16, 32])
def test_clusternet_handles_small_inputs(size):
    net = ClusterNet(in_channels=2, width=4)
    assert net(torch.rand(3, 2, size, size)).shape == (3, 32)


def test_heads_give_probabilities_per_subhead():
    model = IICModel(ClusterNet(1, width=4), num_clusters=3, overcluster_k=7, num_subheads=2)
    images = torch.rand(5, 1, 16, 16)
    main, over = model(images), model(images, head="overcluster")
    assert len(main) == len(over) == 2
    assert main[0].shape == (5, 3) and over[1].shape == (5, 7)
    assert torch.allclose(main[0].sum(1), torch.ones(5))
    assert not torch.allclose(main[0], main[1])  # sub-heads start from different weights


def test_no_overclustering_head_when_off():
    model = IICModel(ClusterNet(1, width=4), num_clusters=3, overcluster_k=0, num_subheads=1)
    assert set(model.heads) == {"main"}


def test_resnet18_small_stem_and_channels():
    net = ResNet18(in_channels=2, input_size=32)
    assert net.net.conv1.kernel_size == (3, 3) and net.net.conv1.in_channels == 2
    assert net(torch.rand(2, 2, 32, 32)).shape == (2, 512)
    large = ResNet18(in_channels=3, input_size=96)
    assert large.net.conv1.kernel_size == (7, 7)


def test_resnet18_loads_local_weights_where_shapes_match(tmp_path):
    source = ResNet18(in_channels=3, input_size=96)
    path = tmp_path / "weights.pt"
    torch.save(source.net.state_dict(), path)
    small = ResNet18(in_channels=2, input_size=32, weights_path=str(path))
    assert torch.equal(small.net.layer1[0].conv1.weight, source.net.layer1[0].conv1.weight)
    assert small.net.conv1.weight.shape == (64, 2, 3, 3)  # adapted stem stays fresh


def test_unknown_backbone_is_named():
    with pytest.raises(ValueError, match="vgg.*clusternet, resnet18"):
        build_backbone("vgg", 3, 32)


def _models(backbone: str, channels: int, size: int, seeds=(0, 1, 2)) -> list[IICModel]:
    models = []
    for seed in seeds:
        torch.manual_seed(seed)
        models.append(
            IICModel(build_backbone(backbone, channels, size, 4), num_clusters=4, overcluster_k=9, num_subheads=2)
        )
    return models


@pytest.mark.parametrize("backbone, channels, size", [("clusternet", 1, 16), ("resnet18", 3, 32)])
def test_a_stack_of_models_computes_what_each_model_computes(backbone, channels, size):
    models = _models(backbone, channels, size)
    stacked = StackedIICModel(models)
    images = torch.rand(3, 6, channels, size, size)  # each model its own images
    for head in ("main", "overcluster"):
        outputs = stacked(images, head)
        for index, model in enumerate(models):
            for together, alone in zip(outputs, model(images[index], head), strict=True):
                assert torch.allclose(together[index], alone, atol=1e-5)
    # batch norm statistics stay per model too (both were in training mode)
    stacked_mean = next(m for m in stacked.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)).running_mean
    first_means = [
        next(m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)).running_mean
        for model in models
    ]
    assert torch.allclose(stacked_mean, torch.cat(first_means), atol=1e-6)


def test_a_layer_that_mixes_models_channels_cannot_be_stacked():
    backbones = [torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.LayerNorm(4)) for _ in range(2)]
    with pytest.raises(ValueError, match="cannot stack backbone layer 1"):
        stack_backbones(backbones)


def _state_dict_file(tmp_path, architecture: str, seed: int = 0):
    """A randomly initialised torchvision model's state dict, saved as a user's file would be."""
    torch.manual_seed(seed)
    state = torchvision.models.get_model(architecture).state_dict()
    path = tmp_path / f"{architecture}.pt"
    torch.save(state, path)
    return path, state


@pytest.mark.parametrize("architecture, features", [("resnet18", 512), ("resnet50", 2048)])
def test_a_state_dict_file_gives_the_backbone_its_weights(tmp_path, architecture, features):
    path, state = _state_dict_file(tmp_path, architecture)
    backbone = build_backbone(architecture, 3, 64, weights=str(path))
    loaded = backbone.net.state_dict()
    assert loaded.keys() == {name for name in state if not name.startswith("fc.")}  # the classifier is dropped
    assert all(torch.equal(loaded[name], state[name]) for name in loaded)
    assert backbone(torch.rand(2, 3, 64, 64)).shape == (2, features)


def test_a_file_of_another_architecture_is_refused_by_name(tmp_path):
    path, _ = _state_dict_file(tmp_path, "resnet18")
    with pytest.raises(
        WeightsError,
        match=r"resnet18.pt is not a resnet50 state dict in torchvision's layout: it lacks layer1.0.conv1.weight",
    ):
        build_backbone("resnet50", 3, 64, weights=str(path))


def test_a_frozen_stack_shares_one_backbone_and_computes_what_each_model_computes(tmp_path):
    path, _ = _state_dict_file(tmp_path, "resnet18")
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(
            IICModel(
                build_backbone("resnet18", 3, 64, weights=str(path)), num_clusters=4, overcluster_k=9, num_subheads=2
            )
        )
    stacked = StackedIICModel(models, freeze_backbone=True).train()
    assert sum(isinstance(m, torch.nn.Conv2d) for m in stacked.modules()) == 20  # one ResNet18, not two
    assert not stacked.backbone.training and not any(p.requires_grad for p in stacked.backbone.parameters())
    images = torch.rand(2, 3, 3, 64, 64)
    for head in ("main", "overcluster"):
        outputs = stacked(images, head)
        for index, model in enumerate(models):
            model.eval()  # a frozen backbone keeps its batch-norm statistics
            for together, alone in zip(outputs, model(images[index], head), strict=True):
                assert torch.allclose(together[index], alone, atol=1e-5)
    stacked(images)[0][:, :, 0].sum().backward()  # gradients reach the heads only
    assert stacked.heads["main"].weights[0].grad.abs().sum() > 0
    assert all(p.grad is None for p in stacked.backbone.parameters())
    same = stacked.features_of_same_images(images[0])
    assert same.shape == (2, 3, 512) and torch.equal(same[1], stacked.features(images[:1])[0])


def test_frozen_backbones_that_differ_cannot_be_shared():
    with pytest.raises(ValueError, match="frozen backbones must be identical"):
        StackedIICModel(_models("resnet18", 3, 32, seeds=(0, 1)), freeze_backbone=True)


def test_resnet50_stacks_like_resnet18():
    models = _models("resnet50", 3, 64, seeds=(0, 1))  # its bottleneck blocks and downsampling shortcuts too
    images = torch.rand(2, 2, 3, 64, 64)
    outputs = StackedIICModel(models)(images)
    for index, model in enumerate(models):
        assert torch.allclose(
            outputs[0][index], model(images[index])[0], atol=1e-4
        )  # 50 layers of summation-order noise
