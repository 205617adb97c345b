import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from ray import tune
from ray.tune.schedulers import PopulationBasedTraining

from iic.status import RunStatus
from trainables.collapse import TrialSettings, collapse_ending, has_collapsed
from trainables.iic_trainable import (
    CHECKPOINT_FILE,
    EXPLOIT_EPOCH_KEY,
    EXPLOITED_FROM_KEY,
    PBT_KEY,
    SCHEDULE_KEY,
    SEEDS_KEY,
    SUMMARY_FILE,
    train_iic,
    trial_finished,
    trial_iic_config,
)


def test_collapse_needs_patience_epochs_in_a_row():
    history = [{"largest_cluster_share": s} for s in (0.9, 0.9, 0.3, 0.8, 0.7)]
    assert not has_collapsed(history, share=0.6, patience=3)
    assert has_collapsed(history, share=0.6, patience=2)
    assert not has_collapsed(history[:1], share=0.6, patience=2)


def test_no_information_for_patience_epochs_is_a_collapse_too():
    history = [{"largest_cluster_share": 0.2, "mutual_information": mi} for mi in (1e-7,) * 6 + (0.5,)]
    assert has_collapsed(history[:6], share=0.6, patience=3, information=0.01)
    assert not has_collapsed(history, share=0.6, patience=3, information=0.01)  # recovered at the end


def test_information_is_judged_only_on_epochs_after_the_warm_up():
    history = [{"largest_cluster_share": 0.2, "mutual_information": 1e-7} for _ in range(20)]
    # warm-up 10, patience 5: epochs 11-15 are the first judged, so epoch 15 is the first that can collapse
    assert not has_collapsed(history[:14], share=0.6, patience=5, information=0.01, warmup=10)
    assert has_collapsed(history[:15], share=0.6, patience=5, information=0.01, warmup=10)
    settings = TrialSettings()  # the documented rule: 5 epochs under 0.01 nats after a 10-epoch warm-up
    assert not settings.collapsed(history[:14]) and settings.collapsed(history[:15])


def _epochs(count: int, **values) -> list[dict]:
    return [{"largest_cluster_share": 0.12, "empty_clusters": 0, "mutual_information": 2.0, **values}] * count


def test_a_seed_that_ends_in_an_oscillating_collapse_is_collapsed():
    # the largest cluster swings between 0.40 and 0.90 (never 0.6 five epochs in a row), one cluster
    # empty, held-out MI 0.42: each of the three window rules finds it on its own
    swinging = [{"largest_cluster_share": s, "empty_clusters": 0, "mutual_information": 2.0} for s in (0.4, 0.9) * 3]
    settings = TrialSettings()
    assert not has_collapsed(_epochs(10) + swinging, share=0.6, patience=5, information=0.01, warmup=10)
    assert settings.collapsed(_epochs(10) + swinging)  # mean share 0.70 >= 3.5 / 10 clusters
    milder = [{**epoch, "largest_cluster_share": epoch["largest_cluster_share"] / 2.5} for epoch in swinging]
    assert not settings.collapsed(_epochs(10) + milder)  # mean share 0.28
    assert settings.collapsed(_epochs(12) + _epochs(5, empty_clusters=1))  # an empty cluster 5 epochs in a row
    assert not settings.collapsed(_epochs(12) + _epochs(4, empty_clusters=1) + _epochs(1))
    assert settings.collapsed(_epochs(12) + _epochs(5, mutual_information=0.42))  # under half its best 2.0
    assert not settings.collapsed(_epochs(12) + _epochs(5, mutual_information=1.2))
    assert not settings.collapsed(_epochs(5, largest_cluster_share=0.5, empty_clusters=3))  # still warming up


def test_no_good_seed_of_the_recorded_digits_runs_is_ever_collapsed():
    histories = []
    for path in (Path(__file__).parents[2] / "benchmarks" / "data").glob("histories_digits_default_*.json"):
        histories += json.loads(path.read_text())["histories"]
    settings = TrialSettings()
    good = [h for h in histories if h[-1]["cluster_accuracy"] > 0.8]
    assert len(histories) == 33 and len(good) == 31
    assert not any(settings.collapsed(h[:epoch]) for h in good for epoch in range(1, len(h) + 1))


