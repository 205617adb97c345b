"""Make MLflow hold what Tune recorded of a search: every epoch of every trial (from the trial's
``result.json``), each ended trial's figures, final status and closed run, and no run left open by a
driver that is gone.

    python search/reconcile.py --name iic-digits [--storage-path runs/search] [--tracking-uri sqlite:///mlflow.db]

It runs at the end of every search (``MLflowTrialLogger``), before ``--resume`` continues one, and as
this command for a search whose driver died while MLflow was down. Every write is idempotent
(``search.mlflow_runs``), so running it again changes nothing. Trials that Tune has not ended keep
their runs open: ``--resume`` continues them.
"""

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mlflow.tracking import MlflowClient
from ray import tune
from ray.air.constants import EXPR_RESULT_FILE

from iic.status import RunStatus
from search.driver import (
    SearchError,
    check_tracking_uri,
    code_version,
    default_storage_path,
    default_tracking_uri,
    resolve_storage_path,
)
from search.mlflow_runs import (
    ROLE_TAG,
    SEARCH_ROLE,
    STAGE_SUFFIXES,
    SEARCH_TAG,
    STATUS_TAG,
    TRIAL_ROLE,
    TRIAL_TAG,
    SearchRecord,
    create_trial_run,
    end_trial_run,
    ended_status,
    logged_epochs,
    result_epoch,
    send_epochs,
)

MAX_RUNS = 50_000  # MLflow's largest page of runs


@dataclass
class Report:
    """What a reconciliation did, and what MLflow still lacks (``unlogged``: trial id -> its gaps)."""

    failures: list[str] = field(default_factory=list)
    unlogged: dict[str, dict] = field(default_factory=dict)
    statuses: dict[str, str] = field(default_factory=dict)  # final iic.status of each ended trial
    sent: dict[str, list[int]] = field(default_factory=dict)  # epochs sent now, per trial
    closed_lost: list[str] = field(default_factory=list)  # runs of trials no driver will end


def trial_results(trial) -> list[dict]:
    """A trial's results from Tune's ``result.json``, one per epoch (the first Tune recorded: a
    trial restored from an older checkpoint reports some epochs again), in epoch order."""
    path = Path(trial.path, EXPR_RESULT_FILE).as_posix()
    try:
        with trial.storage.storage_filesystem.open_input_stream(path) as stream:
            lines = stream.readall().decode().splitlines()
    except (FileNotFoundError, OSError):
        return []
    by_epoch = {}
    for line in lines:
        try:
            result = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        by_epoch.setdefault(result_epoch(result), result)
    return [by_epoch[epoch] for epoch in sorted(by_epoch)]


def reconcile(
    client: MlflowClient,
    search: SearchRecord,
    trials: list,
    ended: dict[str, tuple[str, str]] | None = None,
    sent: dict[str, set[int]] | None = None,
    closed: set[str] = frozenset(),
) -> Report:
    """Send MLflow what it lacks of ``trials`` (Tune's Trial objects, live or restored from the
    experiment's state). ``ended`` gives the final (iic.status, run status) of trials the driver
    ended beyond Tune's own record (a time budget); where MLflow does not answer, ``sent`` and
    ``closed`` (what the driver's logger knows MLflow took) say what the report lists as missing."""
    ended = {**{t.trial_id: ended_status(t) for t in trials if ended_status(t)}, **(ended or {})}
    report = Report(statuses={trial_id: str(status) for trial_id, (status, _) in ended.items()})
    try:
        runs = {
            run.data.tags.get(TRIAL_TAG): run
            for run in client.search_runs([search.experiment_id], search.run_filter(), max_results=MAX_RUNS)
        }
    except Exception as err:  # noqa: BLE001 - the server is down: say what waits, and where
        _report_unreachable(report, search, trials, ended, sent or {}, closed, err)
        return report
    for trial in trials:
        try:
            _reconcile_trial(client, search, trial, runs.get(trial.trial_id), ended.get(trial.trial_id), report)
        except Exception as err:  # noqa: BLE001 - one trial's failure must not stop the others
            report.failures.append(f"{trial.trial_id}: could not reconcile its MLflow run: {type(err).__name__}: {err}")
    known = {trial.trial_id for trial in trials}
    for trial_id, run in runs.items():
        if trial_id not in known and run.info.status == "RUNNING":
            # proposed by a driver that was killed before Tune recorded the trial: no driver will end it
            client.set_tag(run.info.run_id, STATUS_TAG, RunStatus.LOST_WITH_DRIVER)
            client.set_terminated(run.info.run_id, "KILLED")
            report.closed_lost.append(trial_id)
    return report


