"""Screening of initialisations (iic/screening.py), as the trainer runs it."""

import numpy as np
import pytest
import torch

from iic.config import ConfigError, IICConfig
from iic.data import load_dataset
from iic.label_free import GENERALIZATION
from iic.screening import initialisations
from iic.trainer import Trainer, train


def _weights(trainer):
    return torch.cat([p.detach().flatten() for p in trainer.model.parameters()])


def test_screening_keeps_each_seeds_initialisation_with_the_highest_held_out_mi_which_trains_as_alone(tiny_config):
    config = tiny_config.replace(epochs=4, screen_inits=2, screen_epochs=2, overcluster_k=20)
    data = load_dataset("digits", None, max_samples=240, input_size=config.input_size, seed=config.seed)
    trainer = Trainer(config, data, seeds=[3, 5])
    inits = list(trainer.inits)
    assert len(inits) == 4 and inits[0] == 3 and inits[2] == 5 and len(set(inits)) == 4
    for epoch in (1, 2):
        metrics = trainer.run_epoch()
        if epoch == 1:  # screening: all four train, each seed reports its initialisation with the higher MI
            per_model = [history[-1] for history in trainer.seed_histories]
            reported = [max(per_model[i : i + 2], key=lambda m: m["mutual_information"]) for i in (0, 2)]
            assert len(trainer.inits) == 4 and metrics["num_seeds"] == 2
            assert metrics["cluster_accuracy"] == pytest.approx(np.mean([m["cluster_accuracy"] for m in reported]))
            assert [m["seed"] for m in per_model] == [3, 3, 5, 5] and [m["init_seed"] for m in per_model] == inits
            assert metrics["init_seed"] == [
                m["init_seed"] for m in reported
            ]  # which initialisation each seed's figures are
    later = Trainer(config.replace(screen_epochs=3), data, seeds=[3, 5])  # trains the same two epochs, keeping all four
    for _ in range(2):
        later.run_epoch()
    at_screening = {
        init: history[-1]["mutual_information"] for init, history in zip(later.inits, later.seed_histories, strict=True)
    }
    kept = list(trainer.inits)  # after epoch 2, one initialisation per seed: the higher MI
    assert kept == [max(inits[i : i + 2], key=at_screening.get) for i in (0, 2)]
    for _ in range(2):
        trainer.run_epoch()
    result = trainer.result()
    assert [run.seed for run in result.seeds] == [3, 5] and [run.init for run in result.seeds] == kept
    assert result.metrics["init_seed"] == kept
    # The kept models go on exactly as in a stack of all four that never dropped any (weights,
    # optimiser state and random streams carried over), and so as each would alone (up to the
    # floating-point noise of stacking: test_seeds_trained_at_once_equal_each_seed_trained_alone).
    all_four = train(config.replace(screen_inits=1), data=data, seeds=inits)
    for run, init in zip(result.seeds, kept, strict=True):
        assert all(m.pop("init_seed") == init for m in run.history)
        assert [{**m, "seed": init} for m in run.history] == all_four.seeds[
            inits.index(init)
        ].history  # reported as its seed
        assert np.array_equal(run.clusters, all_four.seeds[inits.index(init)].clusters)


