import pickle
import re

import optuna
import pytest
from ray.tune.search.optuna import OptunaSearch

from iic.config import IICConfig
from iic.timm_backbones import TIMM_BACKBONES
from search.preset import Preset, PresetError, available_presets
from search.space import clip_to_ranges, mutations, population, search_space, start_point
from trainables.iic_trainable import trial_iic_config, trial_seeds

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _preset(space: dict, config: dict | None = None) -> Preset:
    return Preset.from_dict("test", {"config": config or {"dataset": "digits"}, "space": space})


def _proposed(space, trial: optuna.Trial) -> IICConfig:
    """The config of a trial as OptunaSearch makes it: the space's constants over the suggestions."""
    return trial_iic_config({**space(trial), **{k: v for k, v in trial.params.items() if "/" not in k}})


def _random_proposals(space, count: int):
    """``count`` trials of Optuna's random sampler (seed 0) and their configs, each checked valid."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(count):
        trial = study.ask()
        config = _proposed(space, trial)
        config.validate(check_data=False)
        yield trial, config


GATED = {
    "lr": {"low": 1e-3, "high": 1e-2, "log": True},
    "overclustering": {"gate": True, "otherwise": {"overcluster_k": 0}},
    "overcluster_k": {"low": 20, "high": 60, "when": "overclustering"},
}


def test_bundled_presets_load_with_their_datasets():
    names = available_presets()
    assert {"digits", "mnist", "cifar10", "har", "har_merged", "har_reduced", "image_folder"} <= set(names)
    assert [Preset.load(n).config["num_clusters"] for n in ("har", "har_merged", "har_reduced")] == [15, 9, 3]
    assert Preset.load("har_merged").config["class_map"]["texting"] == "using_device"


def test_gated_fields_are_proposed_only_when_the_gate_is_on():
    space = search_space(_preset(GATED, {"dataset": "digits", "overcluster_k": 50}))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(12):
        trial = study.ask()
        constants = space(trial)
        on = trial.params["gate/overclustering"]
        seen.add(on)
        if on:
            assert "overcluster_k" in trial.params and "overcluster_k" not in constants
        else:
            assert "overcluster_k" not in trial.params and constants["overcluster_k"] == 0
    assert seen == {True, False}


def test_through_rays_optuna_searcher_the_trial_config_is_complete():
    space = search_space(_preset(GATED), seeds=[7, 11])
    searcher = OptunaSearch(
        space=space, metric="cluster_accuracy", mode="max", sampler=optuna.samplers.RandomSampler(seed=1)
    )
    configs = [searcher.suggest(f"t{i}") for i in range(6)]
    for config in configs:
        iic = trial_iic_config(config)  # a valid IICConfig: every field present, gate and seeds stripped
        assert 1e-3 <= iic.lr <= 1e-2
        assert (iic.overcluster_k == 0) != config["gate"]["overclustering"]
        assert trial_seeds(config) == [7, 11]  # every trial trains on the search's seeds


PRETRAINED = {
    "pretrained": {"gate": True, "otherwise": {"backbone_weights": None, "freeze_backbone": False}},
    "freeze_backbone": {"choices": [True, False], "when": "pretrained"},
    "sobel": {"choices": [False, True], "unless": "pretrained"},
}


@pytest.mark.parametrize("preset", ["har", "cifar10", None])
def test_pretrained_frozen_and_sobel_are_proposed_only_where_they_fit(preset):
    """Pretrained: frozen or not, never Sobel (ImageNet weights read RGB); from scratch: never frozen,
    Sobel or not. Every proposed config is valid."""
    loaded = (
        Preset.load(preset)
        if preset
        else _preset(
            PRETRAINED, {"dataset": "digits", "backbone": "resnet18", "input_size": 64, "backbone_weights": "imagenet"}
        )
    )
    space = search_space(loaded)
    arms = set()
    for trial, config in _random_proposals(space, 30):
        pretrained = trial.params["gate/pretrained"]
        assert (config.backbone_weights == "imagenet") == pretrained
        assert ("freeze_backbone" in trial.params) == pretrained and ("sobel" in trial.params) != pretrained
        if preset:  # the bundled presets also try neighbours in the pretrained features as twins
            assert ("twin_neighbours" in trial.params) == pretrained
            assert config.twin_neighbours == trial.params.get("twin_neighbours", 0)
        arms.add((pretrained, config.freeze_backbone, config.sobel))
        assert space.point(config.to_dict()) == trial.params
    assert arms == {(True, True, False), (True, False, False), (False, False, False), (False, False, True)}


def test_image_folder_offers_foundation_models_frozen_at_their_size_resnets_and_training_from_scratch():
    """A gate under a gate (``foundation`` under ``pretrained``) and a field with one list of choices
    per gate state (``backbone``): ViTs only frozen at 224 px on cached views, ResNets pretrained
    (frozen or not) or from scratch. Every config is valid, and its point reproduces the trial."""
    preset = Preset.load("image_folder")
    assert Preset.from_dict("again", preset.to_dict()).params == preset.params  # what --resume reads back
    space = search_space(preset)
    arms = set()
    for trial, config in _random_proposals(space, 40):
        pretrained, foundation = trial.params["gate/pretrained"], trial.params.get("gate/foundation")
        assert (foundation is None) == (not pretrained)  # decided only under pretrained
        if foundation:
            assert config.backbone in TIMM_BACKBONES and trial.params["gate/backbone@foundation"] == config.backbone
            assert config.backbone_weights == "pretrained" and config.freeze_backbone
            assert config.input_size == 224 and config.feature_views == 8
            assert "freeze_backbone" not in trial.params
        else:
            assert config.backbone in ("resnet18", "resnet50") and config.input_size == 64 and config.feature_views == 0
            assert trial.params["gate/backbone@not_foundation"] == config.backbone
        assert "backbone" not in trial.params
        arms.add(("foundation" if foundation else "resnet" if pretrained else "scratch", config.freeze_backbone))
        assert space.point(config.to_dict()) == trial.params
    assert arms == {("foundation", True), ("resnet", True), ("resnet", False), ("scratch", False)}


def test_unless_names_a_gate_listed_anywhere_and_is_checked_with_the_gate_off():
    with pytest.raises(PresetError, match="space.sobel: 'unless: pretrained' names no gate"):
        _preset({"sobel": PRETRAINED["sobel"]})
    # a gate listed after the fields that name it (as a YAML writer that sorts keys leaves it) is the same space
    reordered = _preset(
        {"sobel": PRETRAINED["sobel"], "pretrained": PRETRAINED["pretrained"]},
        {"dataset": "digits", "backbone": "resnet18", "input_size": 64, "backbone_weights": "imagenet"},
    )
    assert [param.name for param in reordered.params] == ["pretrained", "sobel"]
    config = {"dataset": "digits", "backbone": "resnet18", "input_size": 64, "backbone_weights": "imagenet"}
    _preset(PRETRAINED, config)  # sobel is valid with the weights off
    with pytest.raises(PresetError, match="space.sobel: value True is invalid .*sobel: pretrained weights read RGB"):
        _preset({"sobel": {"choices": [False, True]}}, config)


def test_space_pickles_for_experiment_checkpoints():
    space = pickle.loads(pickle.dumps(search_space(_preset(GATED))))
    trial = optuna.create_study().ask()
    constants = space(trial)
    assert "lr" in trial.params and constants["dataset"] == "digits"


def test_point_reproduces_a_trials_parameters():
    space = search_space(_preset(GATED))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    for _ in range(6):
        trial = study.ask()
        config = {**_proposed(space, trial).to_dict()}
        assert space.point(config) == trial.params


@pytest.mark.parametrize(
    "space, message",
    [
        ({"lr": {"low": 0.1, "high": 0.01}}, r"space.lr: low \(0.1\) must be below high"),
        ({"learning_rate": {"low": 0.1, "high": 0.2}}, "not an IICConfig field"),
        ({"hflip_prob": {"low": 0.0, "high": 1.5}}, r"space.hflip_prob: value 1.5 is invalid"),
        (
            {"overcluster_k": {"low": 5, "high": 50}},
            r"space.overcluster_k: value 5 is invalid .*must exceed num_clusters",
        ),
        ({"lr": {"low": 0.0, "high": 0.1, "log": True}}, "log range needs low > 0"),
        ({"overcluster_k": {"low": 20, "high": 40, "when": "oc"}}, "names no gate"),
        ({"batch_size": {"low": 32.5, "high": 64}}, "integer field"),
        ({"sobel": {"choices": []}}, "non-empty list"),
        ({"backbone": {"choices": ["clusternet", "vgg"]}}, "value 'vgg' is invalid"),
        ({"backbone": [{"choices": ["clusternet"]}]}, "each alternative needs its own `when: GATE`"),
        (
            {"a": {"gate": True, "when": "b"}, "b": {"gate": True, "when": "a"}},
            "the gates a, b sit under each other in a loop",
        ),
        (  # a gate's `then` is checked in every state of the gates: a ViT needs a multiple of its patch
            {
                "vit": {"gate": True, "then": {"backbone_weights": "pretrained", "freeze_backbone": True}},
                "backbone": [
                    {"choices": ["clusternet"], "unless": "vit"},
                    {"choices": ["dinov2_vits14"], "when": "vit"},
                ],
            },
            r"space: with vit on: input_size",
        ),
    ],
)
def test_invalid_spaces_are_named(space, message):
    with pytest.raises(PresetError, match=message):
        _preset(space)


def test_unknown_preset_and_sections():
    with pytest.raises(PresetError, match="unknown preset 'nope': choose one of .*digits"):
        Preset.load("nope")
    with pytest.raises(PresetError, match="unknown section"):
        Preset.from_dict("x", {"spaces": {}})
    with pytest.raises(PresetError, match="search section: unknown setting"):
        Preset.from_dict("x", {"search": {"trials": 3}})


def test_malformed_preset_names_file_line_and_column(tmp_path):
    preset = tmp_path / "bad.yaml"
    preset.write_text("description: bad\nspace:\n  lr: {low: 0.001, high: 0.01}\n    log: true\n")
    with pytest.raises(PresetError, match=rf"^{re.escape(str(preset))} line 4 column 5: expected <block end>"):
        Preset.load(str(preset))


def test_malformed_extended_config_names_that_file(tmp_path):
    extended = tmp_path / "base.yaml"
    extended.write_text("dataset: digits\nlr: [0.001\n")
    preset = tmp_path / "preset.yaml"
    preset.write_text("extends: base.yaml\nspace:\n  lr: {low: 0.001, high: 0.01}\n")
    with pytest.raises(
        PresetError, match=rf"^{re.escape(str(extended.resolve()))} line 3 column 1: expected ',' or '\]'"
    ):
        Preset.load(str(preset))


def _pbt_preset(space: dict, pbt: dict | None = None) -> Preset:
    return Preset.from_dict(
        "test", {"config": {"dataset": "digits"}, "space": space, "search": {"scheduler": "pbt"}, "pbt": pbt or {}}
    )


PBT_SPACE = {
    **GATED,
    "hflip_prob": {"choices": [0.0, 0.5]},
    "brightness": {"low": 0.1, "high": 0.9},
    "repeats": {"low": 2, "high": 5},
}


def test_pbt_mutates_the_spaces_schedulable_fields_within_their_ranges():
    preset = _pbt_preset(PBT_SPACE)
    # repeats shapes each batch and overcluster_k the model: never mutated; a gate may switch a field off
    assert [p.name for p in preset.mutated_params()] == ["lr", "hflip_prob", "brightness"]
    mutated = mutations(preset)
    assert mutated["hflip_prob"] == [0.0, 0.5]  # choices: PBT shifts to a neighbour
    assert (mutated["lr"].lower, mutated["lr"].upper) == (1e-3, 1e-2) and mutated["brightness"].upper == 0.9
    assert [p.name for p in _pbt_preset(PBT_SPACE, {"mutate": ["brightness"]}).mutated_params()] == ["brightness"]
    clip = clip_to_ranges(preset)
    explored = clip({"lr": 0.02, "brightness": 0.05, "hflip_prob": 0.5, "repeats": 3, "gate": {"overclustering": True}})
    assert explored == {
        "lr": 1e-2,
        "brightness": 0.1,
        "hflip_prob": 0.5,
        "repeats": 3,
        "gate": {"overclustering": True},
    }
    assert pickle.loads(pickle.dumps(clip)) == clip  # Tune stores the scheduler with the experiment


def test_pbt_population_is_drawn_from_the_space_with_its_gates():
    preset = _pbt_preset(PBT_SPACE, {"population": 12})
    members = population(preset, seeds=[7, 11], seed=5)
    assert len(members) == 12 and members == population(preset, seeds=[7, 11], seed=5)  # seeded
    assert members != population(preset, seeds=[7, 11], seed=6)
    gates = set()
    for member in members:
        config = trial_iic_config(member)
        assert member["pbt"] is True and trial_seeds(member) == [7, 11]
        assert 1e-3 <= config.lr <= 1e-2 and config.hflip_prob in (0.0, 0.5) and 2 <= config.repeats <= 5
        gates.add(member["gate"]["overclustering"])
        assert (config.overcluster_k == 0) != member["gate"]["overclustering"]
    assert gates == {True, False}


@pytest.mark.parametrize(
    "pbt, message",
    [
        ({"population": 1}, r"pbt.population: a population needs at least 2 trials \(got 1\)"),
        ({"perturbation_interval": 0}, r"pbt.perturbation_interval: give a whole number of epochs, at least 1"),
        ({"quantile_fraction": 0.75}, r"pbt.quantile_fraction: must lie in \(0, 0.5\]"),
        ({"resample_probability": 1.5}, r"pbt.resample_probability: a probability must lie in \[0, 1\]"),
        (
            {"mutate": ["repeats"]},
            "pbt.mutate: repeats cannot change while a trial trains; PBT may mutate crop_min_scale, .*, lr, lamb",
        ),
        ({"mutate": ["hue"]}, "pbt.mutate: hue is not searched; give it a range under space"),
        ({"mutations": ["lr"]}, "pbt section: unknown setting.*mutations; valid: mutate, perturbation_interval"),
    ],
)
def test_bad_pbt_settings_are_named(pbt, message):
    with pytest.raises(PresetError, match=message):
        _pbt_preset(PBT_SPACE, pbt)


def test_pbt_needs_something_to_mutate_outside_a_gate():
    gated_lr = {"warm": {"gate": True, "otherwise": {"lr": 1e-3}}, "lr": {"low": 1e-3, "high": 1e-2, "when": "warm"}}
    with pytest.raises(
        PresetError, match="pbt.mutate: lr is proposed only when warm is on; PBT cannot mutate a gated field"
    ):
        _pbt_preset(gated_lr, {"mutate": ["lr"]})
    with pytest.raises(PresetError, match="pbt: nothing to mutate; the space searches none of"):
        _pbt_preset({"repeats": {"low": 2, "high": 5}})
    _preset({"repeats": {"low": 2, "high": 5}})  # fine for ASHA, which mutates nothing


def test_start_from_config_puts_the_configs_values_first_and_refuses_one_outside_the_space():
    preset = Preset.load("digits")
    assert preset.search.start_from_config
    assert start_point(preset) == {
        "gate/overclustering": False,
        "lr": 3e-3,
        "lamb": 1.3,
        "repeats": 4,
        "crop_min_scale": 0.5,
        "rotation_degrees": 15.0,
        "brightness": 0.3,
        "contrast": 0.3,
    }
    raw = {
        "config": {"lr": 1e-2, "overcluster_k": 0},
        "space": {"lr": {"low": 1e-3, "high": 5e-3}},
        "search": {"start_from_config": True},
    }
    with pytest.raises(
        PresetError, match=r"search.start_from_config: lr is 0.01 in the config, outside the space's \[0.001, 0.005\]"
    ):
        Preset.from_dict("mine", raw)
    Preset.from_dict("mine", {**raw, "search": {"start_from_config": False}})  # not asked for: any config will do


def test_a_problem_of_the_fixed_config_is_named_once_and_values_only_for_what_they_add():
    with pytest.raises(PresetError) as caught:
        _preset({**GATED, "overcluster_k": {"low": 5, "high": 60}}, {"dataset": "digits", "num_subheads": 0})
    message = str(caught.value)
    assert message.count("num_subheads: must be at least 1") == 1
    assert "config: num_subheads: must be at least 1" in message
    # the value that is wrong by itself is blamed for its own problem only
    assert re.search(r"space.overcluster_k: value 5 is invalid \(overcluster_k: must exceed num_clusters=10", message)
    assert "value 60" not in message and "space.lr" not in message
