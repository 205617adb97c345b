"""Run an IIC hyperparameter search: Ray Tune trials, Optuna proposals, MLflow records.

    python search/run.py                                  # bundled digits, local Ray, ~10 min on 2 cores
    python search/run.py --preset har --set data_root=data/har --address auto
    python search/run.py --resume                         # continue an interrupted search

Each trial is one IIC training run (``trainables.iic_trainable.train_iic``) of its config on
``seeds_per_trial`` seeds at once, reporting their mean (and spread) every epoch. Optuna's TPE
proposes the settings from the preset's space, ASHA stops weak trials early, trials whose
clustering collapses stop themselves, and every trial is one MLflow run under the search's parent
run. With ``--scheduler pbt`` a population drawn at random from the space trains instead, and Ray
Tune's population-based training gives its weakest trials the best ones' checkpoints with perturbed
augmentation strengths, lr and lamb: each trial learns a schedule of them (recorded as
``schedule.<field>`` metrics, and in its config.yaml, which ``python -m iic.train`` replays). Then
the best ``confirm_top`` distinct configs are trained again on ``confirm_seeds`` fresh seeds
(``search/confirm.py``), and the search's result is the best of them by that confirmed mean.
Everything the command line can get wrong is checked before Ray starts a trial.
"""

import argparse
import dataclasses
import json
import os
import random
import sys
import time
from pathlib import Path

import optuna
import pyarrow.fs
import ray
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune.schedulers import ASHAScheduler, PopulationBasedTraining
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.basic_variant import BasicVariantGenerator
from ray.tune.search.optuna import OptunaSearch

from iic.config import ConfigError, IICConfig
from iic.data import DatasetError
from iic.seeds import draw_seeds
from iic.supervised import check_held_out_source
from search.ceiling import run_ceiling
from search.confirm import (
    candidates_from_results,
    confirmation_seeds,
    confirmations,
    ranked_confirmations,
    run_confirmation,
    space_of,
)
from search.deadline import ConfirmationDeadline
from search.driver import (
    SearchError,
    check_tracking_uri,
    code_version,
    default_storage_path,
    default_tracking_uri,
    experiment_dir,
    make_trainable,
    progress_reporter,
    resolve_storage_path,
    set_driver_environment,
    start_ray,
    state_dir,
    trial_dirname,
)
from search.preset import OBJECTIVES, SCHEDULERS, Preset, PresetError, available_presets
from search.space import clip_to_ranges, mutations, population, search_space, start_point
from search.summary import summarise
from search.tracking.logger import MLflowTrialLogger
from search.tracking.reconcile import logged_statuses, reconcile, restored_trials
from search.tracking.runs import (
    CEILING_ROLE,
    CONFIRM_ROLE,
    STAGE_SUFFIXES,
    SearchRecord,
    fail_search_run,
    open_search_run,
    prepare_experiment,
)
from search.warm_start import load_warm_start
from trainables.iic_trainable import trial_finished


