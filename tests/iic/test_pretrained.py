import errno
import importlib.util
import socket

import pytest
import torch
import torchvision
from torchvision.transforms import functional as TF

from iic.config import ConfigError, IICConfig
from iic.models import build_backbone
from iic.pretrained import ImageNetInput, cache_file, imagenet_weights, main


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network (every connection fails as on an isolated machine) and an empty torch cache under
    tmp_path: nothing can download, whatever the machine running the tests can reach."""

    def unreachable(*args, **kwargs):
        raise OSError(errno.ENETUNREACH, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    monkeypatch.setattr(socket.socket, "connect", unreachable)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    try:  # the timm backbones' Hugging Face cache: empty, and offline (its client would retry for ~25 s)
        from huggingface_hub import constants

        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "huggingface"))
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    except ImportError:
        pass
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_imagenet_weights_offline_are_refused_before_any_compute_naming_both_ways_out(offline):
    config = IICConfig(backbone="resnet18", input_size=64, backbone_weights="imagenet")
    with pytest.raises(ConfigError) as caught:
        config.validate()
    message = str(caught.value)
    assert cache_file("resnet18") == offline / "resnet18-f37072fd.pth"
    assert f"to {offline / 'resnet18-f37072fd.pth'}" in message  # the file to pre-fill
    assert imagenet_weights("resnet18").url in message  # and where to get it
    assert "backbone_weights: /path/to/state_dict.pt" in message  # or a local file
    assert "Network is unreachable" in message
    assert not (offline / "resnet18-f37072fd.pth").exists()
    config.validate(check_data=False)  # a preset's ranges are checked without fetching


def test_a_file_at_the_cache_path_is_what_imagenet_loads(offline):
    torch.manual_seed(0)
    state = torchvision.models.resnet50().state_dict()
    state["bn1.running_mean"] = torch.randn(64)  # statistics a random initialisation would not have
    offline.mkdir(parents=True)
    torch.save(state, offline / "resnet50-11ad3fa6.pth")
    IICConfig(backbone="resnet50", input_size=64, backbone_weights="imagenet").validate()
    loaded = build_backbone("resnet50", 3, 64, weights="imagenet").net.state_dict()
    assert loaded.keys() == {name for name in state if not name.startswith("fc.")}
    assert all(torch.equal(loaded[name], state[name]) for name in loaded)


def test_prefetch_command_lists_cached_files_and_names_the_missing_ones(offline, capsys):
    offline.mkdir(parents=True)
    torch.save(torchvision.models.resnet18().state_dict(), offline / "resnet18-f37072fd.pth")
    assert main() == 1
    out, err = capsys.readouterr()
    assert f"resnet18: {offline / 'resnet18-f37072fd.pth'}\n" in out
    assert "resnet50: resnet50's ImageNet weights" in err and str(offline / "resnet50-11ad3fa6.pth") in err
    if importlib.util.find_spec("timm"):  # with the backbones extra installed, its weights are named too
        assert "dinov2_vits14: dinov2_vits14's pretrained weights (timm/vit_small_patch14_dinov2.lvd142m)" in err


def test_inputs_become_three_channels_normalised_as_the_weights_were_trained():
    transforms = imagenet_weights("resnet18").transforms()
    rgb = torch.rand(4, 3, 8, 8)
    assert torch.allclose(ImageNetInput("resnet18")(rgb), TF.normalize(rgb, transforms.mean, transforms.std))
    grey = torch.rand(4, 1, 8, 8)
    assert torch.allclose(
        ImageNetInput("resnet18")(grey), TF.normalize(grey.repeat(1, 3, 1, 1), transforms.mean, transforms.std)
    )
