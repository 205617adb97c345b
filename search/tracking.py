"""MLflow records of a search: one parent run per search, one child run per trial.

``MLflowTrialLogger`` is a Ray Tune callback on the driver. For every trial it opens (or, after a
retry or a resumed search, finds again) one MLflow run under the search's parent run, logs the
trial's full config as params, every epoch's metrics with step = epoch, and its status as tags; when
the trial ends it draws the confusion matrix and the cluster gallery from the trial's last
checkpoint and logs them with the trial's config YAML. Config values are never logged as metrics.

MLflow being unreachable must never stop training: every call is guarded; while a tracking server
is down, the records wait and are logged when it answers again; what could not be logged is
written to ``report_path`` and printed at the end of the search.
"""

import dataclasses
import json
import math
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray import tune

from iic.plots import plot_cluster_gallery, plot_confusion_matrix
from iic.seeds import LABEL_FREE_PICK, PER_SEED_METRICS, SPREAD_METRICS
from iic.status import RunStatus
from search.ranking import trial_status
from trainables.iic_trainable import EXPLOIT_EPOCH_KEY, EXPLOITED_FROM_KEY, SCHEDULE_METRIC_PREFIX, SOURCE_KEY, SUMMARY_FILE, trial_iic_config

# What a trial reports that is worth a curve in MLflow (everything else is bookkeeping): means over
# its seeds, their spread, and the per-seed curves.
TRIAL_METRICS = (
    "cluster_accuracy", "majority_accuracy", "nmi", "ari", "loss", "loss_overcluster", "mutual_information",
    "largest_cluster_share", "empty_clusters", "cluster_size_entropy", "diagnostic_best_subhead_accuracy", "epoch_seconds",
    LABEL_FREE_PICK,
)
SEARCH_TAG = "iic.search"
TRIAL_TAG = "iic.trial_id"
STATUS_TAG = "iic.status"
ROLE_TAG = "iic.role"
CONFIRMS_TAG = "iic.confirms"  # on a confirmation run: the trial whose config it retrains on fresh seeds
PARENT_TAG = "mlflow.parentRunId"
MAX_PARAM_LENGTH = 6000
# Values of ROLE_TAG
SEARCH_ROLE, TRIAL_ROLE, CONFIRM_ROLE = "search", "trial", "confirm"


def logged_metric_names(result: dict) -> list[str]:
    """The keys of a trial's result that MLflow records as metrics."""
    spread = [f"{name}_{stat}" for name in SPREAD_METRICS for stat in ("min", "max", "sd")]
    per_seed = [key for key in result if key.partition("/seed_")[0] in PER_SEED_METRICS and "/seed_" in key]
    scheduled = [key for key in result if key.startswith(SCHEDULE_METRIC_PREFIX)]  # the values in force under PBT
    return [*TRIAL_METRICS, *spread, *per_seed, *scheduled]


def search_run_filter(search_name: str, role: str, trial_id: str | None = None, status: str | None = None) -> str:
    """MLflow filter for a search's runs of one role ("search" or "trial"), optionally one trial's
    or those in one status."""
    query = f"tags.`{SEARCH_TAG}` = '{search_name}' and tags.`{ROLE_TAG}` = '{role}'"
    query += f" and tags.`{TRIAL_TAG}` = '{trial_id}'" if trial_id else ""
    return query + (f" and attributes.status = '{status}'" if status else "")


def flat_params(config: dict, prefix: str = "") -> dict[str, str]:
    """A trial config as MLflow params: nested keys joined with '.', values as text."""
    params = {}
    for key, value in config.items():
        if isinstance(value, dict) and key != "class_map":
            params.update(flat_params(value, f"{prefix}{key}."))
        else:
            params[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, dict) else str(value)
    return {key: value[:MAX_PARAM_LENGTH] for key, value in params.items()}


def server_unreachable(uri: str, timeout: float) -> str | None:
    """Why the MLflow server at ``uri`` does not answer its health check, or None when it does."""
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
            response.read()
        return None
    except (urllib.error.URLError, OSError) as err:
        return str(getattr(err, "reason", err))


class _Outage(Exception):
    """The tracking server does not answer: keep what waits, try again later."""