def build_parser(given_only: bool = False) -> argparse.ArgumentParser:
    """The command line; with ``given_only``, flags left out are absent from the parsed namespace."""
    default = (lambda value: argparse.SUPPRESS) if given_only else (lambda value: value)
    parser = argparse.ArgumentParser(
        prog="python search/run.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=default(None),
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--preset",
        default=default("digits"),
        help=f"bundled preset: {', '.join(available_presets())} (default: digits)",
    )
    source.add_argument("--config", help="a preset YAML file of your own (see search/presets/)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=default([]),
        metavar="KEY=VALUE",
        help="fix an IICConfig field for every trial, e.g. --set data_root=data/har",
    )
    parser.add_argument(
        "--scheduler",
        choices=SCHEDULERS,
        help="asha: TPE proposes, ASHA stops weak trials (default); "
        "pbt: population-based training of augmentation, lr and lamb schedules (the preset's pbt section)",
    )
    parser.add_argument(
        "--population",
        type=int,
        help="trials in the population under --scheduler pbt (default: the preset's pbt.population)",
    )
    parser.add_argument("--num-samples", type=int, help="number of trials (under --scheduler pbt: --population)")
    parser.add_argument("--epochs", type=int, help="epochs per trial (ASHA's max_t)")
    parser.add_argument("--max-concurrent", type=int, help="trials running at once")
    parser.add_argument(
        "--time-budget", type=float, help="seconds after which no new trial starts and running ones stop"
    )
    parser.add_argument(
        "--deadline",
        type=float,
        help="seconds for the whole search, confirmation included: the search stage "
        "ends early enough for the confirmation to end by then, at the speed its trials measured",
    )
    parser.add_argument(
        "--objective", choices=sorted(OBJECTIVES), help="metric to maximise (default: the preset's, cluster_accuracy)"
    )
    parser.add_argument("--cpus-per-trial", type=float)
    parser.add_argument("--gpus-per-trial", type=float, help="fractions such as 0.25 put several trials on one GPU")
    parser.add_argument("--experiment", help="MLflow experiment (default: iic-<preset>)")
    parser.add_argument(
        "--name", help="search name: Ray experiment folder and MLflow tag (default: the experiment name)"
    )
    parser.add_argument(
        "--tracking-uri",
        default=default(default_tracking_uri()),
        help="MLflow store: sqlite:///FILE (default sqlite:///mlflow.db) or http://HOST:PORT",
    )
    parser.add_argument(
        "--storage-path",
        default=default(default_storage_path()),
        help="Ray Tune storage (checkpoints); shared storage (s3://...) on multi-node clusters",
    )
    parser.add_argument(
        "--address",
        default=default(os.environ.get("RAY_ADDRESS")),
        help="Ray cluster to join (e.g. auto); default: start a local Ray",
    )
    parser.add_argument(
        "--resume", action="store_true", default=default(False), help="continue the interrupted search of this name"
    )
    parser.add_argument("--warm-start", metavar="DIR", help="folder of exported configs to evaluate first")
    parser.add_argument(
        "--seed",
        type=int,
        default=default(0),
        help="seed of the sampler and of the seeds trials train on (drawn from it)",
    )
    parser.add_argument(
        "--seeds-per-trial",
        type=int,
        help="seeds each trial trains its config on (mean reported; default: the preset's)",
    )
    parser.add_argument(
        "--confirm-top", type=int, help="distinct configs confirmed on fresh seeds after the search (0: none)"
    )
    parser.add_argument("--confirm-seeds", type=int, help="fresh seeds each confirmed config trains on")
    parser.add_argument(
        "--challenger-margin",
        type=float,
        help="standard errors by which a trial must beat the preset's own config "
        "(start_from_config) on the search's seeds to be confirmed instead of it (0: the plain ranking; default: the "
        "preset's)",
    )
    parser.add_argument(
        "--ceiling",
        action="store_true",
        default=default(False),
        help="also train the supervised ceiling (the same backbone on the labels) once, "
        "to read the search's accuracy against",
    )
    parser.add_argument("--top", type=int, default=default(5), help="best trials to print at the end")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def explicit_flags(argv: list[str] | None) -> dict:
    """The flags the command line gives (defaults left out)."""
    return vars(build_parser(given_only=True).parse_args(argv))


# IICConfig fields that say which images a search clusters: a preset's config holds its place as the
# incumbent (start_from_config, guarded by the challenger margin) only on the data it was tuned on.
DATA_FIELDS = ("dataset", "data_root", "split", "class_map", "max_samples")