def _reconcile_trial(
    client: MlflowClient, search: SearchRecord, trial, run, ending: tuple[str, str] | None, report: Report
) -> None:
    results = trial_results(trial)
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
    ended: dict,
    sent: dict[str, set[int]],
    closed: set[str],
    err: Exception,
) -> None:
    for trial in trials:
        epochs = sorted({result_epoch(result) for result in trial_results(trial)} - sent.get(trial.trial_id, set()))
        ending = trial.trial_id in ended and trial.trial_id not in closed
        if not epochs and not ending:
            continue
        report.unlogged[trial.trial_id] = {
            "epochs": epochs,
            "ending": ending,
            "final_status": report.statuses.get(trial.trial_id),
            "tune_results": f"{trial.path}/{EXPR_RESULT_FILE}",
        }
        missing = ([f"epochs {_span(epochs)}"] if epochs else []) + (
            ["its figures, config and final status"] if ending else []
        )
        report.failures.append(
            f"{trial.trial_id}: MLflow did not answer; not logged: {', '.join(missing)} "
            f"(Tune keeps every epoch in {trial.path}/{EXPR_RESULT_FILE})"
        )
    if report.unlogged:
        report.failures.append(
            f"MLflow at {search.tracking_uri} did not answer ({type(err).__name__}); once it does, send what it lacks "
            f"with: python search/reconcile.py --name {search.search_name} --tracking-uri {search.tracking_uri} "
            f"(and this search's --storage-path)"
        )


def _span(epochs: list[int]) -> str:
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


def restored_trials(experiment_dir: str) -> list:
    """The trials of a Tune experiment as its newest saved state has them (the public way to read it)."""
    return tune.ExperimentAnalysis(experiment_dir).trials


def reconcile_search(
    client: MlflowClient, tracking_uri: str, name: str, storage_path: str, code: str
) -> list[tuple[str, Report]]:
    """Reconcile a search's trials and its confirmation stage, from their saved Tune states."""
    parents = [
        run
        for experiment in client.search_experiments()
        for run in client.search_runs(
            [experiment.experiment_id], f"tags.`{SEARCH_TAG}` = '{name}' and tags.`{ROLE_TAG}` = '{SEARCH_ROLE}'"
        )
    ]
    if not parents:
        raise LookupError(f"no search named {name!r} in MLflow at {tracking_uri}; check --name and --tracking-uri")
    parent = parents[0]
    reports = []
    for role, suffix in STAGE_SUFFIXES.items():
        experiment_dir = f"{storage_path.rstrip('/')}/{name}{suffix}"
        if not tune.Tuner.can_restore(experiment_dir):
            if role == TRIAL_ROLE:
                raise LookupError(
                    f"no Tune records of search {name!r} at {experiment_dir}; check --name and --storage-path"
                )
            continue
        search = SearchRecord(tracking_uri, parent.info.experiment_id, name, parent.info.run_id, code, role)
        reports.append((role, reconcile(client, search, restored_trials(experiment_dir))))
    return reports


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python search/reconcile.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--name", required=True, help="the search's name (its Ray experiment folder and MLflow tag)")
    parser.add_argument("--storage-path", default=default_storage_path(), help="the search's Ray Tune storage")
    parser.add_argument("--tracking-uri", default=default_tracking_uri(), help="the search's MLflow store")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        tracking_uri = check_tracking_uri(args.tracking_uri)
        reports = reconcile_search(
            MlflowClient(tracking_uri), tracking_uri, args.name, resolve_storage_path(args.storage_path), code_version()
        )
    except (SearchError, LookupError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for role, report in reports:
        for trial_id, epochs in report.sent.items():
            print(f"{role} {trial_id}: sent epochs {_span(epochs)}")
        for trial_id in report.closed_lost:
            print(f"{role} {trial_id}: closed as {RunStatus.LOST_WITH_DRIVER} (Tune never recorded it)")
        for failure in report.failures:
            print(f"{role}: {failure}")
        if not (report.sent or report.closed_lost or report.failures):
            print(f"{role}: MLflow already held everything Tune recorded")
    return 1 if any(report.failures for _, report in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
