"""A Tune callback that records a search's trials in MLflow as they train, best effort.

``MLflowTrialLogger`` runs on the Tune driver. It opens (or, for a retried or resumed trial, finds
again) one run per trial when the trial starts, sends each new epoch as one batch of metrics with
the trial's status tags, and when the trial ends logs its figures, config and final status and
closes its run on a background thread (figures take seconds; Tune's event loop must not wait).
Every write is idempotent (``search.tracking.runs``). While the tracking server does not answer, the
logger skips its writes (the trials train on) and probes it every ``retry_seconds``: nothing waits
in memory, since Tune keeps every result in the trial's ``result.json``. When the search ends,
``search.tracking.reconcile`` sends what MLflow lacks, and the report (``report_path``) says what it could not.
"""

import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from mlflow.tracking import MlflowClient
from ray import tune

from iic.status import RunStatus
from search.deadline import ConfirmationDeadline
from search.ranking import trial_status
from search.tracking.reconcile import reconcile, write_report
from search.tracking.runs import (
    SearchRecord,
    create_trial_run,
    end_trial_run,
    ended_status,
    find_trial_run,
    logged_epochs,
    result_epoch,
    send_epochs,
    server_unreachable,
    wait_for_server,
)

# Shown in the one line printed when a trial starts.
SHOWN_SETTINGS = ("lr", "lamb", "batch_size", "repeats", "overcluster_k", "sobel", "crop_min_scale", "rotation_degrees")