def test_a_seed_collapses_when_all_its_initialisations_have_and_a_trial_when_all_its_seeds_have():
    settings, collapsed, fine = TrialSettings(), _epochs(10, largest_cluster_share=0.9), _epochs(10)
    # seeds 7 and 8, two initialisations each (a screening run before its pick)
    flags = settings.seeds_collapsed([collapsed, fine, collapsed, collapsed], [7, 7, 8, 8], [7, 8], 10)
    assert flags == [False, True]
    assert collapse_ending(flags, RunStatus.RUNNING, in_population=False) is None  # trains on
    assert collapse_ending(flags, RunStatus.COMPLETED, in_population=False) == RunStatus.PARTLY_COLLAPSED
    assert collapse_ending([True, True], RunStatus.RUNNING, in_population=False) == RunStatus.COLLAPSED
    assert collapse_ending([True, True], RunStatus.RUNNING, in_population=True) is None  # PBT replaces it
    assert collapse_ending([True, True], RunStatus.DIVERGED, in_population=False) is None
    assert collapse_ending([False, False], RunStatus.COMPLETED, in_population=False) is None


def test_trial_config_drops_the_gates(tiny_config):
    config = {**tiny_config.to_dict(), "gate": {"overclustering": False}}
    assert trial_iic_config(config) == tiny_config


def _fit(tmp_path, config: dict, settings: TrialSettings, name: str):
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(train_iic, settings=settings), {"cpu": 1}),
        param_space=config,
        run_config=tune.RunConfig(name=name, storage_path=str(tmp_path), verbose=0),
    )
    return tuner.fit()[0]


def test_reports_every_epoch_with_a_checkpoint(ray_session, tmp_path, tiny_config):
    result = _fit(tmp_path, tiny_config.replace(epochs=3).to_dict(), TrialSettings(collapse_share=1.1), "plain")
    assert result.error is None
    history = result.metrics_dataframe
    assert list(history["epoch"]) == [1, 2, 3]
    assert list(history["status"]) == ["running", "running", "completed"]
    with result.checkpoint.as_directory() as folder:
        summary = np.load(f"{folder}/{SUMMARY_FILE}")
        assert summary["confusion"].sum() == 240
        assert summary["cluster_sizes"].sum() == 240
        assert len(summary["sample_images"]) == len(summary["sample_clusters"]) > 0
        assert os.path.getsize(f"{folder}/{CHECKPOINT_FILE}") > 0


def test_collapsed_trial_stops_itself_and_says_so(ray_session, tmp_path, tiny_config):
    # every clustering holds >= 0% in its largest cluster: "collapsed" after 2 epochs of 5
    result = _fit(
        tmp_path,
        tiny_config.replace(epochs=5).to_dict(),
        TrialSettings(collapse_share=0.0, collapse_patience=2),
        "collapse",
    )
    assert result.metrics["status"] == "collapsed"
    assert result.metrics["epoch"] == 2


def test_a_collapse_in_the_last_epoch_is_a_collapse(ray_session, tmp_path, tiny_config):
    result = _fit(
        tmp_path,
        tiny_config.replace(epochs=1).to_dict(),
        TrialSettings(collapse_share=0.0, collapse_patience=1),
        "last",
    )
    assert result.metrics["status"] == "collapsed" and result.metrics["epoch"] == 1
    assert result.metrics["collapsed_seeds"] == 1 and result.metrics["collapsed/seed_0"] == 1.0


def test_a_trial_trains_its_seeds_at_once_and_reports_their_spread(ray_session, tmp_path, tiny_config):
    config = {**tiny_config.replace(epochs=2).to_dict(), SEEDS_KEY: [4, 9, 13]}
    result = _fit(tmp_path, config, TrialSettings(collapse_share=1.1), "seeds")
    metrics = result.metrics
    per_seed = [metrics[f"cluster_accuracy/seed_{i}"] for i in range(3)]
    assert metrics["num_seeds"] == 3 and metrics["status"] == "completed"
    assert metrics["collapsed_seeds"] == 0 and [metrics[f"collapsed/seed_{i}"] for i in range(3)] == [0.0] * 3
    assert metrics["cluster_accuracy"] == pytest.approx(np.mean(per_seed))
    assert metrics["cluster_accuracy_min"] == min(per_seed) and metrics["cluster_accuracy_sd"] == pytest.approx(
        np.std(per_seed, ddof=1)
    )
    assert metrics["label_free_pick_seed"] in (4, 9, 13)
    with result.checkpoint.as_directory() as folder:
        assert torch.load(f"{folder}/{CHECKPOINT_FILE}", weights_only=False)["seeds"] == [4, 9, 13]


