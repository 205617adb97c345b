import json
import math

import numpy as np
import pytest
import torch

from iic.config import ConfigError
from iic.train import Trainer, main, train


def _weights(trainer):
    return torch.cat([p.detach().flatten() for p in trainer.model.parameters()])


def test_a_run_reports_every_epoch_with_the_metrics(tiny_config):
    seen = []
    result = train(tiny_config.replace(epochs=3), on_epoch=lambda metrics, trainer: seen.append(dict(metrics)))
    assert [m["epoch"] for m in seen] == [1, 2, 3]
    assert result.status == "completed" and seen[-1]["status"] == "completed"
    for key in ("loss", "cluster_accuracy", "majority_accuracy", "nmi", "ari", "largest_cluster_share",
                "empty_clusters", "cluster_size_entropy", "mutual_information", "chosen_subhead", "diagnostic_best_subhead_accuracy"):
        assert key in result.metrics, key
    assert result.metrics["majority_accuracy"] >= result.metrics["cluster_accuracy"]
    assert result.confusion.sum() == 240 and result.clusters.shape == (240,)
    assert seen[-1]["loss"] < seen[0]["loss"]  # it learns something


def test_same_config_and_seed_give_the_same_run(tiny_config):
    first, second = train(tiny_config), train(tiny_config)
    assert first.history[-1]["cluster_accuracy"] == second.history[-1]["cluster_accuracy"]
    assert first.history[-1]["loss"] == second.history[-1]["loss"]
    assert np.array_equal(first.clusters, second.clusters)
    other_seed = train(tiny_config.replace(seed=1))
    assert other_seed.history[-1]["loss"] != first.history[-1]["loss"]


def test_resume_continues_exactly(tiny_config, tmp_path):
    config = tiny_config.replace(epochs=3, overcluster_k=20)
    straight = Trainer(config)
    for _ in range(3):
        straight.run_epoch()

    def save_after_two(metrics, trainer):
        if metrics["epoch"] == 2:
            trainer.save_checkpoint(tmp_path / "checkpoint.pt")
            return True  # stop, as if the machine went away

    stopped = train(config, on_epoch=save_after_two)
    assert stopped.status == "stopped" and len(stopped.history) == 2
    resumed = Trainer(config)
    resumed.load_checkpoint(tmp_path / "checkpoint.pt")
    assert resumed.epoch == 2
    resumed.run_epoch()
    assert torch.equal(_weights(resumed), _weights(straight))
    assert resumed.history[-1]["loss"] == straight.history[-1]["loss"]
    assert [m["epoch"] for m in resumed.history] == [1, 2, 3]


def test_resume_refuses_a_different_config(tiny_config, tmp_path):
    trainer = Trainer(tiny_config)
    trainer.save_checkpoint(tmp_path / "checkpoint.pt")
    with pytest.raises(ConfigError, match="lr differ"):
        Trainer(tiny_config.replace(lr=0.01)).load_checkpoint(tmp_path / "checkpoint.pt")
    longer = Trainer(tiny_config.replace(epochs=5))  # more epochs is a legitimate continuation
    longer.load_checkpoint(tmp_path / "checkpoint.pt")


def test_overclustering_head_trains_alongside(tiny_config):
    result = train(tiny_config.replace(overcluster_k=30, epochs=1))
    assert math.isfinite(result.metrics["loss_overcluster"])
    assert result.metrics["loss_overcluster"] < 0


def test_sobel_and_both_view_augmentation_run(tiny_config):
    result = train(tiny_config.replace(sobel=True, sobel_keep_input=True, augment_both_views=True, epochs=1))
    assert result.status == "completed" and result.metrics["cluster_accuracy"] > 0


def test_divergence_ends_the_run_with_a_status(tiny_config):
    result = train(tiny_config.replace(lr=1e30, epochs=4))
    assert result.status == "diverged"
    assert len(result.history) < 4 and math.isnan(result.history[-1]["loss"])


def test_callback_can_stop_the_run(tiny_config):
    result = train(tiny_config.replace(epochs=5), on_epoch=lambda metrics, trainer: metrics["epoch"] >= 2)
    assert result.status == "stopped" and len(result.history) == 2


def test_cli_writes_metrics_config_checkpoint_and_plot(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["--dataset", "digits", "--epochs", "2", "--seed", "3", "--out", str(out),
                 "--set", "max_samples=200", "--set", "backbone_width=4", "--set", "num_subheads=1", "--set", "device=cpu"])
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


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "lr=-1"], "lr: must be positive"),
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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_run_with_mixed_precision(tiny_config):
    result = train(tiny_config.replace(device="cuda", amp=True, overcluster_k=20))
    assert result.status == "completed" and math.isfinite(result.metrics["loss"])