class MLflowTrialLogger(tune.Callback):
    """Records a search's trials in MLflow from the Tune driver (see the module docstring); with
    ``quiet`` off it also prints one line when a trial starts and one when it ends. ``experiment_dir``:
    the folder of the Tune experiment it logs (storage path and name), whose records it reconciles."""

    def __init__(
        self,
        search: SearchRecord,
        report_path: str | Path,
        experiment_dir: str,
        retry_seconds: float = 30.0,
        time_budget_s: float | None = None,
        quiet: bool = False,
        deadline: ConfirmationDeadline | None = None,
    ):
        self.search = search
        self.report_path = str(report_path)
        self.experiment_dir = experiment_dir
        self.retry_seconds = retry_seconds
        self.time_budget_s = time_budget_s
        self.deadline = deadline  # the stopper that may end the search stage early (a budget stop too)
        self.quiet = quiet
        self._reset()

    def _reset(self) -> None:
        self._client = MlflowClient(self.search.tracking_uri)
        self._runs: dict[str, str] = {}  # trial id -> run id
        self._sent: dict[str, set[int]] = {}  # epochs MLflow took, per trial
        self._ended: dict[str, tuple[str, str]] = {}  # trial id -> (iic.status, run status)
        self._endings = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-ending")
        self._closed: dict[str, Future] = {}  # trial id -> whether its run was closed
        self._down_until: float | None = None
        self._started = time.monotonic()
        self.failures: list[str] = []

    def __getstate__(self):
        # Pickled with the experiment for Tuner.restore: settings only.
        return {
            key: getattr(self, key)
            for key in (
                "search",
                "report_path",
                "experiment_dir",
                "retry_seconds",
                "time_budget_s",
                "quiet",
                "deadline",
            )
        }

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._reset()

    def setup(self, **info):
        self._started = time.monotonic()  # the time budget counts from here (again on a resumed search)

    def _online(self) -> bool:
        """False while the server is known to be down; once retry_seconds have passed, probes it."""
        if self._down_until is None:
            return True
        if time.time() < self._down_until or server_unreachable(self.search.tracking_uri, timeout=3) is not None:
            self._down_until = max(self._down_until, time.time() + self.retry_seconds)
            return False
        print("MLflow answers again", flush=True)
        self._down_until = None
        return True

    def _write(self, what: str, trial_id: str, action) -> bool:
        """One idempotent MLflow write; False when it could not be made (reconcile sends it later)."""
        if not self._online():
            return False
        try:
            action()
            return True
        except Exception as err:  # noqa: BLE001 - any client, server or network error
            reason = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}" if str(err) else type(err).__name__
            if server_unreachable(self.search.tracking_uri, timeout=3) is None:
                self.failures.append(f"{trial_id}: could not {what}: {reason}")
            else:
                print(
                    f"MLflow at {self.search.tracking_uri} does not answer ({reason}); the trials go on, and what they "
                    f"report is sent when it answers (from Tune's result.json at the latest)",
                    flush=True,
                )
                self._down_until = time.time() + self.retry_seconds
            return False

    def _open(self, trial) -> str | None:
        """The trial's run id: found again (with the epochs it holds) or created."""
        if trial.trial_id not in self._runs:

            def open_run():
                run = find_trial_run(self._client, self.search, trial.trial_id)
                if run is None:
                    self._runs[trial.trial_id] = create_trial_run(
                        self._client, self.search, trial.trial_id, str(trial), trial.config
                    )
                    return
                self._client.update_run(run.info.run_id, status="RUNNING")
                self._sent[trial.trial_id] = logged_epochs(self._client, run.info.run_id)
                self._runs[trial.trial_id] = run.info.run_id

            self._write("open its MLflow run", trial.trial_id, open_run)
        return self._runs.get(trial.trial_id)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._open(trial)
        if not self.quiet:
            settings = " ".join(
                f"{key}={trial.config[key]:.3g}"
                if isinstance(trial.config[key], float)
                else f"{key}={trial.config[key]}"
                for key in SHOWN_SETTINGS
                if key in trial.config
            )
            print(f"trial {trial.trial_id} started: {settings}", flush=True)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        sent = self._sent.setdefault(trial.trial_id, set())
        epoch = result_epoch(result)
        if sent and epoch <= max(sent):
            return  # replayed by a trial restored from an older checkpoint: MLflow has this epoch
        run_id = self._open(trial)
        if run_id and self._write(
            f"log epoch {epoch}", trial.trial_id, lambda: send_epochs(self._client, run_id, [result])
        ):
            sent.add(epoch)

    def on_trial_complete(self, iteration, trials, trial, **info):
        status, run_status = ended_status(trial) or (trial_status(trial.last_result, False), "FINISHED")
        if status == RunStatus.EARLY_STOPPED and self._budget_spent():
            status = RunStatus.STOPPED_BY_BUDGET  # stopped as the search stage ended, not by the scheduler
        self._end(trial, status, run_status)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial, RunStatus.ERROR, "FAILED")

    def _end(self, trial, status: str, run_status: str) -> None:
        self._record_end(trial, status, run_status)
        run_id = self._open(trial)
        if run_id:
            self._closed[trial.trial_id] = self._endings.submit(
                self._write,
                "log its figures, status and end",
                trial.trial_id,
                lambda: end_trial_run(self._client, run_id, trial, status, run_status),
            )

    def _record_end(self, trial, status: str, run_status: str) -> None:
        self._ended[trial.trial_id] = (status, run_status)
        if not self.quiet:
            objective = trial.last_result.get("cluster_accuracy") if trial.last_result else None
            shown = f", cluster_accuracy {objective:.3f}" if isinstance(objective, float) else ""
            print(
                f"trial {trial.trial_id} {status} after {result_epoch(trial.last_result or {})} epochs{shown}",
                flush=True,
            )

    def _budget_spent(self) -> bool:
        """Whether the time budget has run out, or the deadline ended the search stage."""
        return (self.time_budget_s is not None and time.monotonic() - self._started >= self.time_budget_s - 1) or (
            self.deadline is not None and self.deadline.fired
        )

    def on_experiment_end(self, trials, **info):
        self._endings.shutdown(wait=True)
        if wait_for_server(self.search.tracking_uri):
            self._down_until = None
        budget_spent = self._budget_spent()
        for trial in trials:
            if trial.trial_id in self._runs and trial.trial_id not in self._ended and trial.status != trial.ERROR:
                # Tune stopped it as the experiment ended (it marks such trials TERMINATED without
                # ending them one by one): the time budget ran out, or the search was stopped.
                self._record_end(trial, RunStatus.STOPPED_BY_BUDGET if budget_spent else RunStatus.STOPPED, "FINISHED")
        closed = {trial_id for trial_id, done in self._closed.items() if done.done() and done.result()}
        report = reconcile(self._client, self.search, self.experiment_dir, trials, self._ended, self._sent, closed)
        report.failures[:0] = self.failures
        write_report(report, self.report_path)
