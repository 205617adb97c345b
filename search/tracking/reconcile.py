"""Make MLflow hold what Tune recorded of a search: every epoch of every trial, each ended trial's
figures, final status and closed run, and no run left open by a driver that is gone.

It runs at the end of every search (``MLflowTrialLogger``), before ``--resume`` continues one, and as
``search/reconcile.py`` for a search whose driver died while MLflow was down. Every write is
idempotent (``search.tracking.runs``), so running it again changes nothing. Trials that Tune has not
ended keep their runs open: ``--resume`` continues them. Tune's records are read through its public
``ExperimentAnalysis``, wherever the storage is (a local folder, s3://, ...).
"""

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mlflow.tracking import MlflowClient
from ray import tune

from iic.status import RunStatus
from search.driver import experiment_dir
from search.tracking.runs import (
    SEARCH_ROLE,
    STAGE_SUFFIXES,
    STATUS_TAG,
    TRIAL_ROLE,
    TRIAL_TAG,
    SearchRecord,
    create_trial_run,
    end_trial_run,
    ended_status,
    logged_epochs,
    result_epoch,
    search_run_filter,
    send_epochs,
    wait_for_server,
)

MAX_RUNS = 50_000  # MLflow's largest page of runs
# The file of a trial's folder where Tune's JSON logger keeps every result: named in messages only
# (tests/search/test_tracking.py fails should Ray move it).
TUNE_RESULTS_FILE = "result.json"


@dataclass
class Report:
    """What a reconciliation did, and what MLflow still lacks (``unlogged``: trial id -> its gaps)."""

    failures: list[str] = field(default_factory=list)
    unlogged: dict[str, dict] = field(default_factory=dict)
    statuses: dict[str, str] = field(default_factory=dict)  # final iic.status of each ended trial
    sent: dict[str, list[int]] = field(default_factory=dict)  # epochs sent now, per trial
    closed_lost: list[str] = field(default_factory=list)  # runs of trials no driver will end


def restored_trials(experiment_dir: str) -> list:
    """The trials of a Tune experiment as its newest saved state has them."""
    return tune.ExperimentAnalysis(experiment_dir).trials


def tune_results(experiment_dir: str, trials: list) -> dict[str, list[dict]]:
    """Every trial's results as Tune recorded them, by trial id: one per epoch (the first Tune
    recorded: a trial restored from an older checkpoint reports some epochs again), in epoch order.
    ``trials``: Tune's Trial objects of the experiment at ``experiment_dir``, live or restored."""
    reported = [trial for trial in trials if trial.last_result]  # the others have no records to read
    if not reported:
        return {}
    try:
        frames = tune.ExperimentAnalysis(experiment_dir, trials=reported).trial_dataframes
    except ValueError:  # no experiment state saved yet
        return {}
    results = {}
    for trial_id, frame in frames.items():
        by_epoch: dict[int, dict] = {}
        for row in frame.to_dict("records"):
            # a key a result lacks is a gap (NaN) in its row of the table
            result = {key: value for key, value in row.items() if not _missing(value)}
            by_epoch.setdefault(result_epoch(result), result)
        results[trial_id] = [by_epoch[epoch] for epoch in sorted(by_epoch)]
    return results


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def reconcile(
    client: MlflowClient,
    search: SearchRecord,
    experiment: str,
    trials: list,
    ended: dict[str, tuple[str, str]] | None = None,
    sent: dict[str, set[int]] | None = None,
    closed: set[str] = frozenset(),
) -> Report:
    """Send MLflow what it lacks of ``trials`` (Tune's Trial objects of the experiment folder
    ``experiment``, live or restored from its state). ``ended`` gives the final (iic.status, run
    status) of trials the driver ended beyond Tune's own record (a time budget); where MLflow does
    not answer, ``sent`` and ``closed`` (what the driver's logger knows MLflow took) say what the
    report lists as missing."""
    ended = {**{t.trial_id: ended_status(t) for t in trials if ended_status(t)}, **(ended or {})}
    report = Report(statuses={trial_id: str(status) for trial_id, (status, _) in ended.items()})
    results = tune_results(experiment, trials)
    for trial in trials:
        if trial.last_result and not results.get(trial.trial_id):
            report.failures.append(
                f"{trial.trial_id}: reported to Tune, but its records in {trial.path} could not be read; "
                "MLflow may lack its epochs"
            )
    try:
        runs = _trial_runs(client, search)
    except Exception as err:  # noqa: BLE001 - the server is down: say what waits, and where
        _report_unreachable(report, search, trials, results, ended, sent or {}, closed, err)
        return report
    failed = _reconcile_trials(client, search, trials, results, runs, ended, report)
    if failed and wait_for_server(search.tracking_uri):  # the server went away in the middle: once more
        try:
            runs = _trial_runs(client, search)
            again = [trial for trial in trials if trial.trial_id in failed]
            failed = _reconcile_trials(client, search, again, results, runs, ended, report)
        except Exception as err:  # noqa: BLE001 - gone again: the failures below say what to run later
            failed = dict.fromkeys(failed, err)
    for trial_id, err in failed.items():
        report.failures.append(f"{trial_id}: could not reconcile its MLflow run: {type(err).__name__}: {err}")
    if failed:
        report.failures.append(
            f"once MLflow at {search.tracking_uri} answers, send what it lacks with: python search/reconcile.py "
            f"--name {search.search_name} --tracking-uri {search.tracking_uri} (and this search's --storage-path)"
        )
    known = {trial.trial_id for trial in trials}
    for trial_id, run in runs.items():
        if trial_id not in known and run.info.status == "RUNNING":
            # proposed by a driver that was killed before Tune recorded the trial: no driver will end it
            client.set_tag(run.info.run_id, STATUS_TAG, RunStatus.LOST_WITH_DRIVER)
            client.set_terminated(run.info.run_id, "KILLED")
            report.closed_lost.append(trial_id)
    return report


