import optuna

from search.preset import Preset
from search.space import search_space
from trainables.iic_trainable import trial_iic_config

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_frozen_features_proposes_valid_head_only_configs_on_the_same_cached_features():
    preset = Preset.load("frozen_features")
    space = search_space(preset)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    depths, views = set(), set()
    for _ in range(10):
        trial = study.ask()
        config = trial_iic_config({**space(trial), **{k: v for k, v in trial.params.items() if "/" not in k}})
        config.validate(check_data=False)
        assert config.backbone == "dinov2_vits14" and config.freeze_backbone and config.input_size == 224
        assert ("head_width" in trial.params) == (config.head_depth > 0)
        depths.add(config.head_depth)
        # What the features depend on is never searched: every trial reads the one extraction.
        views.add((config.feature_views, config.feature_view_seed, tuple(config.augment_kwargs(1).values())))
        assert space.point(config.to_dict()) == trial.params
    assert 0 in depths and depths - {0} and len(views) == 1  # linear and MLP sub-heads
    assert preset.search.cpus_per_trial == 0.25
