"""The timm backbones: hub weights from the Hugging Face cache or a local file, a clear offline error before any
compute, input sizes checked against the patch size, and MLP sub-heads stacked exactly."""

import pytest
import torch

from iic.config import ConfigError, IICConfig
from iic.models import ClusterHead, StackedClusterHead
from iic.train import main as train_main

timm = pytest.importorskip("timm")
from huggingface_hub import constants  # noqa: E402  (installed with timm)
from safetensors.torch import save_file  # noqa: E402

HUB_ID = "timm/test_vit.r160_in1k"  # timm's own tiny test model: 0.4M parameters


@pytest.fixture
def hub_cache(monkeypatch, tmp_path):
    """An empty Hugging Face cache, offline: nothing can be downloaded."""
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return tmp_path / "hub"


def test_missing_hub_weights_are_refused_before_any_compute_naming_the_cache_and_the_file(hub_cache, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--set", "backbone=dinov2_vits14", "--set", "backbone_weights=pretrained", "--set", "input_size=224"]
    assert train_main([*argv, "--set", "freeze_backbone=true", "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert str(hub_cache) in error and "models--timm--vit_small_patch14_dinov2.lvd142m" in error
    assert "python -m iic.pretrained" in error and "backbone_weights: /path/to/state_dict.pt" in error
    assert not out.exists()  # nothing decoded, trained or written


def test_weights_copied_into_the_hub_cache_are_what_pretrained_loads(hub_cache):
    torch.manual_seed(3)
    model = timm.create_model("test_vit", num_classes=0)
    snapshot = hub_cache / "models--timm--test_vit.r160_in1k" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    save_file(model.state_dict(), snapshot / "model.safetensors")
    (hub_cache / "models--timm--test_vit.r160_in1k" / "refs").mkdir()
    (hub_cache / "models--timm--test_vit.r160_in1k" / "refs" / "main").write_text("0123abcd")
    config = IICConfig(backbone=HUB_ID, backbone_weights="pretrained", input_size=32, freeze_backbone=True)
    config.validate()
    from iic.inputs import new_backbone

    backbone = new_backbone(config, channels=1)
    assert torch.equal(backbone.net.blocks[0].attn.qkv.weight, model.blocks[0].attn.qkv.weight)
    assert backbone.net.pos_embed.shape[1] == 1 + (32 // 16) ** 2  # resampled from 160 px to 32


@pytest.mark.parametrize("feature_views", [0, 2])  # 2: built lazily, for the fixed views' features
def test_a_file_of_another_model_is_refused(tmp_path, feature_views):
    path = tmp_path / "resnet.pt"
    torch.save(timm.create_model("test_resnet", num_classes=0).state_dict(), path)
    from iic.trainer import Trainer

    config = IICConfig(
        backbone="timm/test_vit",
        backbone_weights=str(path),
        input_size=32,
        freeze_backbone=True,
        max_samples=20,
        feature_views=feature_views,
    )
    with pytest.raises(ConfigError, match=r"backbone_weights: .*resnet.pt does not hold test_vit's weights"):
        Trainer(config)


def test_input_size_must_be_a_multiple_of_the_patch_size_and_names_must_exist():
    with pytest.raises(ConfigError) as error:
        IICConfig(backbone="dinov2_vits14", input_size=64, sobel=True).validate(check_data=False)
    assert "input_size: dinov2_vits14 cuts images into 14 px patches; set input_size to a multiple of 14" in str(
        error.value
    )
    assert "sobel: dinov2_vits14 reads RGB images" in str(error.value)
    assert "freeze_backbone: dinov2_vits14 trains frozen" in str(error.value)
    with pytest.raises(ConfigError, match="backbone: timm/no_such_model: timm has no pretrained model"):
        IICConfig(backbone="timm/no_such_model", input_size=64).validate(check_data=False)
    with pytest.raises(ConfigError, match="backbone_weights: dinov2_vitb14 loads 'pretrained' weights, not 'imagenet'"):
        IICConfig(backbone="dinov2_vitb14", input_size=224, backbone_weights="imagenet").validate(check_data=False)


@pytest.mark.parametrize("depth", [0, 2])
def test_stacked_mlp_sub_heads_give_each_model_its_own_heads_outputs(depth):
    torch.manual_seed(0)
    heads = [ClusterHead(12, 5, 3, depth, 8) for _ in range(4)]
    features = torch.randn(4, 10, 12)
    stacked = StackedClusterHead(heads)(features)
    for model, head in enumerate(heads):
        for ours, theirs in zip(stacked, head(features[model]), strict=True):
            torch.testing.assert_close(ours[model], theirs)