def _trial_runs(client: MlflowClient, search: SearchRecord) -> dict:
    """The search's trial runs in MLflow, by trial id."""
    found = client.search_runs([search.experiment_id], search.run_filter(), max_results=MAX_RUNS)
    return {run.data.tags.get(TRIAL_TAG): run for run in found}


def _reconcile_trials(client, search, trials, results, runs, ended, report) -> dict[str, Exception]:
    """Reconcile each of ``trials``; the error of each that could not be (one must not stop the others)."""
    failed = {}
    for trial in trials:
        try:
            run, ending = runs.get(trial.trial_id), ended.get(trial.trial_id)
            _reconcile_trial(client, search, trial, results.get(trial.trial_id, []), run, ending, report)
        except Exception as err:  # noqa: BLE001 - one trial's failure must not stop the others
            failed[trial.trial_id] = err
    return failed


def _reconcile_trial(
    client: MlflowClient,
    search: SearchRecord,
    trial,
    results: list[dict],
    run,
    ending: tuple[str, str] | None,
    report: Report,
) -> None:
    if run is None and not results and ending is None:
        return  # never started
    run_id = run.info.run_id if run else create_trial_run(client, search, trial.trial_id, str(trial), trial.config)
    present = logged_epochs(client, run_id) if run else set()
    missing = [result for result in results if result_epoch(result) not in present]
    if missing:
        send_epochs(client, run_id, missing)
        report.sent[trial.trial_id] = [result_epoch(result) for result in missing]
    if ending is not None and (run is None or run.info.status == "RUNNING"):
        end_trial_run(client, run_id, trial, *ending)


def _report_unreachable(
    report: Report,
    search: SearchRecord,
    trials: list,
    results: dict[str, list[dict]],
    ended: dict,
    sent: dict[str, set[int]],
    closed: set[str],
    err: Exception,
) -> None:
    for trial in trials:
        recorded = {result_epoch(result) for result in results.get(trial.trial_id, [])}
        epochs = sorted(recorded - sent.get(trial.trial_id, set()))
        ending = trial.trial_id in ended and trial.trial_id not in closed
        if not epochs and not ending:
            continue
        report.unlogged[trial.trial_id] = {
            "epochs": epochs,
            "ending": ending,
            "final_status": report.statuses.get(trial.trial_id),
            "tune_results": f"{trial.path}/{TUNE_RESULTS_FILE}",
        }
        missing = ([f"epochs {epoch_span(epochs)}"] if epochs else []) + (
            ["its figures, config and final status"] if ending else []
        )
        report.failures.append(
            f"{trial.trial_id}: MLflow did not answer; not logged: {', '.join(missing)} "
            f"(Tune keeps every epoch in {trial.path}/{TUNE_RESULTS_FILE})"
        )
    if report.unlogged:
        report.failures.append(
            f"MLflow at {search.tracking_uri} did not answer ({type(err).__name__}); once it does, send what it lacks "
            f"with: python search/reconcile.py --name {search.search_name} --tracking-uri {search.tracking_uri} "
            f"(and this search's --storage-path)"
        )


def epoch_span(epochs: list[int]) -> str:
    """Epochs as a reader writes them: 3, 2-5, or 1, 4, 7."""
    return (
        str(epochs[0])
        if len(epochs) == 1
        else f"{epochs[0]}-{epochs[-1]}"
        if epochs == list(range(epochs[0], epochs[-1] + 1))
        else ", ".join(map(str, epochs))
    )


def write_report(report: Report, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(report), indent=2))


def logged_statuses(report_path: str | Path) -> dict[str, str]:
    """The final status the MLflow logger gave each trial it ended, from its report."""
    report_path = Path(report_path)
    return json.loads(report_path.read_text()).get("statuses", {}) if report_path.is_file() else {}


def reconcile_search(
    client: MlflowClient, tracking_uri: str, name: str, storage_path: str, code: str
) -> list[tuple[str, Report]]:
    """Reconcile every stage of a search (its trials, confirmation and ceiling) from their saved Tune states."""
    parents = [
        run
        for experiment in client.search_experiments()
        for run in client.search_runs([experiment.experiment_id], search_run_filter(name, SEARCH_ROLE))
    ]
    if not parents:
        raise LookupError(f"no search named {name!r} in MLflow at {tracking_uri}; check --name and --tracking-uri")
    parent = parents[0]
    reports = []
    for role, suffix in STAGE_SUFFIXES.items():
        folder = experiment_dir(storage_path, name + suffix)
        if not tune.Tuner.can_restore(folder):
            if role == TRIAL_ROLE:
                raise LookupError(f"no Tune records of search {name!r} at {folder}; check --name and --storage-path")
            continue
        search = SearchRecord(tracking_uri, parent.info.experiment_id, name, parent.info.run_id, code, role)
        reports.append((role, reconcile(client, search, folder, restored_trials(folder))))
    return reports