@pytest.mark.parametrize(
    "screening, sizes",
    [
        ({"screen_inits": 2, "screen_epochs": 2}, (4, 2)),  # checkpoints before and after the pick
        ({"screen_inits": 3, "screen_epochs": 3}, (6, 2)),  # both before the pick, then after it
    ],
)
def test_a_screening_run_resumes_exactly_before_and_after_the_pick(tiny_config, tmp_path, screening, sizes):
    config = tiny_config.replace(epochs=4, **screening)
    straight = Trainer(config, seeds=[3, 5])
    for epoch in range(1, 5):
        straight.run_epoch()
        if epoch in (1, 3):
            straight.save_checkpoint(tmp_path / f"epoch{epoch}.pt")
    for epoch in (1, 3):
        resumed = Trainer(config, seeds=[3, 5])
        resumed.load_checkpoint(tmp_path / f"epoch{epoch}.pt")
        assert len(resumed.inits) == sizes[epoch == 3]
        while resumed.epoch < 4:
            resumed.run_epoch()
        assert resumed.inits == straight.inits
        assert resumed.history[-1]["loss"] == straight.history[-1]["loss"]
        assert torch.equal(_weights(resumed), _weights(straight))
    assert Trainer.saved_seeds(tmp_path / "epoch3.pt") == [3, 5]
    with pytest.raises(ConfigError, match="screen_inits"):  # which models train is the run's identity
        Trainer(config.replace(screen_inits=config.screen_inits + 1), seeds=[3, 5]).load_checkpoint(
            tmp_path / "epoch1.pt"
        )


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"screen_inits": 0}, "screen_inits: must be at least 1"),
        ({"screen_inits": 2, "screen_epochs": 0}, r"screen_epochs: must be at least 1 \(got 0\)"),
    ],
)
def test_bad_screening_is_refused_before_training(tiny_config, changes, message):
    with pytest.raises(ConfigError, match=message):
        Trainer(tiny_config.replace(**changes))


@pytest.mark.parametrize("stopped_after", [1, 2])  # while screening, before the pick
def test_a_screening_run_stopped_early_is_its_truncated_configs_run(tiny_config, stopped_after):
    # A search stops trials mid-run (ASHA, the budget, the deadline); confirming or exporting one
    # retrains its config truncated to the epochs it ran, which must be valid and train the same.
    config = tiny_config.replace(epochs=5, screen_inits=3, screen_epochs=3)
    data = load_dataset("digits", None, max_samples=240, input_size=config.input_size, seed=config.seed)
    stopped = Trainer(config, data, seeds=[3])
    for _ in range(stopped_after):
        stopped.run_epoch()
    truncated = config.truncated(stopped_after).validate(check_data=False)
    assert truncated.epochs == truncated.pick_epoch == stopped_after

    def trajectory(history):  # what was trained and measured, not how long it took or whether it ended
        ending = ("epoch_seconds", "status", GENERALIZATION)  # the probe runs after a run's last epoch only
        return [{key: value for key, value in m.items() if key not in ending} for m in history]

    assert trajectory(train(truncated, data=data, seeds=[3]).history) == trajectory(stopped.history)


def test_fewer_epochs_than_the_screening_epoch_pick_at_the_last_epoch(tiny_config):
    config = tiny_config.replace(epochs=2, screen_inits=2, screen_epochs=20)
    assert config.validate(check_data=False).pick_epoch == 2 and config.model_epochs() == 2 * 2
    trainer = Trainer(config, seeds=[3])
    trainer.run_epoch()
    assert len(trainer.inits) == 2  # both initialisations train until the pick
    trainer.run_epoch()
    assert len(trainer.inits) == 1 and trainer.result().seeds[0].init == trainer.inits[0]


def test_initialisations_start_with_the_seed_and_never_repeat_one_of_the_run():
    groups = initialisations([3, 5], 3)
    assert [group[0] for group in groups] == [3, 5] and len({init for group in groups for init in group}) == 6
    assert initialisations([3, 5], 3) == groups  # reproducible
    assert initialisations([5], 2) == [groups[1][:2]]  # a seed's initialisations depend on it alone, not the count
    assert initialisations([3, 5], 1) == [[3], [5]]
    taken = initialisations([3], 2)[0][1]
    assert taken not in initialisations([3, taken], 2)[0]  # another of the run's seeds is skipped


def test_model_epochs_count_every_initialisation_until_the_pick():
    config = IICConfig(epochs=45)
    assert config.model_epochs() == 45
    assert config.replace(screen_inits=3, screen_epochs=20).model_epochs() == 3 * 20 + 25
    assert [config.replace(screen_inits=3, screen_epochs=20).model_epochs(through=e) for e in (0, 10, 21)] == [
        0,
        30,
        61,
    ]