def load_preset(args: argparse.Namespace) -> tuple[Preset, list[str]]:
    """The preset with the command line applied, validated (ranges, resources, data) up front, and
    notes for the user on what the command line changed beyond its own flags."""
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
        raise SearchError(
            f"--set {', '.join(sorted(searched))}: searched by the preset; edit its space (or copy it with --config) "
            "to fix them"
        )
    other_data = [name for name in DATA_FIELDS if name in overridden]
    base = base.with_absolute_paths()  # trials run in folders of their own, not here
    overridden |= {name for name in ("data_root", "backbone_weights") if getattr(base, name) is not None}
    changes = {"config": {k: v for k, v in base.to_dict().items() if k in config or k in overridden}}
    search = preset.search
    flags = {
        "num_samples": "num_samples",
        "max_concurrent": "max_concurrent",
        "time_budget": "time_budget_s",
        "deadline": "deadline_s",
        "objective": "objective",
        "cpus_per_trial": "cpus_per_trial",
        "gpus_per_trial": "gpus_per_trial",
        "seeds_per_trial": "seeds_per_trial",
        "confirm_top": "confirm_top",
        "confirm_seeds": "confirm_seeds",
        "scheduler": "scheduler",
        "challenger_margin": "challenger_margin",
    }
    search = dataclasses.replace(
        search, **{field: getattr(args, flag) for flag, field in flags.items() if getattr(args, flag) is not None}
    )
    pbt = preset.pbt if args.population is None else dataclasses.replace(preset.pbt, population=args.population)
    notes = []
    if other_data and search.start_from_config:
        search = dataclasses.replace(search, start_from_config=False)
        notes.append(
            f"--set {', '.join(other_data)}: the preset's config was tuned on other data, so the search starts "
            "without it as the incumbent (no first trial of it, no challenger margin)"
        )
    problems = []
    if search.scheduler == "pbt":
        if args.num_samples is not None:
            problems.append(
                "--num-samples: under --scheduler pbt the trials are the population; give --population instead"
            )
        if args.warm_start:
            problems.append(
                "--warm-start: its configs seed Optuna's TPE, which PBT does not use (its population is drawn at "
                "random); drop one of them"
            )
        search = dataclasses.replace(search, num_samples=pbt.population)
    elif args.population is not None:
        problems.append(
            "--population: only population-based training has one; add --scheduler pbt or use --num-samples"
        )
    preset = dataclasses.replace(preset, search=search, pbt=pbt, **changes)
    if search.num_samples < 1:
        problems.append(f"--num-samples must be at least 1 (got {search.num_samples})")
    if search.max_concurrent < 1:
        problems.append(f"--max-concurrent must be at least 1 (got {search.max_concurrent})")
    if search.cpus_per_trial <= 0:
        problems.append(f"--cpus-per-trial must be positive (got {search.cpus_per_trial})")
    if search.gpus_per_trial < 0 or (search.gpus_per_trial > 1 and not float(search.gpus_per_trial).is_integer()):
        problems.append(
            f"--gpus-per-trial must be a fraction of one GPU or a whole number (got {search.gpus_per_trial})"
        )
    if search.time_budget_s is not None and search.time_budget_s <= 0:
        problems.append(f"--time-budget must be positive seconds (got {search.time_budget_s})")
    if search.deadline_s is not None and search.deadline_s <= 0:
        problems.append(f"--deadline must be positive seconds (got {search.deadline_s})")
    if search.seeds_per_trial < 1:
        problems.append(f"--seeds-per-trial must be at least 1 (got {search.seeds_per_trial})")
    if search.seeds_per_trial > 1 and "seed" in set(preset.config) | {
        o.partition("=")[0].strip() for o in args.overrides
    }:
        problems.append(
            f"seed is fixed (--set seed or the preset's config) but each trial trains on {search.seeds_per_trial} "
            "seeds; "
            "fix the seed with --seeds-per-trial 1, or drop it to let the search draw seeds"
        )
    if search.confirm_top < 0 or (search.confirm_top and search.confirm_seeds < 1):
        problems.append(
            f"--confirm-top must be 0 or more, with --confirm-seeds at least 1 (got {search.confirm_top} and "
            f"{search.confirm_seeds})"
        )
    if not search.challenger_margin >= 0:
        problems.append(
            f"--challenger-margin must be 0 or more standard errors (got {search.challenger_margin}); 0 ranks trials "
            "by their figures alone"
        )
    if problems:
        raise SearchError("invalid search:\n  " + "\n  ".join(problems))
    try:
        preset.validate()
        base.validate()  # the data exists, the fixed settings are sound
    except (PresetError, ConfigError) as err:
        raise SearchError(str(err)) from None
    return preset, notes


def search_seeds(preset: Preset, search_seed: int) -> list[int]:
    """The seeds every trial trains on: drawn from the search's seed, or the one fixed seed."""
    if preset.search.seeds_per_trial == 1 and "seed" in preset.config:
        return [preset.config["seed"]]
    return draw_seeds(search_seed, preset.search.seeds_per_trial)


