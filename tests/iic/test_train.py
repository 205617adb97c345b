"""The command line, ``python -m iic.train`` (iic/train.py)."""

import json

import numpy as np
import pytest

from iic.config import IICConfig
from iic.data import load_dataset
from iic.metrics import clustering_metrics
from iic.recipes import RECIPES, recipe, recipe_path
from iic.train import build_parser, config_from_args, main
from tests.iic.test_trainer import CHANGES  # every kind of schedulable change


@pytest.mark.parametrize("dataset", [*RECIPES, "mnist"])
def test_a_dataset_trains_its_recipe_or_else_the_defaults(dataset):
    expected = IICConfig.from_yaml(recipe_path(dataset)) if dataset in RECIPES else IICConfig(dataset=dataset)
    assert recipe(dataset) == expected and expected.dataset == dataset


def test_no_arguments_and_dataset_digits_train_the_digits_recipe():
    digits = recipe("digits")
    assert digits.sobel and digits.input_size == 12 and digits.screen_inits == 3 and digits.batch_size == 32
    for argv in ([], ["--dataset", "digits"], ["--set", "dataset=digits"]):
        assert config_from_args(build_parser().parse_args(argv))[0] == digits
    given = config_from_args(build_parser().parse_args(["--config", str(recipe_path("mnist5k")), "--epochs", "3"]))[0]
    assert given == recipe("mnist5k").replace(epochs=3)


def test_the_digits_recipe_trains_fewer_epochs_than_its_screening_epoch(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["--dataset", "digits", "--epochs", "2", "--out", str(out), "--set", "max_samples=300"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["epochs"] == 2
    assert "sobel: true" in (out / "config.yaml").read_text()


def test_cli_writes_metrics_config_checkpoint_and_plot(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "--dataset",
            "digits",
            "--epochs",
            "2",
            "--seed",
            "3",
            "--out",
            str(out),
            "--set",
            "max_samples=200",
            "--set",
            "backbone_width=4",
            "--set",
            "num_subheads=1",
            "--set",
            "device=cpu",
        ]
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("cluster_accuracy", "majority_accuracy", "nmi", "ari", "largest_cluster_share", "epochs", "status"):
        assert key in metrics
    assert metrics["epochs"] == 2 and metrics["status"] == "completed"
    assert "seed: 3" in (out / "config.yaml").read_text()
    assert (out / "checkpoint.pt").stat().st_size > 0
    assert (out / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    assert "epoch   2/2" in capsys.readouterr().out
    # continuing to more epochs picks up at epoch 3
    assert main(["--config", str(out / "config.yaml"), "--epochs", "3", "--out", str(out), "--resume"]) == 0
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 3


def test_cli_replays_a_schedule_and_records_a_resume_with_new_values(tiny_config, tmp_path):
    scheduled = tiny_config.replace(schedule=[{"epoch": 2, "values": CHANGES}])
    assert (
        main(["--config", str(scheduled.to_yaml(tmp_path / "scheduled.yaml")), "--out", str(tmp_path / "replay")]) == 0
    )
    # one epoch, then resumed with the new values: the run's config.yaml records them as its schedule
    out = str(tmp_path / "resumed")
    assert main(["--config", str(tiny_config.replace(epochs=1).to_yaml(tmp_path / "plain.yaml")), "--out", out]) == 0
    assert (
        main(
            [
                "--config",
                str(tiny_config.replace(**CHANGES).to_yaml(tmp_path / "changed.yaml")),
                "--out",
                out,
                "--resume",
            ]
        )
        == 0
    )
    assert IICConfig.from_yaml(tmp_path / "resumed" / "config.yaml") == scheduled
    replayed, resumed = (json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("replay", "resumed"))
    assert resumed["epochs"] == replayed["epochs"] == 2
    assert resumed["loss"] == pytest.approx(replayed["loss"], abs=1e-6)
    assert resumed["cluster_accuracy"] == pytest.approx(replayed["cluster_accuracy"], abs=1e-6)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "lr=-1"], "lr: must be positive"),
        (
            ["--set", "epochs=2", "--set", "schedule=[{epoch: 3, values: {lr: 0.1}}]"],
            r"schedule[0]: epoch must be a whole number in 1..epochs=2",
        ),
        (["--dataset", "cifar100"], "unknown dataset 'cifar100'"),
        (["--set", "num_clusters=1"], "num_clusters"),
        (["--config", "/no/such.yaml"], "does not exist"),
        (["--resume"], "no checkpoint"),
        (["--set", "dataset=har", "--set", "data_root=/no/har"], "/no/har"),
    ],
)
def test_cli_bad_input_exits_nonzero_with_the_message(tmp_path, capsys, args, message):
    assert main(args + ["--out", str(tmp_path / "run")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_cli_trains_several_seeds_and_reports_their_spread(tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "--dataset",
        "digits",
        "--epochs",
        "1",
        "--seeds",
        "3",
        "8",
        "--out",
        str(out),
        "--set",
        "max_samples=200",
        "--set",
        "backbone_width=4",
        "--set",
        "num_subheads=1",
        "--set",
        "device=cpu",
    ]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert [m["seed"] for m in metrics["per_seed"]] == [3, 8]
    assert metrics["cluster_accuracy"] == pytest.approx(np.mean([m["cluster_accuracy"] for m in metrics["per_seed"]]))
    assert "cluster_accuracy_sd" in capsys.readouterr().out
    # every image's cluster: the label-free pick's and each seed's
    header, *rows = (out / "clusters.csv").read_text().splitlines()
    assert header == "image,cluster,seed_3,seed_8" and len(rows) == 200
    seed_8 = np.array([int(row.split(",")[-1]) for row in rows])
    labels = load_dataset("digits", None, max_samples=200, input_size=12, seed=0).labels.numpy()
    assert metrics["per_seed"][1]["cluster_accuracy"] == pytest.approx(
        clustering_metrics(seed_8, labels, 10, 10)["cluster_accuracy"]
    )
    # resuming keeps the checkpoint's seeds
    assert main(["--config", str(out / "config.yaml"), "--epochs", "2", "--out", str(out), "--resume"]) == 0
    assert [m["seed"] for m in json.loads((out / "metrics.json").read_text())["per_seed"]] == [3, 8]
