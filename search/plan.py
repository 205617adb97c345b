"""The plan of a search: the command line's flags and the preset, settled and checked before
anything starts, and stored beside Tune's experiment state so that ``--resume`` continues the
search as it was started, whatever became of the preset file since."""

import argparse
import dataclasses
import json
from pathlib import Path

import pyarrow.fs
from ray import tune

from iic.config import ConfigError, IICConfig
from iic.data import DatasetError, split_has_labels
from iic.seeds import draw_seeds
from iic.supervised import check_held_out_source
from search.challenger import margin_problem
from search.driver import SearchError, check_tracking_uri, experiment_dir, resolve_storage_path
from search.objectives import UNLABELLED_DEFAULT, unlabelled_problem
from search.preset import Preset, PresetError
from search.space import search_space, start_point

# IICConfig fields that say which images a search clusters: a preset's config holds its place as the
# incumbent (start_from_config, guarded by the challenger margin) only on the data it was tuned on.
DATA_FIELDS = ("dataset", "data_root", "split", "class_map", "max_samples")


# The command line's flags that set a field of the preset's search section, by that field.
SEARCH_FLAGS = {
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
    searched = {p.field for p in preset.params if p.kind != "gate"} & overridden
    if searched:
        raise SearchError(
            f"--set {', '.join(sorted(searched))}: searched by the preset; edit its space (or copy it with --config) "
            "to fix them"
        )
    other_data = [name for name in DATA_FIELDS if name in overridden]
    base = base.with_absolute_paths()  # trials run in folders of their own, not here
    overridden |= {name for name in ("data_root", "backbone_weights") if getattr(base, name) is not None}
    changes = {"config": {k: v for k, v in base.to_dict().items() if k in config or k in overridden}}
    given = {field: getattr(args, flag) for flag, field in SEARCH_FLAGS.items() if getattr(args, flag) is not None}
    search = dataclasses.replace(preset.search, **given)
    pbt = preset.pbt if args.population is None else dataclasses.replace(preset.pbt, population=args.population)
    notes = []
    if other_data and search.start_from_config:
        search = dataclasses.replace(search, start_from_config=False)
        notes.append(
            f"--set {', '.join(other_data)}: the preset's config was tuned on other data, so the search starts "
            "without it as the incumbent (no first trial of it, no challenger margin)"
        )
    if search.scheduler == "pbt":
        search = dataclasses.replace(search, num_samples=pbt.population)
    try:
        base.validate()  # the data exists, the fixed settings are sound
        labelled = split_has_labels(base.dataset, base.data_root, base.split)
    except (ConfigError, DatasetError) as err:
        raise SearchError(str(err)) from None
    if not labelled and unlabelled_problem(search.objective):
        if args.objective is not None:
            raise SearchError(unlabelled_problem(search.objective))
        search = dataclasses.replace(search, objective=UNLABELLED_DEFAULT)
        notes.append(
            f"the images have no labels: the search ranks trials by {UNLABELLED_DEFAULT} (seed agreement times "
            "cluster balance; docs/searching.md), and accuracy and NMI are not reported"
        )
    preset = dataclasses.replace(preset, search=search, pbt=pbt, **changes)
    problems = flag_problems(args, preset)
    if problems:
        raise SearchError("invalid search:\n  " + "\n  ".join(problems))
    try:
        preset.validate()
    except PresetError as err:
        raise SearchError(str(err)) from None
    return preset, notes


def flag_problems(args: argparse.Namespace, preset: Preset) -> list[str]:
    """What is wrong with the search's settings once the command line's flags are applied."""
    search, problems = preset.search, []
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
    elif args.population is not None:
        problems.append(
            "--population: only population-based training has one; add --scheduler pbt or use --num-samples"
        )
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
    fixed_seed = "seed" in set(preset.config) | {o.partition("=")[0].strip() for o in args.overrides}
    if search.seeds_per_trial > 1 and fixed_seed:
        problems.append(
            f"seed is fixed (--set seed or the preset's config) but each trial trains on {search.seeds_per_trial} "
            "seeds; fix the seed with --seeds-per-trial 1, or drop it to let the search draw seeds"
        )
    if search.confirm_top < 0 or (search.confirm_top and search.confirm_seeds < 1):
        problems.append(
            f"--confirm-top must be 0 or more, with --confirm-seeds at least 1 (got {search.confirm_top} and "
            f"{search.confirm_seeds})"
        )
    if margin_problem(search.challenger_margin):
        problems.append(margin_problem(search.challenger_margin))
    return problems


def search_seeds(preset: Preset, search_seed: int) -> list[int]:
    """The seeds every trial trains on: drawn from the search's seed, or the one fixed seed."""
    if preset.search.seeds_per_trial == 1 and "seed" in preset.config:
        return [preset.config["seed"]]
    return draw_seeds(search_seed, preset.search.seeds_per_trial)


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
    def search_seed(self) -> int:
        """The seed of the sampler, and of the seeds trials train on (``--seed``)."""
        return self.arguments["seed"]

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
    start = [start_point(preset)] if start_config(preset) is not None else []
    return (load_warm_start(warm_start, preset) if warm_start else []) + start


def load_warm_start(folder: str | Path, preset: Preset) -> list[dict]:
    """Optuna points (``points_to_evaluate``) for every ``*.yaml`` config in ``folder``: each
    searched field at the config's value, gates set by what the config does."""
    folder = Path(folder)
    files = sorted(folder.glob("*.yaml")) if folder.is_dir() else []
    if not files:
        raise PresetError(
            f"--warm-start {folder}: no *.yaml configs there; point it at the --out folder of search/export.py"
        )
    space = search_space(preset)
    points = []
    for path in files:
        try:
            config = IICConfig.from_yaml(path).to_dict()
        except ConfigError as err:
            raise PresetError(f"--warm-start: {err}") from None
        points.append(space.point(config))
    return points


def default_experiment(preset_name: str) -> str:
    """The MLflow experiment of a search unless ``--experiment`` names one (and its name, unless ``--name`` does)."""
    return f"iic-{preset_name}"


def new_plan(args: argparse.Namespace) -> SearchPlan:
    """A new search's plan from the command line, checked; refuses a name already taken."""
    preset, notes = load_preset(args)
    if args.ceiling:
        try:
            check_held_out_source(IICConfig.from_dict(preset.config))
        except DatasetError as err:
            raise SearchError(f"--ceiling: {err}") from None
    tracking_uri = check_tracking_uri(args.tracking_uri)
    experiment = args.experiment or default_experiment(preset.name)
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
    experiment = args.experiment or default_experiment(Preset.load(args.config or args.preset).name)
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
    raw = dict(stored["preset"])
    try:  # a search stored by a version whose settings or classes have since changed
        preset = Preset.from_dict(raw.pop("name"), raw)
        tune.ExperimentAnalysis(folder)  # Tune's trials, read as the resumed search reads them (any storage)
    except (PresetError, AttributeError, ImportError, TypeError, KeyError) as err:
        raise SearchError(
            f"--resume: the search at {folder} was stored by another version of iic-search, which this one cannot "
            f"read ({type(err).__name__}: {err}). Finish it with the version that started it, or start a new search "
            "under another --name; its MLflow runs stay as they are"
        ) from None
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


def record_file(folder: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """Where a search's record is: beside Tune's experiment state (in ``folder``), on the storage's
    own filesystem."""
    filesystem, path = pyarrow.fs.FileSystem.from_uri(folder if "://" in folder else Path(folder).as_uri())
    return filesystem, f"{path}/{SEARCH_RECORD_FILE}"


def read_record(folder: str) -> dict | None:
    filesystem, path = record_file(folder)
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
