"""The MLflow runs of a search: one parent run per search, one child run per trial (or confirmation).

Names (tags, roles), filters, and the writes, each idempotent: an epoch's metrics carry the step
(epoch) and timestamp of Tune's result, so an epoch sent twice is stored once; tags, params and
artifacts are written again with equal values. ``search.tracking.logger`` sends them as a search runs,
``search.tracking.reconcile`` afterwards from Tune's records.
"""

import json
import math
import os
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.tracking import MlflowClient

from iic.label_free import LABEL_FREE_METRICS
from iic.plots import plot_cluster_gallery, plot_confusion_matrix
from iic.seeds import COLLAPSED_SEEDS, INIT_SEED, LABEL_FREE_PICK, PER_SEED_METRICS, SPREAD_METRICS
from iic.status import RunStatus
from search.ranking import trial_status
from trainables.iic_trainable import (
    EXPLOIT_EPOCH_KEY,
    EXPLOITED_FROM_KEY,
    SCHEDULE_METRIC_PREFIX,
    SOURCE_KEY,
    SUMMARY_FILE,
    trial_iic_config,
)

# What a trial reports that is worth a curve in MLflow (everything else is bookkeeping): means over
# its seeds, their spread, and the per-seed curves. Every logged epoch has "epoch" (never NaN).
EPOCH_METRIC = "epoch"
TRIAL_METRICS = (
    EPOCH_METRIC,
    "cluster_accuracy",
    "majority_accuracy",
    "nmi",
    "ari",
    "loss",
    "loss_overcluster",
    "mutual_information",
    "largest_cluster_share",
    "empty_clusters",
    COLLAPSED_SEEDS,
    "cluster_size_entropy",
    *LABEL_FREE_METRICS,
    "diagnostic_best_subhead_accuracy",
    "epoch_seconds",
    LABEL_FREE_PICK,
    "supervised_accuracy",
    "train_accuracy",
    "held_out_loss",
)
# Result keys recorded as tags of the trial's run, with their tag names.
RESULT_TAGS = {
    "status": "iic.status",
    "chosen_subhead": "iic.chosen_subhead",
    INIT_SEED: "iic.init_seed",
    "node_id": "iic.node_id",
    "gpu_ids": "iic.gpu_ids",
    EXPLOITED_FROM_KEY: "iic.exploited_from",
    EXPLOIT_EPOCH_KEY: "iic.exploit_epoch",
}
SEARCH_TAG = "iic.search"
TRIAL_TAG = "iic.trial_id"
STATUS_TAG = RESULT_TAGS["status"]
ROLE_TAG = "iic.role"
CONFIRMS_TAG = "iic.confirms"  # on a confirmation run: the trial whose config it retrains on fresh seeds
ERROR_TAG = "iic.error"  # on a search run that failed: what went wrong
START_TRIAL_TAG = "iic.start_trial_id"  # on a search run: the trial of the preset's own config (start_from_config)
PARENT_TAG = "mlflow.parentRunId"
MAX_PARAM_LENGTH = 6000
MAX_BATCH_METRICS, MAX_BATCH_PARAMS = 1000, 100  # MLflow's limits per log_batch
# Values of ROLE_TAG; each stage of a search but the search run itself is a Tune experiment of its
# own, named by the search's name and the stage's suffix.
SEARCH_ROLE, TRIAL_ROLE, CONFIRM_ROLE, CEILING_ROLE = "search", "trial", "confirm", "ceiling"
STAGE_SUFFIXES = {TRIAL_ROLE: "", CONFIRM_ROLE: "-confirm", CEILING_ROLE: "-ceiling"}


@dataclass(frozen=True)
class SearchRecord:
    """Where a search's runs of one role are recorded, and under which parent run."""

    tracking_uri: str
    experiment_id: str
    search_name: str
    parent_run_id: str
    code_version: str
    role: str = TRIAL_ROLE

    def run_filter(self, trial_id: str | None = None, status: str | None = None) -> str:
        return search_run_filter(self.search_name, self.role, trial_id, status)


def role_filter(role: str) -> str:
    """MLflow filter for the runs of one role, of every search."""
    return f"tags.`{ROLE_TAG}` = '{role}'"


def search_run_filter(search_name: str, role: str, trial_id: str | None = None, status: str | None = None) -> str:
    """MLflow filter for a search's runs of one role, optionally one trial's or those in one status."""
    query = f"tags.`{SEARCH_TAG}` = '{search_name}' and {role_filter(role)}"
    query += f" and tags.`{TRIAL_TAG}` = '{trial_id}'" if trial_id else ""
    return query + (f" and attributes.status = '{status}'" if status else "")