def build_tuner(
    preset: Preset,
    args,
    name: str,
    storage_path: str,
    logger: MLflowTrialLogger,
    warm_points: list[dict],
    trial_seeds: list[int],
) -> tune.Tuner:
    if preset.search.scheduler == "pbt":
        tune_config, param_space, run_options = population_based_training(preset, args.seed, trial_seeds)
    else:
        tune_config, param_space, run_options = tpe_with_asha(preset, args.seed, warm_points, trial_seeds)
    callbacks = [logger, *run_options.pop("callbacks", [])]
    if logger.deadline is not None:
        run_options["stop"] = tune.stopper.CombinedStopper(*filter(None, [run_options.get("stop"), logger.deadline]))
    return tune.Tuner(
        make_trainable(preset),
        param_space=param_space,
        tune_config=tune_config,
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage_path,
            callbacks=callbacks,
            progress_reporter=progress_reporter(preset),
            failure_config=tune.FailureConfig(max_failures=preset.search.max_failures),
            verbose=1,
            **run_options,
        ),
    )


def tpe_with_asha(
    preset: Preset, seed: int, warm_points: list[dict], trial_seeds: list[int]
) -> tuple[tune.TuneConfig, None, dict]:
    """Tune's config, param space (none: the searcher's) and run options of a TPE + ASHA search."""
    search = preset.search
    epochs = IICConfig.from_dict(preset.config).epochs
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(3, search.num_samples // 3)))
    searcher = OptunaSearch(
        space=search_space(preset, trial_seeds),
        metric=search.objective,
        mode=OBJECTIVES[search.objective],
        points_to_evaluate=warm_points or None,
        sampler=sampler,
    )
    scheduler = ASHAScheduler(
        time_attr="training_iteration",
        metric=search.objective,
        mode=OBJECTIVES[search.objective],
        max_t=epochs,
        grace_period=min(search.grace_period, epochs),
        reduction_factor=search.reduction_factor,
    )
    tune_config = tune.TuneConfig(
        search_alg=ConcurrencyLimiter(searcher, max_concurrent=search.max_concurrent),
        scheduler=scheduler,
        num_samples=search.num_samples,
        time_budget_s=search.time_budget_s,
        trial_dirname_creator=trial_dirname,
        # The next trial starts in the process the last one ended in, not a new one that imports torch again.
        reuse_actors=True,
    )
    return tune_config, None, {"checkpoint_config": tune.CheckpointConfig(num_to_keep=2)}


def population_based_training(preset: Preset, seed: int, trial_seeds: list[int]) -> tuple[tune.TuneConfig, dict, dict]:
    """Tune's config, param space and run options of a PBT search. The population, drawn from the
    space, starts through Tune's variant generator (no searcher: PBT refuses one, and every member
    must exist at once, so no concurrency limit either: the trials take turns on the resources).

    Synchronous PBT: every trial trains to the same epoch before any exploit, so scores are compared
    at equal epochs, a trial continues from a checkpoint of its own epoch (its records never step
    back), and trials that take turns on the resources all get them (asynchronous PBT may keep giving
    the turn to the weak trials that took over paused ones). It waits for every live trial at each
    perturbation point, so PBT trials do not stop themselves when they collapse, and
    ``StalledPopulation`` ends the search should one end early otherwise (diverged, failed)."""
    search, pbt = preset.search, preset.pbt
    random.seed(seed)  # PBT draws its exploits and perturbations from Python's random
    members = population(preset, trial_seeds, seed)
    scheduler = PopulationBasedTraining(
        time_attr="training_iteration",
        metric=search.objective,
        mode=OBJECTIVES[search.objective],
        perturbation_interval=pbt.perturbation_interval,
        quantile_fraction=pbt.quantile_fraction,
        resample_probability=pbt.resample_probability,
        hyperparam_mutations=mutations(preset),
        custom_explore_fn=clip_to_ranges(preset),
        synch=True,
    )
    tune_config = tune.TuneConfig(
        search_alg=BasicVariantGenerator(points_to_evaluate=members),
        scheduler=scheduler,
        num_samples=len(members),
        time_budget_s=search.time_budget_s,
        trial_dirname_creator=trial_dirname,
        # A trial paused at a perturbation point continues in a waiting process instead of a new one.
        reuse_actors=True,
    )
    stalled = StalledPopulation()
    run_options = {
        "stop": stalled,
        "callbacks": [stalled],
        # Every checkpoint is kept: a trial may take over another's after that one has trained on.
        "checkpoint_config": tune.CheckpointConfig(num_to_keep=None),
    }
    return tune_config, space_of(members), run_options


class StalledPopulation(tune.Callback, tune.Stopper):
    """Stops a trial whose result says it ended (``trial_finished``: not paused and restarted by
    PBT), and the whole search when every live trial has been paused for ``patience_s``: synchronous
    PBT then waits for a trial that ended before the perturbation point, and would wait for ever."""

    def __init__(self, patience_s: float = 60.0):
        self.patience_s = patience_s
        self._stalled_since: float | None = None

    def __getstate__(self):
        return {**self.__dict__, "_stalled_since": None}  # pickled with the experiment

    def __call__(self, trial_id: str, result: dict) -> bool:
        return trial_finished(trial_id, result)

    def on_step_end(self, iteration, trials, **info):
        live = [trial for trial in trials if not trial.is_finished()]
        if live and all(trial.status == trial.PAUSED for trial in live):
            if self._stalled_since is None:
                self._stalled_since = time.monotonic()
        else:
            self._stalled_since = None

    def stop_all(self) -> bool:
        if self._stalled_since is None or time.monotonic() - self._stalled_since < self.patience_s:
            return False
        print(
            f"error: every trial of the population has waited {self.patience_s:.0f} s for one that ended early "
            "(diverged or failed); the search ends here",
            file=sys.stderr,
            flush=True,
        )
        return True


# Flags that may differ from the stored search on --resume (which cluster to join, how much to
# print), and those that say which search to resume; every other flag must match what is stored.
SAFE_ON_RESUME = ("address", "top")
RESUME_IDENTITY = ("resume", "name", "storage_path")
SEARCH_RECORD_FILE = "iic_search.json"  # in the search's Ray experiment folder: what --resume continues


@dataclasses.dataclass
class SearchPlan:
    """Everything a search runs with, settled before anything starts (stored for --resume)."""

    arguments: dict  # the command line's flags, defaults filled in
    preset: Preset
    tracking_uri: str
    experiment: str  # MLflow experiment
    name: str  # the search: Ray experiment folder and MLflow tag
    storage_path: str
    trial_seeds: list[int]
    warm_points: list[dict] = dataclasses.field(default_factory=list)  # configs to try first (a new search only)
    notes: list[str] = dataclasses.field(default_factory=list)  # said once when the search starts, not stored

    @property
    def experiment_dir(self) -> str:
        return experiment_dir(self.storage_path, self.name)

    def record(self) -> dict:
        return {
            "arguments": self.arguments,
            "preset": {"name": self.preset.name, **self.preset.to_dict()},
            "tracking_uri": self.tracking_uri,
            "experiment": self.experiment,
            "trial_seeds": self.trial_seeds,
        }


def first_points(preset: Preset, warm_start: str | None) -> list[dict]:
    """The trials TPE evaluates before it proposes: the exported configs of ``--warm-start`` (the
    user's own choice), then the preset's config (``start_from_config``)."""
    start = [start_point(preset)] if preset.search.start_from_config and preset.search.scheduler != "pbt" else []
    return (load_warm_start(warm_start, preset) if warm_start else []) + start


def new_plan(args: argparse.Namespace) -> SearchPlan:
    """A new search's plan from the command line, checked; refuses a name already taken."""
    preset, notes = load_preset(args)
    if args.ceiling:
        try:
            check_held_out_source(IICConfig.from_dict(preset.config))
        except DatasetError as err:
            raise SearchError(f"--ceiling: {err}") from None
    tracking_uri = check_tracking_uri(args.tracking_uri)
    experiment = args.experiment or f"iic-{preset.name}"
    plan = SearchPlan(
        vars(args),
        preset,
        tracking_uri,
        experiment,
        args.name or experiment,
        resolve_storage_path(args.storage_path),
        search_seeds(preset, args.seed),
        first_points(preset, args.warm_start),
        notes,
    )
    if tune.Tuner.can_restore(plan.experiment_dir):
        raise SearchError(
            f"a search named {plan.name!r} already exists at {plan.experiment_dir}; continue it with --resume, or "
            "choose another --name"
        )
    return plan


def resumed_plan(args: argparse.Namespace, given: dict) -> SearchPlan:
    """The stored plan of the search to resume; refuses flags that would change it."""
    experiment = args.experiment or f"iic-{Preset.load(args.config or args.preset).name}"
    folder = experiment_dir(resolve_storage_path(args.storage_path), args.name or experiment)
    if not tune.Tuner.can_restore(folder):
        raise SearchError(
            f"--resume: no search to resume at {folder}; run without --resume (same --name and --storage-path) "
            "to start it"
        )
    stored = read_record(folder)
    if stored is None:
        raise SearchError(
            f"--resume: {folder} has no {SEARCH_RECORD_FILE} (a search started by an older version); start a new search"
        )
    conflicts = [
        f"--{flag.replace('_', '-')} {value!r}: the search was started with {stored['arguments'].get(flag)!r}"
        for flag, value in given.items()
        if flag not in SAFE_ON_RESUME + RESUME_IDENTITY and stored["arguments"].get(flag) != value
    ]
    if conflicts:
        raise SearchError(
            "--resume continues the search as it was started; drop these flags (only "
            f"{', '.join('--' + f for f in SAFE_ON_RESUME)} may change):\n  " + "\n  ".join(conflicts)
        )
    raw = dict(stored["preset"])
    preset = Preset.from_dict(raw.pop("name"), raw)
    arguments = {
        **stored["arguments"],
        **{flag: given[flag] for flag in SAFE_ON_RESUME if flag in given},
        "resume": True,
    }
    return SearchPlan(
        arguments,
        preset,
        check_tracking_uri(stored["tracking_uri"]),
        stored["experiment"],
        args.name or experiment,
        resolve_storage_path(args.storage_path),
        stored["trial_seeds"],
    )


def record_file(experiment_dir: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """Where a search's record is: beside Tune's experiment state, on the storage's own filesystem."""
    filesystem, folder = pyarrow.fs.FileSystem.from_uri(
        experiment_dir if "://" in experiment_dir else Path(experiment_dir).as_uri()
    )
    return filesystem, f"{folder}/{SEARCH_RECORD_FILE}"


def read_record(experiment_dir: str) -> dict | None:
    filesystem, path = record_file(experiment_dir)
    try:
        with filesystem.open_input_stream(path) as stream:
            return json.loads(stream.readall())
    except FileNotFoundError:
        return None


def write_record(plan: SearchPlan) -> None:
    filesystem, path = record_file(plan.experiment_dir)
    filesystem.create_dir(path.rpartition("/")[0], recursive=True)
    with filesystem.open_output_stream(path) as stream:
        stream.write(json.dumps(plan.record(), indent=2).encode())


def start_config(preset: Preset) -> IICConfig | None:
    """The config of the search's first trial when it starts from the preset's own (TPE only)."""
    return (
        IICConfig.from_dict(preset.config)
        if preset.search.start_from_config and preset.search.scheduler != "pbt"
        else None
    )


def run_search(plan: SearchPlan, search: SearchRecord, started: float) -> None:
    """Tune's trials, the confirmation stage and the summary of a search whose parent run is open;
    ``started``: the driver's start (``time.monotonic()``), which a deadline counts from."""
    args, preset = argparse.Namespace(**plan.arguments), plan.preset
    report_path = state_dir(plan.name) / "mlflow_report.json"
    settings = preset.search
    how = (
        f"population-based training of {settings.num_samples} trials"
        if settings.scheduler == "pbt"
        else f"{settings.num_samples} trials"
    )
    print(
        f"search {plan.name!r}: preset {preset.name}, {how} of {settings.seeds_per_trial} seed(s) each, "
        f"objective {settings.objective}, MLflow {plan.tracking_uri} (experiment {plan.experiment!r}), storage "
        f"{plan.experiment_dir}",
        flush=True,
    )
    for note in plan.notes:
        print(note, flush=True)
    if args.resume:
        # Tune brings its own stored logger back; first MLflow gets what the last driver could not send.
        report = reconcile(
            MlflowClient(plan.tracking_uri), search, plan.experiment_dir, restored_trials(plan.experiment_dir)
        )
        print(
            f"resuming: MLflow got {sum(map(len, report.sent.values()))} epoch(s) it lacked; {len(report.closed_lost)} "
            "run(s) of trials "
            "Tune never recorded closed as lost",
            flush=True,
        )
        # Finished trials stay finished; unfinished and errored ones continue from their checkpoints.
        tuner = tune.Tuner.restore(
            plan.experiment_dir, trainable=make_trainable(preset), resume_unfinished=True, resume_errored=True
        )
    else:
        deadline = (
            ConfirmationDeadline(settings.deadline_s, settings, OBJECTIVES[settings.objective], started)
            if settings.deadline_s
            else None
        )
        logger = MLflowTrialLogger(
            search, report_path, plan.experiment_dir, time_budget_s=settings.time_budget_s, deadline=deadline
        )
        tuner = build_tuner(preset, args, plan.name, plan.storage_path, logger, plan.warm_points, plan.trial_seeds)
    results = tuner.fit()
    statuses = logged_statuses(report_path)
    choice = candidates_from_results(
        results,
        settings.objective,
        statuses,
        max(settings.confirm_top, 1),
        start_config(preset),
        settings.challenger_margin,
    )
    if choice.note():  # why the start config is confirmed though a trial read higher
        print(f"\n{choice.note()}", flush=True)
    candidates = choice.candidates
    confirmed = []
    if settings.confirm_top and candidates:
        seeds = confirmation_seeds(args.seed, plan.trial_seeds, settings.confirm_seeds)
        print(
            f"\nconfirming the best {len(candidates)} config(s) on {len(seeds)} fresh seeds "
            f"({' '.join(map(str, seeds))})",
            flush=True,
        )
        confirm_report = state_dir(plan.name) / "mlflow_report_confirm.json"
        confirm_name = plan.name + STAGE_SUFFIXES[CONFIRM_ROLE]
        confirm_logger = MLflowTrialLogger(
            dataclasses.replace(search, role=CONFIRM_ROLE),
            confirm_report,
            experiment_dir(plan.storage_path, confirm_name),
        )
        confirm_results = run_confirmation(
            candidates,
            seeds,
            preset,
            confirm_name,
            plan.storage_path,
            confirm_logger,
            resume=args.resume,
        )
        confirmed = ranked_confirmations(
            confirmations(candidates, confirm_results, seeds, logged_statuses(confirm_report)), settings.objective
        )
    ceiling = None
    if args.ceiling:
        print("\ntraining the supervised ceiling: the same backbone on the labels", flush=True)
        ceiling_name = plan.name + STAGE_SUFFIXES[CEILING_ROLE]
        ceiling_logger = MLflowTrialLogger(
            dataclasses.replace(search, role=CEILING_ROLE),
            state_dir(plan.name) / "mlflow_report_ceiling.json",
            experiment_dir(plan.storage_path, ceiling_name),
        )
        ceiling = run_ceiling(
            preset,
            plan.trial_seeds,
            ceiling_name,
            plan.storage_path,
            ceiling_logger,
            resume=args.resume,
        )
        if ceiling is None:
            print(
                "the supervised ceiling failed: its error is in its MLflow run (iic.role=ceiling) and Tune's error.txt",
                flush=True,
            )
    summarise(
        results,
        preset,
        plan.tracking_uri,
        search.experiment_id,
        search.parent_run_id,
        plan.name,
        report_path,
        top=args.top,
        confirmed=confirmed,
        choice=choice,
        ceiling=ceiling,
    )


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    args = parse_args(argv)
    set_driver_environment()
    try:
        plan = resumed_plan(args, explicit_flags(argv)) if args.resume else new_plan(args)
        experiment_id = prepare_experiment(plan.tracking_uri, plan.experiment)
        started_ray = start_ray(
            plan.arguments["address"], plan.preset, plan.storage_path
        )  # last: nothing above has started anything
    except (SearchError, PresetError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    parent_run_id = open_search_run(
        plan.tracking_uri, experiment_id, plan.name, plan.preset, {**plan.arguments, "seeds": plan.trial_seeds}
    )
    search = SearchRecord(plan.tracking_uri, experiment_id, plan.name, parent_run_id, code_version())
    try:
        if not args.resume:
            write_record(plan)
        run_search(plan, search, started)
    except BaseException as err:
        fail_search_run(plan.tracking_uri, parent_run_id, err)
        raise
    finally:
        if started_ray:
            ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
