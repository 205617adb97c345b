"""What every command that drives trials shares (the search, its confirmation stage): checking the
MLflow store, joining or starting Ray, the trainable with the search's resources, Tune's param space
of given points, where experiments and the driver's own records go, and the environment the driver
runs in.
"""

import os
import subprocess
from pathlib import Path

import ray
import yaml
from ray import tune
from ray.tune import CLIReporter

from search.preset import COLLAPSE_SETTINGS, Preset
from search.tracking.runs import TRIAL_ROLE, server_unreachable
from trainables.iic_trainable import TrialSettings, train_iic

# Where a search's records and checkpoints go unless the command line or the environment says.
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_STORAGE_PATH = "runs/search"


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)


def default_storage_path() -> str:
    return os.environ.get("IIC_STORAGE_PATH", DEFAULT_STORAGE_PATH)


class SearchError(ValueError):
    """A search that cannot start; the message says what to change."""


def check_tracking_uri(uri: str) -> str:
    """sqlite paths become absolute (trials and the UI must find the same file); http servers must answer."""
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///")).expanduser().resolve()
        if not path.parent.is_dir():
            raise SearchError(
                f"--tracking-uri {uri}: folder {path.parent} does not exist; create it or choose another path"
            )
        return f"sqlite:///{path}"
    if uri.startswith(("http://", "https://")):
        reason = server_unreachable(uri, timeout=5)
        if reason is not None:
            raise SearchError(
                f"--tracking-uri {uri}: the MLflow server does not answer ({reason}); "
                "start it (mlflow server --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000) or fix "
                "the address"
            )
        return uri
    raise SearchError(
        f"--tracking-uri {uri}: use sqlite:///FILE or http(s)://HOST:PORT (MLflow 3.17's file store is not supported)"
    )


# Where `ray up` leaves the cluster launcher's config on the head node (where drivers run).
LAUNCHER_CONFIG = "~/ray_bootstrap_config.yaml"


def launchable_node_types() -> list[dict]:
    """Resources of each node type the cluster's autoscaler may start: from the cluster config in
    Ray's GCS where an autoscaler records one, else from the config `ray up` leaves on this head
    node; none on a cluster without an autoscaler."""
    config = gcs_cluster_config()
    if config is not None and config.node_group_configs:
        return [dict(group.resources) for group in config.node_group_configs if group.max_count != 0]
    path = Path(LAUNCHER_CONFIG).expanduser()
    try:
        launcher = yaml.safe_load(path.read_text()) if path.is_file() else {}
    except (OSError, yaml.YAMLError):
        return []
    node_types = (launcher or {}).get("available_node_types") or {}
    return [dict(node.get("resources") or {}) for node in node_types.values() if node.get("max_workers", 0) > 0]


def gcs_cluster_config():
    """The autoscaler's cluster config as Ray's GCS holds it (None without one). No public API reads
    it in Ray 2.60 (Ray Train and Data use this private one too); it is isolated here, and
    tests/search/test_driver.py fails if a Ray upgrade moves or changes it."""
    from ray._private.state import state

    return state.get_cluster_config()


def start_ray(address: str | None, preset: Preset, storage_path: str) -> bool:
    """Join the cluster (or start a local Ray, or use the one this process already has) and check
    that one trial fits on one node, now or once the autoscaler adds it. Returns whether Ray was
    started here."""
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False) if address else ray.init(include_dashboard=False)
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    launchable = launchable_node_types()
    shapes = [node["Resources"] for node in nodes] + launchable
    most_cpus = max(shape.get("CPU", 0) for shape in shapes)
    most_gpus = max(shape.get("GPU", 0) for shape in shapes)
    search = preset.search
    problems = []
    if search.cpus_per_trial > most_cpus:
        problems.append(
            f"--cpus-per-trial {search.cpus_per_trial}: no node has that many CPUs (largest: {most_cpus:g}); lower it"
        )
    if search.gpus_per_trial > most_gpus:
        problems.append(
            f"--gpus-per-trial {search.gpus_per_trial}: no node has that many GPUs (largest: {most_gpus:g}); "
            + ("use --gpus-per-trial 0 on a machine without GPUs" if most_gpus == 0 else "lower it")
        )
    if (len(nodes) > 1 or launchable) and "://" not in storage_path:
        problems.append(
            f"--storage-path {storage_path}: this Ray cluster has {len(nodes)} nodes"
            + (" and an autoscaler that adds more" if launchable else "")
            + ", and trials on other nodes cannot write checkpoints to a local folder; give shared storage such as "
            "s3://BUCKET/iic-search (Ray needs it since 2.7), or file:///PATH for a network filesystem mounted at "
            "PATH on every node"
        )
    if problems:
        if started:
            ray.shutdown()
        raise SearchError("the cluster cannot run this search:\n  " + "\n  ".join(problems))
    return started


