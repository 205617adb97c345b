"""Run an IIC hyperparameter search: Ray Tune trials, Optuna proposals, MLflow records.

    python search/run.py                                  # bundled digits, local Ray, ~10 min on 2 cores
    python search/run.py --preset har --set data_root=data/har --address auto
    python search/run.py --resume                         # continue an interrupted search

Each trial is one IIC training run (``trainables.iic_trainable.train_iic``) reporting every epoch.
Optuna's TPE proposes the settings from the preset's space, ASHA stops weak trials early, trials
whose clustering collapses stop themselves, and every trial is one MLflow run under the search's
parent run. Everything the command line can get wrong is checked before Ray starts a trial.
"""

import argparse
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import optuna
import ray
import yaml
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from iic.config import ConfigError, IICConfig
from search.space import OBJECTIVES, Preset, PresetError, available_presets
from search.summary import summarise
from search.tracking import MLflowTrialLogger, open_search_run, prepare_experiment, server_unreachable
from search.warm_start import load_warm_start
from trainables.iic_trainable import TrialSettings, train_iic


class SearchError(ValueError):
    """A search that cannot start; the message says what to change."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python search/run.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--preset", default="digits", help=f"bundled preset: {', '.join(available_presets())} (default: digits)")
    source.add_argument("--config", help="a preset YAML file of your own (see search/presets/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="fix an IICConfig field for every trial, e.g. --set data_root=data/har")
    parser.add_argument("--num-samples", type=int, help="number of trials")
    parser.add_argument("--epochs", type=int, help="epochs per trial (ASHA's max_t)")
    parser.add_argument("--max-concurrent", type=int, help="trials running at once")
    parser.add_argument("--time-budget", type=float, help="seconds after which no new trial starts and running ones stop")
    parser.add_argument("--objective", choices=sorted(OBJECTIVES), help="metric to maximise (default: the preset's, cluster_accuracy)")
    parser.add_argument("--cpus-per-trial", type=float)
    parser.add_argument("--gpus-per-trial", type=float, help="fractions such as 0.25 put several trials on one GPU")
    parser.add_argument("--experiment", help="MLflow experiment (default: iic-<preset>)")
    parser.add_argument("--name", help="search name: Ray experiment folder and MLflow tag (default: the experiment name)")
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"), help="MLflow store: sqlite:///FILE (default sqlite:///mlflow.db) or http://HOST:PORT")
    parser.add_argument("--storage-path", default=os.environ.get("IIC_STORAGE_PATH", "runs/search"), help="Ray Tune storage (checkpoints); shared storage (s3://...) on multi-node clusters")
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS"), help="Ray cluster to join (e.g. auto); default: start a local Ray")
    parser.add_argument("--resume", action="store_true", help="continue the interrupted search of this name")
    parser.add_argument("--warm-start", metavar="DIR", help="folder of exported configs to evaluate first")
    parser.add_argument("--seed", type=int, default=0, help="seed of every trial's training and of the sampler")
    parser.add_argument("--top", type=int, default=5, help="best trials to print at the end")
    return parser.parse_args(argv)


def load_preset(args: argparse.Namespace) -> Preset:
    """The preset with the command line applied, validated (ranges, resources, data) up front."""
    preset = Preset.load(args.config or args.preset)
    config = dict(preset.config)
    if args.epochs is not None:
        config["epochs"] = args.epochs
    try:
        before = IICConfig.from_dict(config)
        base = before.with_overrides(args.overrides)
    except ConfigError as err:
        raise SearchError(str(err)) from None
    overridden = {name for name in base.to_dict() if getattr(base, name) != getattr(before, name)}
    searched = {p.name for p in preset.params} & overridden
    if searched:
        raise SearchError(f"--set {', '.join(sorted(searched))}: searched by the preset; edit its space (or copy it with --config) to fix them")
    base = base.with_absolute_paths()  # trials run in folders of their own, not here
    overridden |= {name for name in ("data_root", "backbone_weights") if getattr(base, name) is not None}
    changes = {"config": {k: v for k, v in base.to_dict().items() if k in config or k in overridden}}
    search = preset.search
    flags = {"num_samples": "num_samples", "max_concurrent": "max_concurrent", "time_budget": "time_budget_s",
             "objective": "objective", "cpus_per_trial": "cpus_per_trial", "gpus_per_trial": "gpus_per_trial"}
    search = dataclasses.replace(search, **{field: getattr(args, flag) for flag, field in flags.items() if getattr(args, flag) is not None})
    preset = dataclasses.replace(preset, search=search, **changes)
    problems = []
    if search.num_samples < 1:
        problems.append(f"--num-samples must be at least 1 (got {search.num_samples})")
    if search.max_concurrent < 1:
        problems.append(f"--max-concurrent must be at least 1 (got {search.max_concurrent})")
    if search.cpus_per_trial <= 0:
        problems.append(f"--cpus-per-trial must be positive (got {search.cpus_per_trial})")
    if search.gpus_per_trial < 0 or (search.gpus_per_trial > 1 and not float(search.gpus_per_trial).is_integer()):
        problems.append(f"--gpus-per-trial must be a fraction of one GPU or a whole number (got {search.gpus_per_trial})")
    if search.time_budget_s is not None and search.time_budget_s <= 0:
        problems.append(f"--time-budget must be positive seconds (got {search.time_budget_s})")
    if problems:
        raise SearchError("invalid search:\n  " + "\n  ".join(problems))
    try:
        preset.validate()
        base.validate()  # the data exists, the fixed settings are sound
    except (PresetError, ConfigError) as err:
        raise SearchError(str(err)) from None
    return preset


def check_tracking_uri(uri: str) -> str:
    """sqlite paths become absolute (trials and the UI must find the same file); http servers must answer."""
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///")).expanduser().resolve()
        if not path.parent.is_dir():
            raise SearchError(f"--tracking-uri {uri}: folder {path.parent} does not exist; create it or choose another path")
        return f"sqlite:///{path}"
    if uri.startswith(("http://", "https://")):
        reason = server_unreachable(uri, timeout=5)
        if reason is not None:
            raise SearchError(
                f"--tracking-uri {uri}: the MLflow server does not answer ({reason}); "
                f"start it (mlflow server --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000) or fix the address"
            )
        return uri
    raise SearchError(f"--tracking-uri {uri}: use sqlite:///FILE or http(s)://HOST:PORT (MLflow 3.17's file store is not supported)")


# Where `ray up` leaves the cluster launcher's config on the head node (where drivers run).
LAUNCHER_CONFIG = "~/ray_bootstrap_config.yaml"


def launchable_node_types() -> list[dict]:
    """Resources of each node type the cluster's autoscaler may start: from the cluster config in
    Ray's GCS where an autoscaler records one (Ray Train and Data read it too; nothing in Ray 2.60's
    own Python writes it), else from the config `ray up` leaves on this head node; none on a
    cluster without an autoscaler."""
    from ray._private.state import state

    try:
        config = state.get_cluster_config()
    except Exception:  # noqa: BLE001 - a private API: fall back to the launcher's file
        config = None
    if config is not None and config.node_group_configs:
        return [dict(group.resources) for group in config.node_group_configs if group.max_count != 0]
    path = Path(LAUNCHER_CONFIG).expanduser()
    try:
        launcher = yaml.safe_load(path.read_text()) if path.is_file() else {}
    except (OSError, yaml.YAMLError):
        return []
    node_types = (launcher or {}).get("available_node_types") or {}
    return [dict(node.get("resources") or {}) for node in node_types.values() if node.get("max_workers", 0) > 0]


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
        problems.append(f"--cpus-per-trial {search.cpus_per_trial}: no node has that many CPUs (largest: {most_cpus:g}); lower it")
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
            "s3://BUCKET/iic-search (Ray needs it since 2.7), or file:///PATH for a network filesystem mounted at PATH on every node"
        )
    if problems:
        if started:
            ray.shutdown()
        raise SearchError("the cluster cannot run this search:\n  " + "\n  ".join(problems))
    return started


def code_version() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                                cwd=Path(__file__).resolve().parent).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                               cwd=Path(__file__).resolve().parent).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        from importlib.metadata import version

        return "iic-search " + version("iic-search")


def make_trainable(preset: Preset):
    search = preset.search
    settings = TrialSettings(search.collapse_share, search.collapse_patience, search.collapse_information)
    return tune.with_resources(tune.with_parameters(train_iic, settings=settings), {"cpu": search.cpus_per_trial, "gpu": search.gpus_per_trial})


def build_tuner(preset: Preset, args, name: str, storage_path: str, logger: MLflowTrialLogger, warm_points: list[dict]) -> tune.Tuner:
    search = preset.search
    epochs = IICConfig.from_dict(preset.config).epochs
    sampler = optuna.samplers.TPESampler(seed=args.seed, n_startup_trials=min(10, max(3, search.num_samples // 3)))
    searcher = OptunaSearch(
        space=preset.space(seed=args.seed), metric=search.objective, mode=OBJECTIVES[search.objective],
        points_to_evaluate=warm_points or None, sampler=sampler,
    )
    scheduler = ASHAScheduler(
        time_attr="training_iteration", metric=search.objective, mode=OBJECTIVES[search.objective],
        max_t=epochs, grace_period=min(search.grace_period, epochs), reduction_factor=search.reduction_factor,
    )
    return tune.Tuner(
        make_trainable(preset),
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=search.max_concurrent),
            scheduler=scheduler, num_samples=search.num_samples, time_budget_s=search.time_budget_s,
        ),
        run_config=tune.RunConfig(
            name=name, storage_path=storage_path, callbacks=[logger],
            failure_config=tune.FailureConfig(max_failures=search.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            verbose=1,
        ),
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
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
    try:
        preset = load_preset(args)
        tracking_uri = check_tracking_uri(args.tracking_uri)
        experiment_name = args.experiment or f"iic-{preset.name}"
        name = args.name or experiment_name
        storage_path = args.storage_path if "://" in args.storage_path else str(Path(args.storage_path).expanduser().resolve())
        experiment_dir = f"{storage_path.rstrip('/')}/{name}"
        if args.resume and not tune.Tuner.can_restore(experiment_dir):
            raise SearchError(f"--resume: no search to resume at {experiment_dir}; run without --resume (same --name and --storage-path) to start it")
        if not args.resume and tune.Tuner.can_restore(experiment_dir):
            raise SearchError(f"a search named {name!r} already exists at {experiment_dir}; continue it with --resume, or choose another --name")
        warm_points = load_warm_start(args.warm_start, preset) if args.warm_start else []
        experiment_id = prepare_experiment(tracking_uri, experiment_name)
    except (SearchError, PresetError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    try:
        started_ray = start_ray(args.address, preset, storage_path)
    except SearchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    parent_run_id = open_search_run(tracking_uri, experiment_id, name, preset, vars(args))
    report_path = state_dir(name) / "mlflow_report.json"
    logger = MLflowTrialLogger(tracking_uri, experiment_id, name, parent_run_id, code_version(), report_path)
    print(f"search {name!r}: preset {preset.name}, {preset.search.num_samples} trials, objective {preset.search.objective}, "
          f"MLflow {tracking_uri} (experiment {experiment_name!r}), storage {experiment_dir}", flush=True)
    if args.resume:
        # Finished trials stay finished; unfinished and errored ones continue from their checkpoints.
        tuner = tune.Tuner.restore(experiment_dir, trainable=make_trainable(preset), resume_unfinished=True, resume_errored=True)
    else:
        tuner = build_tuner(preset, args, name, storage_path, logger, warm_points)
    results = tuner.fit()
    summarise(results, preset, tracking_uri, experiment_id, parent_run_id, name, report_path, top=args.top)
    if started_ray:
        ray.shutdown()
    return 0


def state_dir(name: str) -> Path:
    """A local folder of the driver's own for this search (the storage path may be remote)."""
    return Path(os.environ.get("IIC_STATE_DIR", Path.home() / ".iic-search")) / name


if __name__ == "__main__":
    sys.exit(main())
