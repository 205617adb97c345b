"""Features computed once: a trial on the cached features of fixed views equals the same trial
running its frozen backbone on the same views at every step, and the cache is shared."""

import numpy as np
import pytest
import torch

from iic import timm_backbones
from iic.cache import cache_dir
from iic.config import IICConfig
from iic.label_free import GENERALIZATION
from iic.trainer import Trainer, train

timm = pytest.importorskip("timm")

# A real timm vision transformer (timm's own test model, 0.4M parameters) whose weights the test writes.
TINY_VIT = "timm/test_vit"


@pytest.fixture(scope="module")
def tiny_vit_weights(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "tiny_vit.pt"
    torch.save(timm.create_model("test_vit", num_classes=0, img_size=32).state_dict(), path)
    return path


def frozen_config(weights, dataset: str = "digits", **changes) -> IICConfig:
    settings = dict(
        dataset=dataset,
        input_size=32,
        max_samples=120,
        backbone=TINY_VIT,
        backbone_weights=str(weights),
        freeze_backbone=True,
        feature_views=3,
        twin_neighbours=5,
        head_depth=1,
        head_width=32,
        num_subheads=2,
        overcluster_k=20,
        batch_size=40,
        repeats=2,
        epochs=2,
        device="cpu",
    )
    return IICConfig(**{**settings, **changes})


@pytest.mark.parametrize("dataset", ["digits", pytest.param("mnist5k", marks=pytest.mark.slow)])
def test_a_trial_on_cached_features_equals_the_same_fixed_views_computed_live(tiny_vit_weights, dataset):
    config = frozen_config(tiny_vit_weights, dataset)
    cached = train(config, seeds=[0, 1])
    live = train(config.replace(cache_view_features=False), seeds=[0, 1])
    for ours, theirs in zip(cached.seeds, live.seeds, strict=True):
        for name in ("loss", "loss_overcluster", "mutual_information", "cluster_accuracy"):
            assert [m[name] for m in ours.history] == pytest.approx([m[name] for m in theirs.history], rel=1e-4)
        assert (ours.clusters == theirs.clusters).mean() > 0.99  # an argmax may flip on a near tie
    assert len(cached.history) == 2 and cached.metrics["cluster_accuracy"] > 0.2


def test_the_features_are_computed_once_and_shared_by_later_trials(tiny_vit_weights):
    config = frozen_config(tiny_vit_weights, feature_views=2, feature_view_seed=7)
    first = Trainer(config)
    files = sorted(cache_dir().glob("features-digits-timm_test_vit-32px-2views-*.npz"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    second = Trainer(config.replace(lr=1e-3, head_depth=0))  # another head: the same features
    assert files[0].stat().st_mtime_ns == stamp
    assert torch.equal(first.fixed_views.table, second.fixed_views.table)
    assert first.fixed_views.table.shape == (2 + 2, 120, first.model.backbone.out_features)
    # Other views (another seed) are other features, in a file of their own.
    other = Trainer(config.replace(feature_view_seed=8))
    assert not torch.equal(other.fixed_views.table[1:], first.fixed_views.table[1:])
    assert torch.equal(other.fixed_views.table[0], first.fixed_views.table[0])  # the images themselves
    assert len(list(cache_dir().glob("features-digits-timm_test_vit-32px-2views-*.npz"))) == 2


@pytest.fixture
def builds(monkeypatch) -> list:
    """The timm backbones built from here on (their arguments)."""
    built, load = [], timm_backbones._load
    monkeypatch.setattr(timm_backbones, "_load", lambda *arguments: built.append(arguments) or load(*arguments))
    return built


def test_a_trial_that_reads_every_feature_from_the_cache_never_builds_its_backbone(tiny_vit_weights, builds, tmp_path):
    config = frozen_config(tiny_vit_weights, screen_inits=2, screen_epochs=1)
    Trainer(config)  # the features cached
    builds.clear()
    checkpoint = tmp_path / "checkpoint.pt"

    def save(metrics, trainer):
        trainer.save_checkpoint(checkpoint)

    # Neighbours, screening, evaluation, a checkpoint and its resume, the generalization probe: all from the table.
    train(config.replace(epochs=1), on_epoch=save, seeds=[0, 1])
    resumed = train(config, resume_from=checkpoint, seeds=[0, 1])
    assert builds == [] and GENERALIZATION in resumed.metrics


def test_one_backbone_serves_the_stack_and_the_heads_start_the_same_whether_it_is_built_or_not(
    tiny_vit_weights, builds
):
    config = frozen_config(tiny_vit_weights)
    Trainer(config)  # the features cached
    builds.clear()
    cached = Trainer(config, seeds=[0, 1])
    live = Trainer(config.replace(cache_view_features=False), seeds=[0, 1])
    assert cached.model.backbone.net is None and live.model.backbone.net is not None and len(builds) == 1
    for name, value in live.model.heads.state_dict().items():
        assert torch.equal(value, cached.model.heads.state_dict()[name])


def test_views_need_a_frozen_backbone_and_an_augmentation(tiny_vit_weights):
    from iic.config import ConfigError

    with pytest.raises(ConfigError) as error:
        frozen_config(tiny_vit_weights, freeze_backbone=False).validate()
    assert "feature_views: features computed once need a frozen backbone" in str(error.value)
    off = dict(crop_min_scale=1.0, rotation_degrees=0.0, brightness=0.0, contrast=0.0)
    with pytest.raises(ConfigError, match="each view is the image itself; set feature_views: 0"):
        frozen_config(tiny_vit_weights, **off).validate()
    assert np.isfinite(frozen_config(tiny_vit_weights).validate().lr)