def logged_metric_names(result: dict) -> list[str]:
    """The keys of a trial's result that MLflow records as metrics."""
    spread = [f"{name}_{stat}" for name in SPREAD_METRICS for stat in ("min", "max", "sd")]
    per_seed = [key for key in result if key.partition("/seed_")[0] in PER_SEED_METRICS and "/seed_" in key]
    scheduled = [key for key in result if key.startswith(SCHEDULE_METRIC_PREFIX)]  # the values in force under PBT
    return [*TRIAL_METRICS, *spread, *per_seed, *scheduled]


def result_epoch(result: dict) -> int:
    return int(result.get("epoch", result.get("training_iteration", 0)))


def epoch_metrics(result: dict) -> list[Metric]:
    """One result's metrics, stamped with its epoch and Tune's own timestamp: the same each time they are sent."""
    timestamp, step = int(result.get("timestamp", 0)) * 1000, result_epoch(result)
    values = {**result, EPOCH_METRIC: step}
    return [
        Metric(name, float(values[name]), timestamp, step)
        for name in logged_metric_names(values)
        if isinstance(values.get(name), (int, float))
        and not isinstance(values[name], bool)
        and math.isfinite(values[name])
    ]


def result_tags(result: dict) -> list[RunTag]:
    return [RunTag(tag, tag_text(result[key])) for key, tag in RESULT_TAGS.items() if key in result]


