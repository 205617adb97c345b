import pytest
import torch

from iic.models import ClusterNet, IICModel, ResNet18, build_backbone


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