class ReportsByTrial(tune.Callback, dict):
    """Every trial's reports as the driver received them, in order.

    (Not `Result.metrics_dataframe`: Ray rebuilds a restored trial's result file from the last synced copy,
    so under PBT it can lose the reports made just before and after an exploit.)
    """

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.setdefault(trial.trial_id, []).append(result)


@pytest.mark.slow  # a real two-trial PBT run
def test_a_trial_takes_over_another_trials_checkpoint_with_new_values_and_refuses_other_changes(
    ray_session, tmp_path, tiny_config
):
    # Two trials, a real PBT exploit after every epoch (synchronous: both trials at the same epoch):
    # the first gives the weaker trial the stronger one's checkpoint with a new lr and augmentation,
    # the second changes the batch size.
    explored = []

    def explore(config: dict) -> dict:
        explored.append(config)
        return {**config, "lr": 1e-3, "brightness": 0.1} if len(explored) == 1 else {**config, "batch_size": 16}

    pbt = PopulationBasedTraining(
        time_attr="training_iteration",
        perturbation_interval=1,
        quantile_fraction=0.5,
        custom_explore_fn=explore,
        synch=True,
    )
    reports = ReportsByTrial()
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(train_iic, settings=TrialSettings(collapse_share=1.1)), {"cpu": 1}),
        param_space={**tiny_config.replace(epochs=3).to_dict(), "lr": tune.grid_search([3e-3, 5e-3]), PBT_KEY: True},
        tune_config=tune.TuneConfig(scheduler=pbt, metric="mutual_information", mode="max"),
        run_config=tune.RunConfig(
            name="pbt", storage_path=str(tmp_path), stop=trial_finished, verbose=0, callbacks=[reports]
        ),
    )
    results = list(tuner.fit())
    assert len(explored) == 2
    [(recipient, row)] = [
        (trial_id, report)
        for trial_id, history in reports.items()
        for report in history
        if report.get(EXPLOIT_EPOCH_KEY) == 1
    ]
    [donor] = set(reports) - {recipient}
    # the recipient went on from the donor's epoch 1 with the new values, and said so
    assert row[EXPLOITED_FROM_KEY] == donor and row["epoch"] == 2 and row["status"] in ("running", "completed")
    assert row["schedule.lr"] == 1e-3 and row["schedule.brightness"] == 0.1
    donor_lr = reports[donor][0]["schedule.lr"]
    schedule = json.loads(row[SCHEDULE_KEY])
    assert schedule[0]["epoch"] == 1 and schedule[0]["values"]["lr"] == donor_lr  # epoch 1 was the donor's
    assert schedule[1] == {"epoch": 2, "values": {"lr": 1e-3, "brightness": 0.1}}
    assert trial_iic_config(explored[0], {SCHEDULE_KEY: row[SCHEDULE_KEY]}) == tiny_config.replace(
        epochs=3, lr=donor_lr, schedule=[{"epoch": 2, "values": {"lr": 1e-3, "brightness": 0.1}}]
    )
    # the second exploit changed the batch size: refused, naming it
    errors = [str(result.error) for result in results if result.error is not None]
    assert (
        len(errors) == 1
        and "batch_size differ" in errors[0]
        and "which then change from the restored epoch on" in errors[0]
    )


def test_an_unscheduled_trial_reports_no_schedule(ray_session, tmp_path, tiny_config):
    result = _fit(tmp_path, tiny_config.replace(epochs=1).to_dict(), TrialSettings(collapse_share=1.1), "unscheduled")
    assert not any(key.startswith("schedule") for key in result.metrics) and EXPLOITED_FROM_KEY not in result.metrics


def test_a_pbt_trial_trains_on_when_it_collapses_and_is_labelled_at_its_last_epoch(ray_session, tmp_path, tiny_config):
    # Synchronous PBT waits for every trial at each perturbation point: a member must not stop early;
    # PBT replaces a collapsed one with a better one's state.
    config = {**tiny_config.replace(epochs=3).to_dict(), PBT_KEY: True}
    result = _fit(tmp_path, config, TrialSettings(collapse_share=0.0, collapse_patience=1), "member")
    assert list(result.metrics_dataframe["status"]) == ["running", "running", "collapsed"]
    assert trial_finished("t", {"status": "collapsed"}) and not trial_finished("t", {"status": "running"})