def tag_text(value) -> str:
    """A result's value as a tag: lists comma-separated, whole numbers without a decimal point (a
    result read back from Tune's table holds an integer column with gaps as floats)."""
    if isinstance(value, list):
        return ",".join(map(tag_text, value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def flat_params(config: dict, prefix: str = "") -> dict[str, str]:
    """A trial config as MLflow params: nested keys joined with '.', values as text."""
    params = {}
    for key, value in config.items():
        if isinstance(value, dict) and key != "class_map":
            params.update(flat_params(value, f"{prefix}{key}."))
        else:
            params[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, dict) else str(value)
    return {key: value[:MAX_PARAM_LENGTH] for key, value in params.items()}


def log_params(client: MlflowClient, run_id: str, params: dict[str, str]) -> None:
    items = [Param(key, value[:MAX_PARAM_LENGTH]) for key, value in params.items()]
    for start in range(0, len(items), MAX_BATCH_PARAMS):
        client.log_batch(run_id, params=items[start : start + MAX_BATCH_PARAMS])


def server_unreachable(uri: str, timeout: float) -> str | None:
    """Why the MLflow server at ``uri`` does not answer its health check, or None when it does
    (a SQLite store has no server: always None)."""
    if not uri.startswith(("http://", "https://")):
        return None
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
            response.read()
        return None
    except (urllib.error.URLError, OSError) as err:
        return str(getattr(err, "reason", err))


# Seconds the end of a stage (its reconciliation, the search's summary) waits for a server that does
# not answer, unless the environment says: a restarted server is back within them, and nothing is
# left for search/reconcile.py.
END_WAIT_VARIABLE = "IIC_MLFLOW_END_WAIT_S"
END_WAIT_S = 180.0


def wait_for_server(uri: str, every: float = 2.0) -> bool:
    """Whether the MLflow server at ``uri`` answers within END_WAIT_S (a SQLite store at once); says
    once that it waits."""
    seconds = float(os.environ.get(END_WAIT_VARIABLE, END_WAIT_S))
    reason, deadline = server_unreachable(uri, timeout=3), time.monotonic() + seconds
    if reason is not None:
        print(f"MLflow at {uri} is down ({reason}); waiting up to {seconds:.0f} s for it", flush=True)
    while reason is not None and time.monotonic() < deadline:
        time.sleep(every)
        reason = server_unreachable(uri, timeout=3)
    return reason is None


# ---- one trial's run ------------------------------------------------------------------------------


def find_trial_run(client: MlflowClient, search: SearchRecord, trial_id: str) -> Run | None:
    found = client.search_runs([search.experiment_id], search.run_filter(trial_id), max_results=1)
    return found[0] if found else None


def create_trial_run(client: MlflowClient, search: SearchRecord, trial_id: str, name: str, config: dict) -> str:
    """A new run for the trial, with its config as params (the values it started with)."""
    tags = {
        PARENT_TAG: search.parent_run_id,
        SEARCH_TAG: search.search_name,
        TRIAL_TAG: trial_id,
        ROLE_TAG: search.role,
        STATUS_TAG: RunStatus.RUNNING,
        "iic.code_version": search.code_version,
        "mlflow.source.git.commit": search.code_version,
    }
    if SOURCE_KEY in config:
        tags[CONFIRMS_TAG] = str(config[SOURCE_KEY])
    run_id = client.create_run(search.experiment_id, run_name=name, tags=tags).info.run_id
    log_params(client, run_id, flat_params(config))
    return run_id


def logged_epochs(client: MlflowClient, run_id: str) -> set[int]:
    return {metric.step for metric in client.get_metric_history(run_id, EPOCH_METRIC)}


def send_epochs(client: MlflowClient, run_id: str, results: list[dict]) -> None:
    """Log results (one per epoch, in order), whole epochs per batch, with the newest one's tags."""
    batch: list[Metric] = []
    for result in results:
        metrics = epoch_metrics(result)
        if batch and len(batch) + len(metrics) > MAX_BATCH_METRICS:
            client.log_batch(run_id, metrics=batch)
            batch = []
        batch += metrics
    client.log_batch(run_id, metrics=batch, tags=result_tags(results[-1]) if results else [])


def end_trial_run(client: MlflowClient, run_id: str, trial, status: str, run_status: str) -> None:
    """The run's figures and config, its final status, closed: each step safe to repeat."""
    log_trial_artifacts(client, run_id, trial)
    client.set_tag(run_id, STATUS_TAG, status)
    client.set_terminated(run_id, run_status)


def log_trial_artifacts(client: MlflowClient, run_id: str, trial) -> None:
    """The trial's config YAML, and its confusion matrix and cluster gallery from its last checkpoint."""
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        trial_iic_config(trial.config, trial.last_result).to_yaml(folder / "config.yaml")  # with its schedule under PBT
        client.log_artifact(run_id, str(folder / "config.yaml"))
        if trial.checkpoint is None:
            return
        with trial.checkpoint.as_directory() as saved:
            if not (Path(saved) / SUMMARY_FILE).is_file():
                return  # a supervised ceiling's checkpoint: no clusters to draw
            summary = np.load(Path(saved) / SUMMARY_FILE)
            if summary["confusion"].size:
                plot_confusion_matrix(
                    summary["confusion"],
                    list(summary["class_names"]),
                    folder / "confusion_matrix.png",
                    title=str(trial),
                )
                client.log_artifact(run_id, str(folder / "confusion_matrix.png"))
            plot_cluster_gallery(dict(summary), folder / "cluster_gallery.png")
            client.log_artifact(run_id, str(folder / "cluster_gallery.png"))


def ended_status(trial) -> tuple[str, str] | None:
    """(iic.status, MLflow run status) of a trial Tune has ended, else None."""
    if trial.status not in (trial.TERMINATED, trial.ERROR):
        return None
    errored = trial.status == trial.ERROR
    return trial_status(trial.last_result, errored), "FAILED" if errored else "FINISHED"


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


def fail_search_run(tracking_uri: str, run_id: str, err: BaseException) -> None:
    """Mark a search's parent run FAILED (KILLED when interrupted) with the error as a tag."""
    try:
        client = MlflowClient(tracking_uri)
        client.set_tag(run_id, ERROR_TAG, f"{type(err).__name__}: {err}"[:MAX_PARAM_LENGTH])
        client.set_terminated(run_id, "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
    except Exception:  # noqa: BLE001 - MLflow itself may be what failed; the error on its way up matters more
        pass


def open_search_run(tracking_uri: str, experiment_id: str, search_name: str, preset, arguments: dict) -> str:
    """The search's parent run: found again on --resume, else created with the search's settings."""
    client = MlflowClient(tracking_uri)
    existing = client.search_runs([experiment_id], search_run_filter(search_name, SEARCH_ROLE), max_results=1)
    if existing:
        run_id = existing[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        return run_id
    run = client.create_run(experiment_id, run_name=search_name, tags={SEARCH_TAG: search_name, ROLE_TAG: SEARCH_ROLE})
    params = {f"search.{k}": str(v) for k, v in asdict(preset.search).items()}
    params.update({"search.preset": preset.name, **{f"cli.{k}": str(v) for k, v in arguments.items() if v is not None}})
    params.update({f"config.{k}": v for k, v in flat_params(preset.config).items()})
    log_params(client, run.info.run_id, params)
    return run.info.run_id
