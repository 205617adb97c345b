"""The MLflow logger's Tune hooks and the reconciliation, on a real SQLite MLflow store and the
trials of a real (tiny) Tune experiment: what one driver leaves undone, the reconciliation that
runs on --resume, at the end of a search, or as ``search/reconcile.py``, completes, once."""

import json
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from ray import cloudpickle, tune
from ray.tune.experiment import Trial

from iic.status import RunStatus
from search.reconcile import main as reconcile_main
from search.tracking.logger import MLflowTrialLogger
from search.tracking.reconcile import TUNE_RESULTS_FILE, reconcile, restored_trials, tune_results
from search.tracking.runs import (
    END_WAIT_VARIABLE,
    ROLE_TAG,
    SEARCH_TAG,
    STATUS_TAG,
    TRIAL_TAG,
    SearchRecord,
    create_trial_run,
    prepare_experiment,
    send_epochs,
)

EPOCHS = 3


def _reporting(config):
    """A trainable as small as can be: three epochs of made-up figures, the last one 'completed'."""
    for epoch in range(1, EPOCHS + 1):
        tune.report(
            {
                "epoch": epoch,
                "loss": -0.5 * epoch - config["lr"],
                "cluster_accuracy": 0.2 * epoch + config["lr"],
                "status": "completed" if epoch == EPOCHS else "running",
            }
        )


@pytest.fixture(scope="module")
def experiment(ray_session, tmp_path_factory) -> tuple[str, str]:
    """(storage path, name) of a finished Tune experiment of three trials."""
    storage = tmp_path_factory.mktemp("ray")
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import this test module
    tune.Tuner(
        _reporting,
        param_space={"lr": tune.grid_search([0.001, 0.002, 0.003]), "epochs": EPOCHS},
        run_config=tune.RunConfig(name="exp", storage_path=str(storage), verbose=0),
    ).fit()
    return str(storage), "exp"


@pytest.fixture
def search(tmp_path) -> SearchRecord:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    experiment_id = prepare_experiment(uri, "iic-test")
    parent = (
        MlflowClient(uri)
        .create_run(experiment_id, run_name="exp", tags={SEARCH_TAG: "exp", ROLE_TAG: "search"})
        .info.run_id
    )
    return SearchRecord(uri, experiment_id, "exp", parent, "test")


def _folder(experiment: tuple[str, str]) -> str:
    storage, name = experiment
    return f"{storage}/{name}"


def _results(trial) -> list[dict]:
    """A trial's results as Ray 2.60 lays them out: one JSON line per report in the trial folder's result.json."""
    return [json.loads(line) for line in (Path(trial.path) / TUNE_RESULTS_FILE).read_text().splitlines()]


def test_tunes_public_records_of_a_finished_experiment_hold_every_epoch_of_every_trial(experiment):
    # What reconcile reads (ExperimentAnalysis) must be what Tune wrote: should a Ray upgrade move or
    # reshape a trial's results, this fails here, not as epochs silently missing from MLflow.
    trials = restored_trials(_folder(experiment))
    recorded = tune_results(_folder(experiment), trials)
    assert len(trials) == 3 and set(recorded) == {trial.trial_id for trial in trials}
    for trial in trials:
        written = _results(trial)
        assert [result["epoch"] for result in recorded[trial.trial_id]] == list(range(1, EPOCHS + 1))
        for read, raw in zip(recorded[trial.trial_id], written, strict=True):
            for key in ("epoch", "loss", "cluster_accuracy", "status", "timestamp", "trial_id", "training_iteration"):
                assert read[key] == raw[key] and type(read[key]) is type(raw[key]), key
    # only the trials asked for
    assert tune_results(_folder(experiment), trials[:1]) == {trials[0].trial_id: recorded[trials[0].trial_id]}


def _runs(search: SearchRecord) -> dict:
    client = MlflowClient(search.tracking_uri)
    return {
        run.data.tags[TRIAL_TAG]: run
        for run in client.search_runs([search.experiment_id], f"tags.`{ROLE_TAG}` = 'trial'")
    }


def _steps(search: SearchRecord, run, key: str = "loss") -> list[int]:
    return [m.step for m in MlflowClient(search.tracking_uri).get_metric_history(run.info.run_id, key)]


