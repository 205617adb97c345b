"""The whole-search deadline: its estimate of the confirmation, and a real search it cuts short."""

import dataclasses
import pickle
import time

import pytest
from mlflow.tracking import MlflowClient

from search.deadline import CONFIRMATION_SLOWDOWN, ConfirmationDeadline
from search.preset import SearchDefaults
from search.run import main
from search.tracking.runs import CONFIRMS_TAG, ROLE_TAG, STATUS_TAG, TRIAL_TAG
from tests.search import flags

TWO_SEEDS_CONFIRMED_ON_THREE = SearchDefaults(seeds_per_trial=2, confirm_top=1, confirm_seeds=3, max_concurrent=1)
SLOWER = CONFIRMATION_SLOWDOWN


def _epochs(deadline, trial_id, seconds, value, first=1, objective="cluster_accuracy"):
    """Report epochs first, first + 1, ... of a trial, each taking the given seconds."""
    for epoch, took in enumerate(seconds, start=first):
        deadline(trial_id, {"epoch": epoch, "epoch_seconds": took, "time_total_s": 1000.0, objective: value})


def test_the_estimate_is_the_best_trials_epochs_so_far_for_the_confirmation_seeds():
    deadline = ConfirmationDeadline(10_000, TWO_SEEDS_CONFIRMED_ON_THREE, "max")
    assert deadline.confirmation_s() == 0 and not deadline.stop_all()
    # the confirmation retrains the trial as it stands: its epochs' 100 s (not its start-up, which
    # time_total_s holds) for two seeds, 150 s for three, times the slowdown measured
    _epochs(deadline, "a", [40.0, 30.0, 30.0], 0.9)
    assert deadline.confirmation_s() == pytest.approx(100 * 3 / 2 * SLOWER)
    # a slower trial that would not be confirmed does not count ...
    _epochs(deadline, "b", [100.0, 100.0], 0.5)
    assert deadline.confirmation_s() == pytest.approx(100 * 3 / 2 * SLOWER)
    # ... until it is among the best confirm_top; two configs, one at a time, take twice the slower's
    both = ConfirmationDeadline(10_000, dataclasses.replace(TWO_SEEDS_CONFIRMED_ON_THREE, confirm_top=2), "max")
    _epochs(both, "a", [40.0, 30.0, 30.0], 0.9)
    _epochs(both, "b", [100.0, 100.0], 0.5)
    assert both.confirmation_s() == pytest.approx(2 * 200 * 3 / 2 * SLOWER)
    # each epoch counts once, however often it is reported; a trial restored from an earlier
    # checkpoint trains its later epochs again, and they count as retrained
    _epochs(deadline, "a", [30.0], 0.95, first=3)
    assert deadline.trained_s("a") == pytest.approx(100)
    _epochs(deadline, "a", [35.0], 0.95, first=2)
    assert deadline.trained_s("a") == pytest.approx(75)


def test_a_minimising_objective_confirms_the_lowest():
    search = dataclasses.replace(TWO_SEEDS_CONFIRMED_ON_THREE, objective="loss")
    deadline = ConfirmationDeadline(10_000, search, "min")
    _epochs(deadline, "low", [50.0], -2.0, objective="loss")
    _epochs(deadline, "high", [100.0], 1.0, objective="loss")
    assert deadline.confirmation_s() == pytest.approx(50 * 3 / 2 * SLOWER)


def test_the_deadline_fires_once_the_confirmation_would_end_late_and_a_resumed_search_counts_afresh(capsys):
    generous = ConfirmationDeadline(10_000, TWO_SEEDS_CONFIRMED_ON_THREE, "max")
    _epochs(generous, "a", [100.0], 0.9)
    assert not generous.stop_all() and not generous.fired
    tight = ConfirmationDeadline(200, TWO_SEEDS_CONFIRMED_ON_THREE, "max")
    _epochs(tight, "a", [100.0, 40.0], 0.9)  # 140 s trained: 273 s of confirmation > 200
    assert tight.stop_all() and tight.fired and tight.stop_all()
    assert "the confirmation, about 273 s" in capsys.readouterr().out
    # a copy (Tune stops the search with one) has no estimate yet, keeps the clock, and its firing is the original's
    copy = pickle.loads(pickle.dumps(generous))
    assert copy.confirmation_s() == 0 and copy.deadline_s == 10_000 and not copy.fired
    assert copy.elapsed_s() >= generous.elapsed_s() - 1
    copy.deadline_s = 0
    assert copy.stop_all() and generous.fired


def test_the_deadline_counts_from_the_drivers_start():
    started = time.monotonic() - 100  # the driver started Ray and MLflow 100 s ago
    late = ConfirmationDeadline(90, TWO_SEEDS_CONFIRMED_ON_THREE, "max", started=started)
    assert late.elapsed_s() >= 100 and late.stop_all()  # past its deadline before any trial reported
    assert not ConfirmationDeadline(90, TWO_SEEDS_CONFIRMED_ON_THREE, "max").stop_all()


@pytest.mark.slow
def test_a_deadline_ends_the_search_stage_in_time_for_the_confirmation(
    ray_session, tmp_path, monkeypatch, steady_preset, capsys
):
    monkeypatch.setenv("IIC_STATE_DIR", str(tmp_path / "state"))
    # Trials of 400 epochs (no early stop), one at a time, each confirmed on one seed: a whole trial
    # takes minutes, so the search stage ends once confirming the first as it stands would end
    # after a 40 s deadline (a trial starts within ~10 s of it); the confirmation retrains it to the
    # epoch it reached.
    args = [
        "--tracking-uri",
        f"sqlite:///{tmp_path}/mlflow.db",
        "--storage-path",
        str(tmp_path / "ray"),
        *steady_preset,
        *flags.TINY,
        "--epochs",
        "400",
        "--num-samples",
        "2",
        "--confirm-top",  # after flags.TINY's: the later value holds
        "1",
        "--confirm-seeds",
        "1",
        "--deadline",
        "40",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "the search stage ends at" in out and "must end by its 40 s deadline" in out
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("iic-digits").experiment_id])
    [trial] = [r for r in runs if r.data.tags.get(ROLE_TAG) == "trial"]  # the second never started
    assert trial.data.tags[STATUS_TAG] == "stopped_by_budget" and trial.info.status == "FINISHED"
    [confirm] = [r for r in runs if r.data.tags.get(ROLE_TAG) == "confirm"]
    assert confirm.data.tags[STATUS_TAG] == "completed"
    # the best trial retrained for as many epochs as it trained (a trial the deadline stopped: fewer)
    assert confirm.data.tags[CONFIRMS_TAG] == trial.data.tags[TRIAL_TAG]
    epochs = len(client.get_metric_history(trial.info.run_id, "cluster_accuracy"))
    assert 1 <= epochs < 400 and len(client.get_metric_history(confirm.info.run_id, "cluster_accuracy")) == epochs


def test_a_deadline_that_is_not_positive_is_refused_before_anything_starts(tmp_path, capsys):
    assert main(["--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--deadline", "0"]) == 2
    assert "--deadline must be positive seconds (got 0.0)" in capsys.readouterr().err
