import dataclasses
import pickle
from pathlib import Path

import pytest

from iic.config import ConfigError, IICConfig, field_docs, field_reference
from iic.data import HAR_MERGED_9, HAR_REDUCED_3
from iic.train import main

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_defaults_are_valid_and_round_trip_through_yaml(tmp_path):
    config = IICConfig(lr=1e-3, class_map={"0": "zero", "1": "one"}, max_samples=100).validate()
    path = config.to_yaml(tmp_path / "config.yaml")
    assert IICConfig.from_yaml(path) == config


def test_unknown_field_is_named_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"learning_rte: unknown field.*"):
        IICConfig.from_dict({"learning_rte": 0.1})
    with pytest.raises(ConfigError, match="did you mean 'overcluster_k'"):
        IICConfig.from_dict({"overclusterk": 30})


def test_wrong_types_are_rejected_and_ints_become_floats():
    with pytest.raises(ConfigError, match="epochs: expected int"):
        IICConfig.from_dict({"epochs": "ten"})
    with pytest.raises(ConfigError, match="sobel: expected bool"):
        IICConfig.from_dict({"sobel": "yes"})
    config = IICConfig.from_dict({"lr": 1, "class_map": {0: "zero"}})
    assert isinstance(config.lr, float) and config.class_map == {"0": "zero"}


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"dataset": "imagenet"}, "dataset: unknown dataset 'imagenet'"),
        ({"backbone": "vgg"}, "backbone: unknown backbone"),
        ({"num_clusters": 1}, "num_clusters: must be at least 2"),
        ({"overcluster_k": 10}, "overcluster_k: must exceed num_clusters=10"),
        ({"lr": 0.0}, "lr: must be positive"),
        ({"lr": -1e-3}, "lr: must be positive"),
        ({"batch_size": 1}, "batch_size: must be at least 2"),
        ({"hflip_prob": 1.5}, r"hflip_prob: a probability must lie in \[0, 1\]"),
        ({"vflip_prob": -0.1}, "vflip_prob: a probability"),
        ({"crop_min_scale": 0.0}, "crop_min_scale: must lie in"),
        ({"hue": 0.7}, "hue: must lie in"),
        ({"shear_degrees": 75.0}, r"shear_degrees: must lie in \[0, 60\]"),
        ({"brightness": 2.0}, "brightness: jitter strength"),
        ({"backbone": "resnet18", "input_size": 16}, "input_size: 16 px is too small for resnet18; use at least 32"),
        ({"input_size": 4}, "input_size: 4 px is too small for clusternet"),
        ({"dataset": "har"}, "data_root: .*har"),
        ({"dataset": "image_folder", "data_root": "/no/such/folder"}, "data_root: .*/no/such/folder"),
        ({"device": "tpu"}, "device: 'tpu'"),
        ({"overcluster_passes": -1}, "overcluster_passes: must be 0 or more"),
        (
            {"backbone": "resnet18", "input_size": 32, "backbone_weights": "/no/weights.pt"},
            "backbone_weights: file /no/weights.pt does not exist",
        ),
    ],
)
def test_validation_names_the_field_and_the_fix(changes, field):
    with pytest.raises(ConfigError, match=field):
        IICConfig().replace(**changes).validate()


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as caught:
        IICConfig(num_clusters=1, lr=0, batch_size=1).validate()
    message = str(caught.value)
    assert "num_clusters" in message and "lr" in message and "batch_size" in message


def test_config_error_keeps_its_problems_as_a_list(tmp_path):
    with pytest.raises(ConfigError) as caught:
        IICConfig(num_clusters=1, lr=0).validate()
    problems = caught.value.problems
    assert len(problems) == 2 and problems[0].startswith("num_clusters:") and problems[1].startswith("lr:")
    assert str(caught.value) == "invalid config:\n  " + "\n  ".join(problems)
    copy = pickle.loads(pickle.dumps(caught.value))
    assert (str(copy), copy.problems) == (str(caught.value), problems)
    path = tmp_path / "bad.yaml"
    path.write_text("epochs: ten\nsobel: yes please\n")
    with pytest.raises(ConfigError) as caught:
        IICConfig.from_yaml(path)
    assert str(caught.value).startswith(f"{path}: invalid config:")
    assert [problem.split(":")[0] for problem in caught.value.problems] == ["epochs", "sobel"]
    assert ConfigError("one thing is wrong").problems == ["one thing is wrong"]


