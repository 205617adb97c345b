"""Pins what a short digits run trains to, so that a change meant to keep behaviour can show it did.

The run covers the paths a refactor of the trainer can break: Sobel, overclustering, two seeds
stacked into one model, screening of two initialisations a seed with a pick at epoch 2, and a run
stopped before the pick and resumed. The figures were recorded on the code as it stood before the
redesign of iic/ (same config, same seeds); on the same machine a run gives them bit for bit.
"""

import pytest

from iic.config import IICConfig
from iic.trainer import train

SEEDS = [3, 7]
CONFIG = IICConfig(
    dataset="digits",
    max_samples=300,
    input_size=12,
    sobel=True,
    backbone_width=4,
    num_subheads=2,
    overcluster_k=20,
    batch_size=32,
    repeats=2,
    epochs=4,
    screen_inits=2,
    screen_epochs=2,
    device="cpu",
)
# (epoch, loss, cluster_accuracy) of the run combined over its seeds, and each seed's final accuracy.
PINNED_HISTORY = [
    (1, -1.3794888854026794, 0.32666666666666666),
    (2, -1.4195420145988464, 0.365),
    (3, -1.5195509791374207, 0.35333333333333333),
    (4, -1.6291961669921875, 0.4),
]
PINNED_SEED_ACCURACY = [0.38666666666666666, 0.41333333333333333]


def _history(result):
    return [(m["epoch"], m["loss"], m["cluster_accuracy"]) for m in result.history]


def check_pinned(result):
    assert [epoch for epoch, _, _ in _history(result)] == [1, 2, 3, 4]
    for (epoch, loss, accuracy), (_, pinned_loss, pinned_accuracy) in zip(
        _history(result), PINNED_HISTORY, strict=True
    ):
        assert loss == pytest.approx(pinned_loss, rel=1e-4, abs=1e-5), f"epoch {epoch}: loss"
        assert accuracy == pytest.approx(pinned_accuracy, abs=1e-9), f"epoch {epoch}: cluster_accuracy"
    assert [run.metrics["cluster_accuracy"] for run in result.seeds] == pytest.approx(PINNED_SEED_ACCURACY, abs=1e-9)


def test_a_short_digits_run_trains_to_its_pinned_figures():
    check_pinned(train(CONFIG, seeds=SEEDS))


def test_a_run_stopped_before_the_pick_and_resumed_trains_to_the_same_figures(tmp_path):
    checkpoint = tmp_path / "checkpoint.pt"

    def stop_after_one(metrics, trainer):
        trainer.save_checkpoint(checkpoint)
        return metrics["epoch"] == 1

    stopped = train(CONFIG, on_epoch=stop_after_one, seeds=SEEDS)
    assert stopped.status == "stopped" and len(stopped.history) == 1
    check_pinned(train(CONFIG, resume_from=checkpoint, seeds=SEEDS))
