"""MLflow records of a search: one parent run per search, one child run per trial.

``MLflowTrialLogger`` is a Ray Tune callback on the driver. For every trial it opens (or, after a
retry or a resumed search, finds again) one MLflow run under the search's parent run, logs the
trial's full config as params, every epoch's metrics with step = epoch, and its status as tags; when
the trial ends it draws the confusion matrix and the cluster gallery from the trial's last
checkpoint and logs them with the trial's config YAML. Config values are never logged as metrics.

MLflow being unreachable must never stop training: every call is guarded, and what could not be
logged is collected, written to ``report_path`` and printed at the end of the search.
"""

import dataclasses
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray import tune

from iic.plots import plot_cluster_gallery, plot_confusion_matrix
from trainables.iic_trainable import SUMMARY_FILE, trial_iic_config

# What a trial reports that is worth a curve in MLflow (everything else is bookkeeping).
TRIAL_METRICS = (
    "cluster_accuracy", "majority_accuracy", "nmi", "ari", "loss", "loss_overcluster", "mutual_information",
    "largest_cluster_share", "empty_clusters", "cluster_size_entropy", "diagnostic_best_subhead_accuracy", "epoch_seconds",
)
SEARCH_TAG = "iic.search"
TRIAL_TAG = "iic.trial_id"
STATUS_TAG = "iic.status"
ROLE_TAG = "iic.role"
PARENT_TAG = "mlflow.parentRunId"
MAX_PARAM_LENGTH = 6000


def trial_run_filter(search_name: str, trial_id: str | None = None) -> str:
    query = f"tags.`{SEARCH_TAG}` = '{search_name}' and tags.`{ROLE_TAG}` = '{'trial' if trial_id else 'search'}'"
    return query + (f" and tags.`{TRIAL_TAG}` = '{trial_id}'" if trial_id else "")


def flat_params(config: dict, prefix: str = "") -> dict[str, str]:
    """A trial config as MLflow params: nested keys joined with '.', values as text."""
    params = {}
    for key, value in config.items():
        if isinstance(value, dict) and key != "class_map":
            params.update(flat_params(value, f"{prefix}{key}."))
        else:
            params[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, dict) else str(value)
    return {key: value[:MAX_PARAM_LENGTH] for key, value in params.items()}