def code_version() -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        from importlib.metadata import version

        return "iic-search " + version("iic-search")


def trial_resources(preset: Preset) -> dict:
    return {"cpu": preset.search.cpus_per_trial, "gpu": preset.search.gpus_per_trial}


def make_trainable(preset: Preset):
    """The trial function with the preset's collapse rule and resources."""
    settings = TrialSettings(**{name: getattr(preset.search, name) for name in COLLAPSE_SETTINGS})
    return tune.with_resources(tune.with_parameters(train_iic, settings=settings), trial_resources(preset))


def trial_dirname(trial) -> str:
    """A trial's folder: its id (its config is in params.json and MLflow, not in the folder's name)."""
    return trial.trial_id


def resolve_storage_path(path: str) -> str:
    """Tune's storage: a URI as it is (s3://, file://), a local folder made absolute."""
    return path if "://" in path else str(Path(path).expanduser().resolve())


def experiment_dir(storage_path: str, name: str) -> str:
    """The folder of Tune's experiment ``name`` in the storage (a local folder or a URI)."""
    return f"{storage_path.rstrip('/')}/{name}"


def state_dir(name: str) -> Path:
    """A local folder of the driver's own for this search (the storage path may be remote)."""
    return Path(os.environ.get("IIC_STATE_DIR", Path.home() / ".iic-search")) / name


def report_path(name: str, role: str = TRIAL_ROLE) -> Path:
    """Where the MLflow logger of a search's stage reports what it could not record, and each trial's status."""
    return state_dir(name) / ("mlflow_report.json" if role == TRIAL_ROLE else f"mlflow_report_{role}.json")


def set_driver_environment() -> None:
    """Defaults for MLflow's client and Tune in the driver (a user's own settings win)."""
    # MLflow's client retries a dead server for ~4 minutes a call by default, which would hold up
    # Tune's event loop (and so every trial's reports); the logger keeps records waiting instead.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    # One "View run … at" line per finished trial is noise; the summary prints the runs page.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    # With a checkpoint every epoch and num_to_keep=2, Tune snapshots the experiment every second
    # checkpoint of a trial, by design (a resumed search must not point at a deleted checkpoint),
    # and warns each time that happens twice in 5 s. Its cost is in benchmarks/tune_driver.py;
    # the warning about a slow snapshot (over 30 s) stays on.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Tune's newer console prints every trial's whole config as a 45-line table when it starts and
    # again when it ends; its classic reporter (``progress_reporter``) prints the status table only.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


def progress_reporter(preset: Preset) -> CLIReporter:
    """Tune's status table every minute: each trial's status, epoch, objective and largest cluster,
    and the first few settings the preset searches (the logger prints a line per trial start and end)."""
    searched = list(dict.fromkeys(param.field for param in preset.params if param.kind != "gate"))[:4]
    objective = preset.search.objective
    return CLIReporter(
        metric_columns={"epoch": "epoch", objective: objective, "largest_cluster_share": "largest"},
        parameter_columns=searched,
        max_report_frequency=60,
        max_progress_rows=12,
    )


def space_of(points: list[dict]) -> dict:
    """A param space that holds every point: Tune fills a point's values into the space's keys, and
    warns where a point differs from a constant, so keys that differ are choices among the points'
    (within nested mappings such as the gates, key by key)."""
    space = {}
    for key, value in points[0].items():
        values = [point[key] for point in points]
        if all(isinstance(v, dict) for v in values) and not all(v == value for v in values):
            space[key] = space_of(values)
        else:
            space[key] = value if all(v == value for v in values) else tune.choice(values)
    return space
