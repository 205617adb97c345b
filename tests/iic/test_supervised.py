import json

import numpy as np
import pytest
import torch

from iic.checkpoint import CHECKPOINT_FILE
from iic.config import ConfigError
from iic.data import load_dataset
from iic.status import RunStatus
from iic.supervised import ACCURACY, SupervisedTrainer, held_out_split, train_supervised
from iic.train import main
from iic.trainer import Trainer
from tests.iic.test_data import ids, write_mnist  # real idx files


@pytest.fixture
def digits_config(tiny_config):
    """Digits at 12 px, 500 images: a few seconds an epoch on one core."""
    return tiny_config.replace(max_samples=500, input_size=12, backbone_width=8, epochs=4)


def _rows(images: torch.Tensor) -> list[bytes]:
    return sorted(bytes(row) for row in images.flatten(1).numpy())


def test_the_ceiling_learns_digits_far_above_chance(digits_config):
    seen = []
    result = train_supervised(digits_config, on_epoch=lambda metrics, trainer: seen.append(dict(metrics)))
    assert [m["epoch"] for m in seen] == [1, 2, 3, 4]
    assert result.status == RunStatus.COMPLETED and seen[-1]["status"] == RunStatus.COMPLETED
    assert result.metrics[ACCURACY] > 0.5  # chance is 0.1
    assert seen[-1]["loss"] < seen[0]["loss"]
    assert result.held_out_split == result.metrics["held_out_split"] == "stratified 20% of train (seed 0)"
    assert result.metrics["train_images"] == 400 and result.metrics["held_out_images"] == 100
    # the confusion matrix is of the held-out images: its diagonal is the accuracy
    assert result.confusion.shape == (10, 10) and result.confusion.sum() == 100
    assert np.trace(result.confusion) / 100 == pytest.approx(result.metrics[ACCURACY])
    for key in (
        "cluster_accuracy",
        "majority_accuracy",
        "nmi",
        "largest_cluster_share",
        "held_out_loss",
        "train_accuracy",
    ):
        assert key in result.metrics, key


def test_the_hold_out_is_a_stratified_seeded_fifth_of_the_runs_images(digits_config):
    split = held_out_split(digits_config, seed=7)
    data = load_dataset("digits", max_samples=500, input_size=12, seed=digits_config.seed)  # what an IIC run trains on
    assert (len(split.train), len(split.held_out)) == (400, 100)
    # the two sides partition exactly the run's images: none is on both
    assert _rows(torch.cat([split.train.images, split.held_out.images])) == _rows(data.images)
    every, held = (
        np.bincount(data.labels.numpy(), minlength=10),
        np.bincount(split.held_out.labels.numpy(), minlength=10),
    )
    assert np.all(np.abs(held - 0.2 * every) <= 1)  # each class a fifth held out
    assert _rows(held_out_split(digits_config, seed=7).held_out.images) == _rows(split.held_out.images)
    assert _rows(held_out_split(digits_config, seed=8).held_out.images) != _rows(split.held_out.images)


def test_a_dataset_with_a_test_split_is_measured_on_it_and_never_trains_on_it(tmp_path, tiny_config):
    write_mnist(tmp_path, n_train=30, n_test=12)
    config = tiny_config.replace(
        dataset="mnist", data_root=str(tmp_path), split="all", input_size=28, max_samples=20, epochs=1
    )  # 28: ids survive
    split = held_out_split(config, seed=0)
    assert split.name == "test"
    assert sorted(ids(split.held_out)) == list(range(101, 113))  # the whole test split
    assert len(split.train) == 20 and all(1 <= i <= 30 for i in ids(split.train))  # max_samples of train only
    result = train_supervised(config)
    assert result.metrics["held_out_split"] == "test" and result.confusion.sum() == 12


def test_resume_continues_exactly(tiny_config, tmp_path):
    config = tiny_config.replace(epochs=3)
    straight = train_supervised(config)

    def save_after_two(metrics, trainer):
        if metrics["epoch"] == 2:
            trainer.save_checkpoint(tmp_path / CHECKPOINT_FILE)
            return True  # stop, as if the machine went away

    assert train_supervised(config, on_epoch=save_after_two).status == RunStatus.STOPPED
    resumed = train_supervised(config, resume_from=tmp_path / CHECKPOINT_FILE)
    assert [m["epoch"] for m in resumed.history] == [1, 2, 3]
    assert resumed.metrics["loss"] == straight.metrics["loss"]
    assert resumed.metrics[ACCURACY] == straight.metrics[ACCURACY]
    assert np.array_equal(resumed.confusion, straight.confusion)


def test_a_checkpoint_of_another_seed_or_kind_is_refused(tiny_config, tmp_path):
    SupervisedTrainer(tiny_config).save_checkpoint(tmp_path / "supervised.pt")
    with pytest.raises(ConfigError, match=r"seed \(0 there, 5 here\) differ"):
        SupervisedTrainer(tiny_config, seed=5).load_checkpoint(tmp_path / "supervised.pt")
    Trainer(tiny_config).save_checkpoint(tmp_path / "iic.pt")
    with pytest.raises(ConfigError, match="from a 'iic' run, not a 'supervised' one"):
        SupervisedTrainer(tiny_config).load_checkpoint(tmp_path / "iic.pt")


def test_cli_writes_the_layout_of_an_iic_run(tmp_path, capsys):
    out = tmp_path / "ceiling"
    args = [
        "--supervised",
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
        "device=cpu",
    ]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in (
        ACCURACY,
        "held_out_split",
        "confusion_matrix",
        "class_names",
        "status",
        "epochs",
        "seconds",
        "per_seed",
        "loss",
        "cluster_accuracy",
        "largest_cluster_share",
    ):
        assert key in metrics, key
    assert metrics["held_out_split"] == "stratified 20% of train (seed 3)" and metrics["per_seed"][0]["seed"] == 3
    assert np.array(metrics["confusion_matrix"]).sum() == 40 and metrics["status"] == "completed"
    assert (out / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    assert "seed: 3" in (out / "config.yaml").read_text()
    assert "epoch   2/2" in capsys.readouterr().out
    assert (
        main(["--supervised", "--config", str(out / "config.yaml"), "--epochs", "3", "--out", str(out), "--resume"])
        == 0
    )
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 3


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "max_samples=12"], "raise max_samples (now 12)"),
        (["--seeds", "1", "2"], "--supervised trains one seed"),
        (["--set", "lr=-1"], "lr: must be positive"),
        (["--resume"], "no checkpoint"),
    ],
)
def test_cli_bad_input_exits_before_writing_anything(tmp_path, capsys, args, message):
    assert main(["--supervised", "--out", str(tmp_path / "run"), "--set", "device=cpu"] + args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_run_with_mixed_precision_and_resume(digits_config, tmp_path):
    config = digits_config.replace(device="cuda", amp=True, sobel=True, epochs=3)

    def stop_after_two(metrics, trainer):
        if metrics["epoch"] == 2:
            trainer.save_checkpoint(tmp_path / CHECKPOINT_FILE)
            return True

    train_supervised(config, on_epoch=stop_after_two)
    resumed = train_supervised(config, resume_from=tmp_path / CHECKPOINT_FILE)
    assert resumed.status == RunStatus.COMPLETED and [m["epoch"] for m in resumed.history] == [1, 2, 3]
    assert resumed.metrics[ACCURACY] > 0.5
