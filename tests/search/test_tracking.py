"""MLflowTrialLogger's Tune hooks called as Tune's driver calls them, on a real SQLite MLflow store
and real Tune ``Trial`` objects: what one driver leaves open, the next (``--resume``) closes."""

import pickle

from mlflow.tracking import MlflowClient
from ray.tune.experiment import Trial

from iic.status import RunStatus
from search.tracking import ROLE_TAG, SEARCH_TAG, STATUS_TAG, TRIAL_TAG, MLflowTrialLogger, prepare_experiment

SEARCH = "left-open"


def _trial(trial_id: str) -> Trial:
    return Trial("train_iic", config={"lr": 0.001, "epochs": 2}, trial_id=trial_id, stub=True)


def _report(logger: MLflowTrialLogger, trial: Trial, epoch: int, status: str = "running") -> None:
    result = {"epoch": epoch, "loss": -1.0 * epoch, "cluster_accuracy": 0.1 * epoch, "status": status}
    trial.run_metadata.last_result = result  # what Tune records before it calls the callbacks
    logger.on_trial_result(0, [], trial, result)


def _runs(client: MlflowClient, experiment_id: str) -> dict:
    runs = client.search_runs([experiment_id], f"tags.`{ROLE_TAG}` = 'trial'")
    return {run.data.tags[TRIAL_TAG]: run for run in runs}


def test_a_resumed_driver_closes_the_runs_its_killed_predecessor_left_open(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    experiment_id = prepare_experiment(uri, "iic-test")
    client = MlflowClient(uri)
    parent = client.create_run(experiment_id, run_name=SEARCH, tags={SEARCH_TAG: SEARCH, ROLE_TAG: "search"}).info.run_id
    first = MLflowTrialLogger(uri, experiment_id, SEARCH, parent, "test", tmp_path / "first.json")
    finished, lost, unfinished = _trial("aaaa0001"), _trial("bbbb0002"), _trial("cccc0003")
    for trial in (finished, lost, unfinished):
        first.on_trial_start(0, [], trial)
        _report(first, trial, 1)
    _report(first, finished, 2, status="completed")
    # The driver is killed here: Tune's snapshot holds `finished` (ended, its run not yet closed) and
    # `unfinished`; `lost` was proposed after the snapshot, so the resumed search never hears of it.
    finished.set_status(Trial.TERMINATED)

    second = pickle.loads(pickle.dumps(first))  # as Tuner.restore brings the callback back
    second.report_path = str(tmp_path / "second.json")
    replacement = _trial("dddd0004")  # what the searcher proposes instead of `lost`
    for trial in (unfinished, replacement):
        second.on_trial_start(0, [], trial)
        _report(second, trial, 2 if trial is unfinished else 1, status="completed")
        trial.set_status(Trial.TERMINATED)
        second.on_trial_complete(0, [], trial)
    assert {trial_id: run.info.status for trial_id, run in _runs(client, experiment_id).items()} == {
        "aaaa0001": "RUNNING", "bbbb0002": "RUNNING", "cccc0003": "FINISHED", "dddd0004": "FINISHED"}
    second.on_experiment_end([finished, unfinished, replacement])

    runs = _runs(client, experiment_id)
    assert {trial_id: (run.info.status, run.data.tags[STATUS_TAG]) for trial_id, run in runs.items()} == {
        "aaaa0001": ("FINISHED", "completed"), "bbbb0002": ("KILLED", RunStatus.LOST_WITH_DRIVER),
        "cccc0003": ("FINISHED", "completed"), "dddd0004": ("FINISHED", "completed")}
    # The trial finished before the kill gets the ending it missed: its config, and every epoch once.
    assert [a.path for a in client.list_artifacts(runs["aaaa0001"].info.run_id)] == ["config.yaml"]
    assert [m.step for m in client.get_metric_history(runs["aaaa0001"].info.run_id, "loss")] == [1, 2]
    assert [m.step for m in client.get_metric_history(runs["cccc0003"].info.run_id, "loss")] == [1, 2]
    assert second.failures == []