@dataclasses.dataclass
class _Backlog:
    """What one trial has reported that MLflow has not taken yet."""

    trial: object
    metrics: list[Metric] = dataclasses.field(default_factory=list)
    tags: dict[str, str] = dataclasses.field(default_factory=dict)
    last_step: int = 0  # the newest epoch queued or logged: replayed epochs are not queued again
    ending: list[str] = dataclasses.field(default_factory=list)  # steps of closing the run, once the trial ended
    # Epochs of a batch that was sent as the server went away: the server may have stored them
    # before it stopped answering (a lost reply), so while they wait they are "maybe logged".
    in_flight: set[int] = dataclasses.field(default_factory=set)
    final_status: tuple[str, str] = ("", "")  # (iic.status, MLflow run status)

    def waiting(self) -> bool:
        return bool(self.metrics or self.tags or self.ending)


class MLflowTrialLogger(tune.Callback):
    """Records a search in MLflow from the Tune driver; see the module docstring.

    While an ``http://`` tracking server does not answer, nothing blocks: each trial's epochs, tags
    and end wait in a backlog (the trials keep training), the server is probed every
    ``retry_seconds``, and the backlog is logged, in order, when it answers again. Whatever still
    waits when the search ends is written to ``report_path`` with the place Tune keeps it.
    """

    def __init__(self, tracking_uri: str, experiment_id: str, search_name: str, parent_run_id: str,
                 code_version: str, report_path: str | Path, retry_seconds: float = 30.0, role: str = TRIAL_ROLE,
                 time_budget_s: float | None = None):
        self.tracking_uri = tracking_uri
        self.role = role
        self.time_budget_s = time_budget_s
        self._started = time.monotonic()
        self.experiment_id = experiment_id
        self.search_name = search_name
        self.parent_run_id = parent_run_id
        self.code_version = code_version
        self.report_path = str(report_path)
        self.retry_seconds = retry_seconds
        self._client: MlflowClient | None = None
        self._run_ids: dict[str, str] = {}
        self._last_logged_epoch: dict[str, int] = {}
        self._backlogs: dict[str, _Backlog] = {}
        self._outage_since: float | None = None
        self._next_probe = 0.0
        self.failures: list[str] = []

    def __getstate__(self):
        # Pickled with the experiment for Tuner.restore: keep settings, drop clients and caches.
        state = dict(self.__dict__)
        state.update(_client=None, _run_ids={}, _last_logged_epoch={}, _backlogs={}, _outage_since=None, failures=[])
        return state

    def setup(self, **info):
        self._started = time.monotonic()  # the time budget counts from here (again on a resumed search)

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    # ---- reachability -------------------------------------------------------------------------

    def _reachable(self) -> bool:
        """Whether the tracking server answers (a SQLite store has no server)."""
        return not self.tracking_uri.startswith(("http://", "https://")) or server_unreachable(self.tracking_uri, timeout=3) is None

    def _online(self) -> bool:
        """False during an outage, except when a probe is due and the server answers again."""
        if self._outage_since is None:
            return True
        now = time.time()
        if now < self._next_probe:
            return False
        if not self._reachable():
            self._next_probe = now + self.retry_seconds
            return False
        print(f"MLflow answers again after {now - self._outage_since:.0f} s; logging what waited", flush=True)
        self._outage_since = None
        return True

    def _attempt(self, what: str, trial, action):
        """One MLflow call: (True, value), or (False, None) after an error that would only happen
        again (noted in the report). Raises _Outage when the server does not answer."""
        try:
            return True, action()
        except Exception as err:  # noqa: BLE001 - any client/server/network error
            reason = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}" if str(err) else type(err).__name__
            if not self._reachable():
                if self._outage_since is None:
                    self._outage_since = time.time()
                    print(f"MLflow at {self.tracking_uri} does not answer ({reason}); the trials go on and their "
                          f"records wait (retrying every {self.retry_seconds:g} s)", flush=True)
                self._next_probe = time.time() + self.retry_seconds
                raise _Outage from err
            self.failures.append(f"{trial.trial_id if trial is not None else 'search'}: could not {what}: {reason}")
            return False, None

    # ---- runs ---------------------------------------------------------------------------------

    def _find_or_create_run(self, trial) -> str:
        """The trial's run, found by its tags (a retried or resumed trial continues its own run),
        else created with the trial's params."""
        existing = self.client.search_runs([self.experiment_id], search_run_filter(self.search_name, self.role, trial.trial_id), max_results=1)
        if existing:
            run_id = existing[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            # A resumed trial may replay epochs after its last saved checkpoint: log each once.
            logged = self.client.get_metric_history(run_id, "loss")
            self._last_logged_epoch[trial.trial_id] = max((m.step for m in logged), default=0)
            return run_id
        tags = {
            PARENT_TAG: self.parent_run_id, SEARCH_TAG: self.search_name, TRIAL_TAG: trial.trial_id,
            ROLE_TAG: self.role, STATUS_TAG: RunStatus.RUNNING, "iic.code_version": self.code_version,
            "mlflow.source.git.commit": self.code_version,
        }
        if SOURCE_KEY in trial.config:
            tags[CONFIRMS_TAG] = str(trial.config[SOURCE_KEY])
        run = self.client.create_run(self.experiment_id, run_name=str(trial), tags=tags)
        params = [Param(key, value) for key, value in flat_params(trial.config).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(run.info.run_id, params=params[start : start + 100])
        return run.info.run_id

    def _backlog(self, trial) -> _Backlog:
        if trial.trial_id not in self._backlogs:
            self._backlogs[trial.trial_id] = _Backlog(trial)
        return self._backlogs[trial.trial_id]

    def _flush(self, backlog: _Backlog) -> None:
        """Log what one trial has waiting, in order: its run, its epochs, then its end."""
        trial = backlog.trial
        if trial.trial_id not in self._run_ids:
            opened, run_id = self._attempt("open its MLflow run", trial, lambda: self._find_or_create_run(trial))
            if not opened:
                if backlog.metrics:
                    self.failures.append(f"{trial.trial_id}: epochs {_epochs(backlog.metrics)} not logged (no run to log them to)")
                backlog.metrics, backlog.tags, backlog.ending = [], {}, []
                return
            self._run_ids[trial.trial_id] = run_id
        run_id = self._run_ids[trial.trial_id]
        already = self._last_logged_epoch.get(trial.trial_id, 0)
        backlog.metrics = [m for m in backlog.metrics if m.step > already]
        while backlog.metrics or backlog.tags:
            batch = backlog.metrics[:1000]  # MLflow's limit per batch
            tags = [RunTag(key, value) for key, value in backlog.tags.items()]
            try:
                logged, _ = self._attempt(f"log epochs {_epochs(batch)}" if batch else "update its tags", trial,
                                          lambda: self.client.log_batch(run_id, metrics=batch, tags=tags))
            except _Outage:
                backlog.in_flight.update(m.step for m in batch)
                raise
            if logged and batch:
                self._last_logged_epoch[trial.trial_id] = max(m.step for m in batch)
                backlog.in_flight.clear()  # sent again and stored (MLflow ignores an identical metric twice)
            backlog.metrics, backlog.tags = backlog.metrics[len(batch):], {}
        steps = {
            "artifacts": ("log its figures and config", lambda: self._log_artifacts(trial, run_id)),
            "status": ("record its final status", lambda: self.client.set_tag(run_id, STATUS_TAG, backlog.final_status[0])),
            "close": ("close its run", lambda: self.client.set_terminated(run_id, backlog.final_status[1])),
        }
        while backlog.ending:
            what, action = steps[backlog.ending[0]]
            self._attempt(what, trial, action)
            backlog.ending.pop(0)

    def _flush_all(self) -> None:
        try:
            for backlog in list(self._backlogs.values()):
                if backlog.waiting() and self._online():
                    self._flush(backlog)
        except _Outage:
            pass  # everything stays queued; _online() probes again in retry_seconds

    # ---- Tune callbacks -----------------------------------------------------------------------

    def on_trial_start(self, iteration, trials, trial, **info):
        self._backlog(trial).tags[STATUS_TAG] = RunStatus.RUNNING  # opens (or finds) the trial's run
        self._flush_all()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        backlog = self._backlog(trial)
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        if step <= max(backlog.last_step, self._last_logged_epoch.get(trial.trial_id, 0)):
            return  # an epoch replayed by a trial restored from an older checkpoint
        backlog.last_step = step
        now = int(time.time() * 1000)
        backlog.metrics += [
            Metric(key, float(result[key]), now, step)
            for key in logged_metric_names(result)
            if isinstance(result.get(key), (int, float)) and not isinstance(result.get(key), bool) and math.isfinite(result[key])
        ]
        backlog.tags[STATUS_TAG] = str(result.get("status", RunStatus.RUNNING))
        for key, tag in (("chosen_subhead", "iic.chosen_subhead"), ("node_id", "iic.node_id"), ("gpu_ids", "iic.gpu_ids"),
                         (EXPLOITED_FROM_KEY, "iic.exploited_from"), (EXPLOIT_EPOCH_KEY, "iic.exploit_epoch")):
            if key in result:
                value = result[key]
                backlog.tags[tag] = ",".join(map(str, value)) if isinstance(value, list) else str(value)
        self._flush_all()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._end(trial, *_final_status(trial))

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial, *_final_status(trial, errored=True))

    def _end(self, trial, status: str, run_status: str) -> None:
        backlog = self._backlog(trial)
        backlog.final_status = (status, run_status)
        backlog.ending = ["artifacts", "status", "close"]
        self._flush_all()

    def on_step_end(self, iteration, trials, **info):
        if self._outage_since is not None:
            self._flush_all()  # probes the server once retry_seconds have passed

    def _log_artifacts(self, trial, run_id: str) -> None:
        with tempfile.TemporaryDirectory() as folder:
            folder = Path(folder)
            trial_iic_config(trial.config, trial.last_result).to_yaml(folder / "config.yaml")  # with its schedule under PBT
            self.client.log_artifact(run_id, str(folder / "config.yaml"))
            checkpoint = trial.checkpoint
            if checkpoint is None:
                return
            with checkpoint.as_directory() as saved:
                summary = np.load(Path(saved) / SUMMARY_FILE)
                if summary["confusion"].size:
                    plot_confusion_matrix(summary["confusion"], list(summary["class_names"]), folder / "confusion_matrix.png", title=str(trial))
                    self.client.log_artifact(run_id, str(folder / "confusion_matrix.png"))
                plot_cluster_gallery(dict(summary), folder / "cluster_gallery.png")
                self.client.log_artifact(run_id, str(folder / "cluster_gallery.png"))

    def _close_runs_left_open(self, trials) -> None:
        """Runs of this search still RUNNING that no trial of this driver's will close: left by an
        earlier driver that was killed (``--resume`` continues the search) between two of its steps.

        A trial Tune had already finished when the earlier driver died gets its ending now (figures,
        final status, closed); a trial Tune never recorded (the driver died after the logger opened
        its run but before Tune's next snapshot of the experiment; the searcher then proposed another
        one) is closed as KILLED with status ``lost_with_driver``."""
        query = search_run_filter(self.search_name, self.role, status="RUNNING")
        found, runs = self._attempt("find runs left open", None, lambda: self.client.search_runs([self.experiment_id], query, max_results=1000))
        by_id = {trial.trial_id: trial for trial in trials}
        for run in runs if found else []:
            trial_id = run.data.tags.get(TRIAL_TAG)
            if trial_id in self._backlogs:
                continue  # this driver ran that trial: its own backlog closes the run (or reports why not)
            trial = by_id.get(trial_id)
            if trial is None:
                self._attempt("close the run of a trial lost with an earlier driver", None, lambda: self._close_lost(run.info.run_id))
            elif trial.status in (trial.TERMINATED, trial.ERROR):
                self._run_ids[trial_id] = run.info.run_id
                self._end(trial, *_final_status(trial, errored=trial.status == trial.ERROR))

    def _close_lost(self, run_id: str) -> None:
        self.client.set_tag(run_id, STATUS_TAG, RunStatus.LOST_WITH_DRIVER)
        self.client.set_terminated(run_id, "KILLED")

    def _end_stopped_trials(self) -> None:
        """Trials that Tune stopped as the experiment ended, without ending them one by one: the
        time budget ran out (or the search was stopped) while they trained."""
        budget_spent = self.time_budget_s is not None and time.monotonic() - self._started >= self.time_budget_s - 1
        for backlog in self._backlogs.values():
            if not backlog.final_status[0]:
                self._end(backlog.trial, RunStatus.STOPPED_BY_BUDGET if budget_spent else RunStatus.STOPPED, "FINISHED")

    def final_statuses(self) -> dict[str, str]:
        """iic.status of every trial this driver ended."""
        return {trial_id: backlog.final_status[0] for trial_id, backlog in self._backlogs.items() if backlog.final_status[0]}

    def on_experiment_end(self, trials, **info):
        self._end_stopped_trials()
        if self._outage_since is not None:
            self._next_probe = 0.0  # one last try before reporting
        try:
            if self._online():
                self._close_runs_left_open(trials)
        except _Outage:
            pass  # the server is down: the runs stay open, the report says what waits
        self._flush_all()
        unlogged = {}
        for trial_id, backlog in self._backlogs.items():
            if not backlog.waiting():
                continue
            where = getattr(backlog.trial, "path", None)
            epochs = sorted({m.step for m in backlog.metrics})
            maybe = sorted(backlog.in_flight.intersection(epochs))
            entry = {"run_id": self._run_ids.get(trial_id), "epochs": epochs, "maybe_logged": maybe,
                     "ending": list(backlog.ending), "final_status": backlog.final_status[0] or None, "tune_results": where}
            unlogged[trial_id] = entry
            missing = []
            if backlog.metrics:
                sent = f" ({'epoch' if len(maybe) == 1 else 'epochs'} {', '.join(map(str, maybe))} was being sent as the server went away: maybe there)" if maybe else ""
                missing.append(f"epochs {_epochs(backlog.metrics)}{sent}")
            missing += ["its figures, config and final status"] if backlog.ending else []
            missing += ["its tags"] if backlog.tags and not missing else []
            self.failures.append(f"{trial_id}: MLflow did not answer; not logged: {', '.join(missing)} "
                                 f"(Tune keeps every epoch in {where}/result.json)")
        Path(self.report_path).parent.mkdir(parents=True, exist_ok=True)
        report = {"failures": self.failures, "unlogged": unlogged, "statuses": self.final_statuses()}
        Path(self.report_path).write_text(json.dumps(report, indent=2))


def _final_status(trial, errored: bool = False) -> tuple[str, str]:
    """(iic.status tag, MLflow run status) of a trial that Tune ended (completed or errored)."""
    return trial_status(trial.last_result, errored), "FAILED" if errored else "FINISHED"


def _epochs(metrics: list[Metric]) -> str:
    steps = sorted({m.step for m in metrics})
    return "none" if not steps else str(steps[0]) if len(steps) == 1 else f"{steps[0]}-{steps[-1]}"


def prepare_experiment(tracking_uri: str, name: str) -> str:
    """The experiment's id, created if new, tagged so that MLflow 3.17's UI opens it as a
    training experiment; a SQLite store keeps artifacts in ``mlartifacts/`` beside the database."""
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location = None
        if tracking_uri.startswith("sqlite:///"):
            location = (Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts" / name).as_uri()
        experiment_id = client.create_experiment(name, artifact_location=location)
    else:
        experiment_id = experiment.experiment_id
    client.set_experiment_tag(experiment_id, "mlflow.experimentKind", "custom_model_development")
    return experiment_id


def open_search_run(tracking_uri: str, experiment_id: str, search_name: str, preset, arguments: dict) -> str:
    """The search's parent run: found again on --resume, else created with the search's settings."""
    client = MlflowClient(tracking_uri)
    existing = client.search_runs([experiment_id], search_run_filter(search_name, SEARCH_ROLE), max_results=1)
    if existing:
        run_id = existing[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        return run_id
    run = client.create_run(experiment_id, run_name=search_name, tags={SEARCH_TAG: search_name, ROLE_TAG: SEARCH_ROLE})
    params = {f"search.{k}": str(v) for k, v in dataclasses.asdict(preset.search).items()}
    params.update({"search.preset": preset.name, **{f"cli.{k}": str(v) for k, v in arguments.items() if v is not None}})
    params.update({f"config.{k}": v for k, v in flat_params(preset.config).items()})
    items = [Param(key, value[:MAX_PARAM_LENGTH]) for key, value in params.items()]
    for start in range(0, len(items), 100):
        client.log_batch(run.info.run_id, params=items[start : start + 100])
    return run.info.run_id