def test_malformed_config_file_exits_2_naming_file_line_and_column(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("dataset: digits\nlr: 0.001\n  epochs: 3\n")  # epochs indented under a scalar
    assert main(["--config", str(path), "--out", str(tmp_path / "run")]) == 2
    assert f"error: {path} line 3 column 9: mapping values are not allowed here" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_malformed_set_value_exits_2(tmp_path, capsys):
    assert main(["--set", "class_map={a: b", "--out", str(tmp_path / "run")]) == 2
    assert "error: --set 'class_map={a: b': the value is not valid YAML" in capsys.readouterr().err


def test_set_overrides_parse_yaml_values():
    config = IICConfig().with_overrides(["lr=0.001", "sobel=true", "overcluster_k=40", "class_map={a: b}"])
    assert config.lr == 0.001 and config.sobel is True and config.overcluster_k == 40 and config.class_map == {"a": "b"}
    with pytest.raises(ConfigError, match="expected key=value"):
        IICConfig().with_overrides(["lr"])


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        IICConfig.from_yaml(tmp_path / "nope.yaml")


def test_bundled_override_files_load_and_are_valid():
    files = sorted(CONFIGS.glob("*.yaml"))
    assert {f.stem for f in files} >= {
        "digits",
        "mnist5k",
        "mnist",
        "cifar10",
        "stl10",
        "har_full",
        "har_merged",
        "har_reduced",
    }
    for path in files:
        config = IICConfig.from_yaml(path)
        config.validate(check_data=config.data_root is None)


def test_har_configs_carry_the_study_class_groupings():
    assert IICConfig.from_yaml(CONFIGS / "har_merged.yaml").class_map == HAR_MERGED_9
    reduced = IICConfig.from_yaml(CONFIGS / "har_reduced.yaml")
    assert reduced.class_map == HAR_REDUCED_3 and reduced.num_clusters == 3
    assert IICConfig.from_yaml(CONFIGS / "har_full.yaml").num_clusters == 15


def test_relative_paths_become_absolute_against_a_base(tmp_path):
    config = IICConfig(dataset="image_folder", data_root="data/pets", backbone="resnet18", backbone_weights="/w/r18.pt")
    resolved = config.with_absolute_paths(tmp_path)
    assert resolved.data_root == str(tmp_path / "data" / "pets")
    assert resolved.backbone_weights == "/w/r18.pt"  # already absolute
    assert IICConfig().with_absolute_paths(tmp_path) == IICConfig()  # digits: no paths
    assert (
        config.replace(backbone_weights="imagenet").with_absolute_paths(tmp_path).backbone_weights == "imagenet"
    )  # not a path


def test_pretrained_and_frozen_backbones_refuse_what_does_not_fit(tmp_path):
    weights = tmp_path / "resnet18.pt"
    weights.write_bytes(b"")  # validation checks that the file is there; the model reads it
    pretrained = IICConfig(backbone="resnet18", input_size=64, backbone_weights=str(weights))
    pretrained.validate()
    pretrained.replace(freeze_backbone=True, backbone="resnet50").validate()
    cases = [
        ({"backbone": "clusternet"}, "backbone_weights: only resnet18 or resnet50 load weights"),
        (
            {"sobel": True},
            "sobel: pretrained weights read RGB images, and Sobel "
            "replaces them with 2 gradient channels; set sobel: false",
        ),
        (
            {"freeze_backbone": True, "backbone_weights": None},
            "freeze_backbone: a frozen backbone without pretrained weights stays random",
        ),
        ({"freeze_backbone": True, "input_size": 32}, "freeze_backbone: below 64 px .* set input_size: 64 or more"),
        (
            {"backbone_weights": str(tmp_path / "none.pt")},
            "backbone_weights: file .*none.pt does not exist; give a local state-dict file, imagenet, or null",
        ),
    ]
    for changes, message in cases:
        with pytest.raises(ConfigError, match=message):
            pretrained.replace(**changes).validate()


def test_a_schedule_round_trips_through_yaml_and_says_what_is_in_force(tmp_path):
    schedule = [{"epoch": 3, "values": {"lr": 1e-3, "rotation_degrees": 5}}, {"epoch": 5, "values": {"lamb": 1}}]
    config = IICConfig.from_dict({"epochs": 6, "schedule": schedule}).validate(check_data=False)
    assert config.schedule[0]["values"]["rotation_degrees"] == 5.0 and isinstance(
        config.schedule[1]["values"]["lamb"], float
    )
    assert IICConfig.from_yaml(config.to_yaml(tmp_path / "config.yaml")) == config
    assert config.values_at(2)["lr"] == IICConfig.lr and config.values_at(3)["lr"] == 1e-3
    assert config.values_at(6) == {**config.values_at(1), "lr": 1e-3, "rotation_degrees": 5.0, "lamb": 1.0}
    assert config.augment_kwargs(4)["rotation_degrees"] == 5.0 and "lr" not in config.augment_kwargs(4)
    # the schedule on its own (as a trial reports it) puts the same run back into any config
    other = IICConfig(epochs=6, lr=0.5, brightness=0.0)
    assert other.with_schedule(config.full_schedule()) == config
    assert config.truncated(4) == config.replace(epochs=4, schedule=schedule[:1])


@pytest.mark.parametrize(
    "schedule, message",
    [
        (
            [{"epoch": 2, "values": {"batch_size": 32}}],
            r"schedule\[0\]: batch_size cannot change while a run trains; "
            r"a schedule may change only crop_min_scale, .*lr, lamb",
        ),
        (
            [{"epoch": 2, "values": {"hflip_prob": 1.5}}],
            r"schedule\[0\]: hflip_prob: a probability must lie in \[0, 1\]",
        ),
        ([{"epoch": 2, "values": {"lr": 0.0}}], r"schedule\[0\]: lr: must be positive"),
        (
            [{"epoch": 0, "values": {"lr": 0.1}}],
            r"schedule\[0\]: epoch must be a whole number in 1..epochs=4 \(got 0\)",
        ),
        (
            [{"epoch": 5, "values": {"lr": 0.1}}],
            r"schedule\[0\]: epoch must be a whole number in 1..epochs=4 \(got 5\)",
        ),
        (
            [{"epoch": 3, "values": {"lr": 0.1}}, {"epoch": 2, "values": {"lr": 0.2}}],
            r"schedule\[1\]: epoch 2 does not come after epoch 3; list the changes in increasing epochs",
        ),
        ([{"epoch": 2, "values": {}}], r"schedule\[0\]: no values; give the fields that change at epoch 2"),
    ],
)
def test_schedule_problems_name_the_entry_and_the_fix(schedule, message):
    with pytest.raises(ConfigError, match=message):
        IICConfig(epochs=4, schedule=schedule).validate(check_data=False)


@pytest.mark.parametrize(
    "schedule, message",
    [
        ({"epoch": 2, "values": {"lr": 0.1}}, "schedule: expected a list of {epoch: E, values: {field: value, ...}}"),
        ([{"epoch": 2, "lr": 0.1}], "schedule: entry 0: expected {epoch: E, values: {field: value, ...}}"),
        ([{"epoch": "two", "values": {"lr": 0.1}}], "schedule: entry 0: expected int, got 'two'"),
        ([{"epoch": 2, "values": {"lr": "fast"}}], "schedule: entry 0: expected float, got 'fast'"),
    ],
)
def test_a_malformed_schedule_in_a_file_is_refused_with_its_shape(tmp_path, schedule, message):
    import yaml

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"epochs": 4, "schedule": schedule}))
    with pytest.raises(ConfigError) as caught:
        IICConfig.from_yaml(path)
    assert message in str(caught.value)


def test_the_field_reference_in_the_docs_is_the_one_the_code_generates():
    # docs/training.md carries field_reference() between its markers: regenerate with `python -m iic.config`.
    docs = (Path(__file__).parents[2] / "docs" / "training.md").read_text()
    start, end = "<!-- config-reference -->\n", "\n<!-- /config-reference -->"
    assert start in docs and end in docs, "docs/training.md lost its config-reference markers"
    assert docs[docs.index(start) + len(start) : docs.index(end)] == field_reference()


def test_every_field_has_its_docstring():
    assert set(field_docs()) == {field.name for field in dataclasses.fields(IICConfig)}