class MLflowTrialLogger(tune.Callback):
    def __init__(self, tracking_uri: str, experiment_id: str, search_name: str, parent_run_id: str,
                 code_version: str, report_path: str | Path):
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.search_name = search_name
        self.parent_run_id = parent_run_id
        self.code_version = code_version
        self.report_path = str(report_path)
        self._client: MlflowClient | None = None
        self._run_ids: dict[str, str] = {}
        self._last_logged_epoch: dict[str, int] = {}
        self.failures: list[str] = []

    def __getstate__(self):
        # Pickled with the experiment for Tuner.restore: keep settings, drop clients and caches.
        state = dict(self.__dict__)
        state.update(_client=None, _run_ids={}, _last_logged_epoch={}, failures=[])
        return state

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def _guard(self, what: str, trial, action):
        """Run one MLflow call; on failure, note it and carry on (training matters more)."""
        try:
            return action()
        except Exception as err:  # noqa: BLE001 - any client/server/network error
            label = trial.trial_id if trial is not None else "search"
            self.failures.append(f"{label}: could not {what}: {type(err).__name__}: {str(err).splitlines()[0][:200]}")
            return None

    # ---- runs ---------------------------------------------------------------------------------

    def run_id(self, trial) -> str | None:
        """The trial's run: cached, else found by its tags (a retried or resumed trial continues
        its own run), else created with the trial's params."""
        if trial.trial_id in self._run_ids:
            return self._run_ids[trial.trial_id]

        def find_or_create():
            existing = self.client.search_runs([self.experiment_id], trial_run_filter(self.search_name, trial.trial_id), max_results=1)
            if existing:
                run_id = existing[0].info.run_id
                self.client.update_run(run_id, status="RUNNING")
                # A resumed trial may replay epochs after its last saved checkpoint: log each once.
                logged = self.client.get_metric_history(run_id, "loss")
                self._last_logged_epoch[trial.trial_id] = max((m.step for m in logged), default=0)
                return run_id
            run = self.client.create_run(
                self.experiment_id,
                run_name=str(trial),
                tags={
                    PARENT_TAG: self.parent_run_id, SEARCH_TAG: self.search_name, TRIAL_TAG: trial.trial_id,
                    ROLE_TAG: "trial", STATUS_TAG: "running", "iic.code_version": self.code_version,
                    "mlflow.source.git.commit": self.code_version,
                },
            )
            params = [Param(key, value) for key, value in flat_params(trial.config).items()]
            for start in range(0, len(params), 100):  # MLflow takes at most 100 params a batch
                self.client.log_batch(run.info.run_id, params=params[start : start + 100])
            return run.info.run_id

        run_id = self._guard("open its MLflow run", trial, find_or_create)
        if run_id is not None:
            self._run_ids[trial.trial_id] = run_id
        return run_id

    def on_trial_start(self, iteration, trials, trial, **info):
        self.run_id(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        run_id = self.run_id(trial)
        if run_id is None:
            return
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        if step <= self._last_logged_epoch.get(trial.trial_id, 0):
            return
        now = int(time.time() * 1000)
        metrics = [
            Metric(key, float(result[key]), now, step)
            for key in TRIAL_METRICS
            if isinstance(result.get(key), (int, float)) and not isinstance(result.get(key), bool) and math.isfinite(result[key])
        ]
        tags = [RunTag(STATUS_TAG, str(result.get("status", "running")))]
        if "chosen_subhead" in result:
            tags.append(RunTag("iic.chosen_subhead", str(result["chosen_subhead"])))
        def log():
            self.client.log_batch(run_id, metrics=metrics, tags=tags)
            self._last_logged_epoch[trial.trial_id] = step

        self._guard(f"log epoch {step}", trial, log)

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        status = last.get("status", "running")
        if status == "running":
            status = "early_stopped"  # the scheduler (ASHA) or the budget ended it between epochs
        self._finish(trial, status, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finish(trial, "error", "FAILED")

    def _finish(self, trial, status: str, run_status: str) -> None:
        run_id = self.run_id(trial)
        if run_id is None:
            return
        self._guard("log its figures and config", trial, lambda: self._log_artifacts(trial, run_id))
        self._guard("record its final status", trial, lambda: self.client.set_tag(run_id, STATUS_TAG, status))
        self._guard("close its run", trial, lambda: self.client.set_terminated(run_id, run_status))

    def _log_artifacts(self, trial, run_id: str) -> None:
        with tempfile.TemporaryDirectory() as folder:
            folder = Path(folder)
            trial_iic_config(trial.config).to_yaml(folder / "config.yaml")
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

    def on_experiment_end(self, trials, **info):
        Path(self.report_path).parent.mkdir(parents=True, exist_ok=True)
        Path(self.report_path).write_text(json.dumps({"failures": self.failures}, indent=2))


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
    existing = client.search_runs([experiment_id], trial_run_filter(search_name), max_results=1)
    if existing:
        run_id = existing[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        return run_id
    run = client.create_run(experiment_id, run_name=search_name, tags={SEARCH_TAG: search_name, ROLE_TAG: "search"})
    params = {f"search.{k}": str(v) for k, v in dataclasses.asdict(preset.search).items()}
    params.update({"search.preset": preset.name, **{f"cli.{k}": str(v) for k, v in arguments.items() if v is not None}})
    params.update({f"config.{k}": v for k, v in flat_params(preset.config).items()})
    items = [Param(key, value[:MAX_PARAM_LENGTH]) for key, value in params.items()]
    for start in range(0, len(items), 100):
        client.log_batch(run.info.run_id, params=items[start : start + 100])
    return run.info.run_id