def test_a_killed_drivers_gaps_are_filled_once_and_its_lost_runs_closed(experiment, search):
    trials = restored_trials(_folder(experiment))
    first, second, third = trials
    lost = Trial("train_iic", config={"lr": 0.004, "epochs": EPOCHS}, trial_id="lost0001", stub=True)
    driver = MLflowTrialLogger(search, "unused.json", _folder(experiment), quiet=True)
    for trial in (first, second, lost):
        driver.on_trial_start(0, [], trial)
        driver.on_trial_result(
            0, [], trial, _results(trial)[0] if trial is not lost else {"epoch": 1, "loss": 0.0, "timestamp": 1}
        )
    # The driver is killed here: MLflow has epoch 1 of three trials (one of which Tune never
    # recorded), no run for the third, and every run open; Tune's records have all three trials ended.
    report = reconcile(MlflowClient(search.tracking_uri), search, _folder(experiment), trials)

    runs = _runs(search)
    assert {trial_id: (run.info.status, run.data.tags[STATUS_TAG]) for trial_id, run in runs.items()} == {
        first.trial_id: ("FINISHED", "completed"),
        second.trial_id: ("FINISHED", "completed"),
        third.trial_id: ("FINISHED", "completed"),
        "lost0001": ("KILLED", RunStatus.LOST_WITH_DRIVER),
    }
    assert report.sent == {first.trial_id: [2, 3], second.trial_id: [2, 3], third.trial_id: [1, 2, 3]}
    assert report.closed_lost == ["lost0001"] and report.failures == []
    for trial in trials:
        run = runs[trial.trial_id]
        assert _steps(search, run) == [1, 2, 3]  # every epoch once
        history = MlflowClient(search.tracking_uri).get_metric_history(run.info.run_id, "cluster_accuracy")
        assert [m.value for m in history] == [r["cluster_accuracy"] for r in _results(trial)]  # Tune's own values
        assert float(run.data.params["lr"]) == trial.config["lr"]
        assert [a.path for a in MlflowClient(search.tracking_uri).list_artifacts(run.info.run_id)] == ["config.yaml"]

    again = reconcile(
        MlflowClient(search.tracking_uri), search, _folder(experiment), trials
    )  # idempotent: nothing left to do
    assert again.sent == {} and again.closed_lost == [] and again.failures == []
    assert all(_steps(search, run) == [1, 2, 3] for trial_id, run in _runs(search).items() if trial_id != "lost0001")


def test_the_logger_skips_an_epoch_a_restored_trial_reports_again(experiment, search):
    trial = restored_trials(_folder(experiment))[0]
    logger = MLflowTrialLogger(search, "unused.json", _folder(experiment), quiet=True)
    first, second, _ = _results(trial)
    logger.on_trial_start(0, [], trial)
    for result in (
        first,
        second,
        {**second, "loss": 99.0, "timestamp": second["timestamp"] + 7},
    ):  # a replay of epoch 2
        logger.on_trial_result(0, [], trial, result)
    [run] = _runs(search).values()
    history = MlflowClient(search.tracking_uri).get_metric_history(run.info.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, first["loss"]), (2, second["loss"])]


def test_an_epoch_sent_twice_is_stored_once(search):
    client = MlflowClient(search.tracking_uri)
    run_id = create_trial_run(client, search, "twice001", "twice", {"lr": 0.001})
    result = {"epoch": 4, "loss": -1.25, "cluster_accuracy": 0.5, "timestamp": 1_800_000_000, "status": "running"}
    send_epochs(client, run_id, [result])
    send_epochs(client, run_id, [result])  # a write whose reply was lost, sent again
    assert [(m.step, m.value, m.timestamp) for m in client.get_metric_history(run_id, "loss")] == [
        (4, -1.25, 1_800_000_000_000)
    ]


def test_with_mlflow_down_the_report_lists_every_epoch_and_where_tune_keeps_it(
    experiment, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv(END_WAIT_VARIABLE, "0")  # the stage's end does not wait for the server
    search = SearchRecord("http://127.0.0.1:9", "0", "exp", "parent", "test")  # nothing listens on port 9
    trials = restored_trials(_folder(experiment))
    logger = MLflowTrialLogger(search, tmp_path / "report.json", _folder(experiment), retry_seconds=60, quiet=True)
    for trial in trials:
        logger.on_trial_start(0, [], trial)
        for result in _results(trial):
            logger.on_trial_result(0, [], trial, result)
        logger.on_trial_complete(0, [], trial)
    logger.on_experiment_end(trials)

    report = json.loads((tmp_path / "report.json").read_text())
    assert {trial_id: entry["epochs"] for trial_id, entry in report["unlogged"].items()} == {
        t.trial_id: [1, 2, 3] for t in trials
    }
    assert all(
        entry["ending"] and entry["tune_results"].endswith("result.json") for entry in report["unlogged"].values()
    )
    assert report["statuses"] == {t.trial_id: "completed" for t in trials}
    assert any("python search/reconcile.py --name exp" in failure for failure in report["failures"])
    assert capsys.readouterr().out.count("does not answer") == 1  # said once, not per write


def test_reconcile_command_completes_a_search_from_its_tune_records(experiment, search, capsys):
    storage, name = experiment
    assert reconcile_main(["--name", name, "--storage-path", storage, "--tracking-uri", search.tracking_uri]) == 0
    assert capsys.readouterr().out.count("sent epochs 1-3") == 3
    runs = _runs(search)
    assert len(runs) == 3 and all(
        run.info.status == "FINISHED" and _steps(search, run) == [1, 2, 3] for run in runs.values()
    )
    assert reconcile_main(["--name", name, "--storage-path", storage, "--tracking-uri", search.tracking_uri]) == 0
    assert "already held everything" in capsys.readouterr().out
    assert reconcile_main(["--name", "nope", "--storage-path", storage, "--tracking-uri", search.tracking_uri]) == 2
    assert "no search named 'nope'" in capsys.readouterr().err
