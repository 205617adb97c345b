"""Search presets: editable YAML files that say which IIC settings a search varies, and how.

A preset has three sections:

- ``config``: IICConfig fields shared by every trial (defaults of ``iic/config.py`` fill the rest);
- ``space``: the searched fields, each a range (``low``/``high``, optional ``log``) or a list of
  ``choices``, optionally only ``when`` a gate is on, or ``unless`` it is; a gate (``{gate: true}``)
  is a yes/no choice that switches a group of fields on or off (overclustering: its
  ``overcluster_k`` and ``overcluster_passes`` are proposed only when it is on, and ``otherwise:
  {overcluster_k: 0}`` says what the fields are when it is off). Gates are decided before the
  fields that name them, wherever the file lists them. ``unless`` searches what only fits the gate's
  off state (``sobel`` unless ``pretrained``: ImageNet weights do not read Sobel's gradients);
- ``search``: the defaults of the search itself (budget, concurrency, resources, early stopping,
  ``scheduler``: ``asha`` or ``pbt``);
- ``pbt``: how population-based training runs it (``--scheduler pbt``): the population, the epochs
  between exploits, the quantile that takes over the top's checkpoints, the chance of drawing a
  mutated value afresh, and the fields it mutates (default: the space's augmentation strengths, lr
  and lamb, the fields that may change while a trial trains).

``SearchSpace`` turns a preset into the define-by-run function that Ray Tune's ``OptunaSearch``
calls for every new trial. It is a plain module-level class so that it pickles (Ray stores the
searcher with the experiment so that an interrupted search can be resumed). Under PBT the same space
draws the first population at random (``Preset.population``), and its ranges become PBT's mutations.

The file format itself (``Param``, parsing, reading, the gated walk ``assign``) lives in
``search/preset_file.py``, which imports neither Optuna nor Ray: ``benchmarks/record_curves.py``
samples configs from presets on machines that have torch only. The Optuna side is here.
"""

import dataclasses
from dataclasses import dataclass, field

import optuna
from ray import tune

from iic.config import ConfigError, IICConfig
from search.preset_file import Param, PresetError, assign, available_presets, check_sections, parse_space, read_preset  # noqa: F401 (PresetError, available_presets: part of this module's interface)
from trainables.iic_trainable import GATE_KEY, PBT_KEY, SEEDS_KEY, TrialSettings

OBJECTIVES = {"cluster_accuracy": "max", "mutual_information": "max"}
SCHEDULERS = ("asha", "pbt")  # ASHA stops TPE's weak trials early; PBT evolves a population's schedules


def optuna_name(param: Param) -> str:
    # OptunaSearch unflattens "gate/x" into {"gate": {"x": ...}} in the trial config.
    return f"{GATE_KEY}/{param.name}" if param.kind == "gate" else param.name


def distribution(param: Param) -> optuna.distributions.BaseDistribution:
    if param.kind == "float":
        return optuna.distributions.FloatDistribution(param.low, param.high, log=param.log)
    if param.kind == "int":
        return optuna.distributions.IntDistribution(int(param.low), int(param.high), log=param.log)
    return optuna.distributions.CategoricalDistribution(param.options)


def suggest(param: Param, trial: optuna.Trial):
    if param.kind == "float":
        return trial.suggest_float(optuna_name(param), param.low, param.high, log=param.log)
    if param.kind == "int":
        return trial.suggest_int(optuna_name(param), int(param.low), int(param.high), log=param.log)
    return trial.suggest_categorical(optuna_name(param), param.options)


def tune_mutation(param: Param):
    """What PBT draws a fresh value from: the range as a Tune domain, or the list of choices
    (a value PBT does not draw afresh is scaled by 0.8 or 1.2, or shifted to a neighbour choice)."""
    if param.kind == "categorical":
        return list(param.choices)
    return (tune.loguniform if param.log else tune.uniform)(param.low, param.high)


# The collapse rule's settings: a trial's TrialSettings, searchable per preset under the same names.
COLLAPSE_SETTINGS = ("collapse_share", "collapse_patience", "collapse_information", "collapse_warmup")


@dataclass
class SearchDefaults:
    """How a preset is searched unless the command line says otherwise."""

    num_samples: int = 12
    max_concurrent: int = 2
    objective: str = "cluster_accuracy"
    # Every trial trains its config on these many seeds (the same for all trials, drawn from the
    # search's --seed) and reports their mean: IIC's result swings with the seed.
    seeds_per_trial: int = 3
    # After the search, the best confirm_top distinct configs are trained again on confirm_seeds
    # fresh seeds (never those of the search), and ranked by that: 0 switches it off.
    confirm_top: int = 3
    confirm_seeds: int = 5
    scheduler: str = "asha"  # or "pbt": population-based training (the preset's pbt section)
    grace_period: int = 10  # epochs before ASHA may stop a trial
    reduction_factor: int = 3
    time_budget_s: float | None = None  # for the search; the confirmation stage runs after it
    # For the whole search, confirmation included: the search stage ends when the confirmation, at
    # the speed the trials measured, would not end by then (search/deadline.py).
    deadline_s: float | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    collapse_share: float = TrialSettings.collapse_share
    collapse_patience: int = TrialSettings.collapse_patience
    collapse_information: float = TrialSettings.collapse_information
    collapse_warmup: int = TrialSettings.collapse_warmup
    max_failures: int = 2  # retries of a crashed trial, from its last checkpoint
    # TPE's first trial is the preset's config itself (each searched field at its config value): a
    # search too short to explore then still ends no lower than the config it starts from. PBT's
    # population is drawn at random and ignores it.
    start_from_config: bool = False
    # A trial is confirmed instead of that start config only when it beats it on the search's seeds
    # by this many standard errors of the difference (the seeds' sd from the median of the trials'): the best of a
    # dozen trials beats it by luck alone otherwise (search/challenger.py). 0: the plain ranking.
    challenger_margin: float = 2.0


@dataclass
class PBTSettings:
    """How population-based training runs a preset (``--scheduler pbt``): Population Based
    Augmentation (Ho et al., ICML 2019) ran 16 trials and exploited every 3 epochs."""

    population: int = 8  # trials trained side by side (the search's num_samples)
    perturbation_interval: int = 3  # epochs between a trial's chances to take over a better one's checkpoint
    quantile_fraction: float = 0.25  # the bottom share of trials takes over the top share's checkpoints
    resample_probability: float = 0.25  # a mutated value drawn afresh from its range, else scaled by 0.8 or 1.2
    mutate: list[str] | None = None  # fields PBT changes; default: the space's schedulable fields


@dataclass
class Preset:
    name: str
    description: str
    config: dict
    params: list[Param]
    search: SearchDefaults = field(default_factory=SearchDefaults)
    pbt: PBTSettings = field(default_factory=PBTSettings)

    @classmethod
    def load(cls, name_or_path: str) -> "Preset":
        """A bundled preset by name (``search/presets/NAME.yaml``) or a YAML file by path."""
        path, raw = read_preset(name_or_path)
        try:
            return cls.from_dict(path.stem, raw)
        except PresetError as err:
            raise PresetError(f"{path}: {err}") from None

    @classmethod
    def from_dict(cls, name: str, raw: dict) -> "Preset":
        check_sections(raw)
        try:
            IICConfig.from_dict(raw.get("config") or {})
        except ConfigError as err:
            raise PresetError(f"config section: {err}") from None
        search_fields = {f.name for f in dataclasses.fields(SearchDefaults)}
        bad = set(raw.get("search") or {}) - search_fields
        if bad:
            raise PresetError(
                f"search section: unknown setting(s) {', '.join(sorted(bad))}; valid: "
                f"{', '.join(sorted(search_fields))}"
            )
        pbt_fields = {f.name for f in dataclasses.fields(PBTSettings)}
        bad = set(raw.get("pbt") or {}) - pbt_fields
        if bad:
            raise PresetError(
                f"pbt section: unknown setting(s) {', '.join(sorted(bad))}; valid: {', '.join(sorted(pbt_fields))}"
            )
        preset = cls(
            name=name,
            description=raw.get("description", ""),
            config=dict(raw.get("config") or {}),
            params=parse_space(raw.get("space")),
            search=SearchDefaults(**(raw.get("search") or {})),
            pbt=PBTSettings(**(raw.get("pbt") or {})),
        )
        preset.validate()
        return preset

    def to_dict(self) -> dict:
        """The preset as a preset file's sections (``from_dict`` reads it back): what a search stores
        so that ``--resume`` continues it as it was, whatever became of the file."""
        return {
            "description": self.description,
            "config": dict(self.config),
            "space": {p.name: p.spec() for p in self.params},
            "search": dataclasses.asdict(self.search),
            "pbt": dataclasses.asdict(self.pbt),
        }

    def validate(self) -> None:
        """Check every range against IICConfig's own validation, before any trial starts."""
        problems = []
        gates = {}
        for param in self.params:
            for key, gate in (("when", param.when), ("unless", param.unless)):
                if gate is not None and gate not in gates:
                    problems.append(
                        f"space.{param.name}: '{key}: {gate}' names no gate; declare `{gate}: {{gate: true}}`"
                    )
            if param.kind == "gate":
                gates[param.name] = param
        base = IICConfig.from_dict(self.config)
        # The fixed config's own problems are reported once, as its own; a searched value is blamed
        # only for the problems it adds.
        fixed = problems_of(base)
        problems += [f"config: {problem}" for problem in fixed]
        for param in self.params:
            if param.kind == "gate" and param.off:
                added = [p for p in problems_of(base, **dict(param.off)) if p not in fixed]
                if added:
                    problems.append(f"space.{param.name}.otherwise: " + "\n  ".join(added))
        # Every extreme of every range must make a valid config on its own (with its gate off for ``unless``).
        for param in self.params:
            if param.kind == "gate":
                continue
            values = param.choices if param.kind == "categorical" else (param.low, param.high)
            off = dict(gates[param.unless].off) if param.unless in gates else {}
            for value in values:
                added = [p for p in problems_of(base, **{**off, param.name: value}) if p not in fixed]
                if added:
                    detail = "\n  ".join(added)
                    problems.append(f"space.{param.name}: value {value!r} is invalid ({detail})")
        if self.search.objective not in OBJECTIVES:
            problems.append(f"search.objective: {self.search.objective!r} is not one of {', '.join(OBJECTIVES)}")
        if self.search.scheduler not in SCHEDULERS:
            problems.append(f"search.scheduler: {self.search.scheduler!r} is not one of {', '.join(SCHEDULERS)}")
        problems += self._pbt_problems()
        problems += self._start_problems()
        if problems:
            raise PresetError("invalid preset:\n  " + "\n  ".join(problems))

    def start_point(self) -> dict:
        """The Optuna parameters of the preset's own config (``search.start_from_config``)."""
        space = self.space()
        return space.point(space.config)

    def _start_problems(self) -> list[str]:
        if not self.search.start_from_config:
            return []
        space = self.space()
        values = space.point_values(space.config)  # gated fields whose gate the config leaves off are not proposed
        problems = []
        for param in self.params:
            value = values.get(param.name)
            inside = (
                param.kind == "gate"
                or value is None
                or (value in param.choices if param.kind == "categorical" else param.low <= value <= param.high)
            )
            if not inside:
                span = list(param.choices) if param.kind == "categorical" else f"[{param.low}, {param.high}]"
                problems.append(
                    f"search.start_from_config: {param.name} is {value!r} in the config, outside the space's {span}; "
                    f"set it inside in the config section, widen the range, or set start_from_config: false"
                )
        return problems

    def _pbt_problems(self) -> list[str]:
        pbt, problems = self.pbt, []
        if not (isinstance(pbt.population, int) and pbt.population >= 2):
            problems.append(
                f"pbt.population: a population needs at least 2 trials (got {pbt.population!r}); PBA used 16"
            )
        if not (isinstance(pbt.perturbation_interval, int) and pbt.perturbation_interval >= 1):
            problems.append(
                "pbt.perturbation_interval: give a whole number of epochs, at least 1 (got "
                f"{pbt.perturbation_interval!r}); PBA used 3"
            )
        if not (isinstance(pbt.quantile_fraction, (int, float)) and 0 < pbt.quantile_fraction <= 0.5):
            problems.append(
                f"pbt.quantile_fraction: must lie in (0, 0.5] (got {pbt.quantile_fraction!r}): the bottom share that "
                "takes over the top share"
            )
        if not (isinstance(pbt.resample_probability, (int, float)) and 0 <= pbt.resample_probability <= 1):
            problems.append(
                f"pbt.resample_probability: a probability must lie in [0, 1] (got {pbt.resample_probability!r})"
            )
        if self.search.scheduler != "pbt":
            return problems
        params = {p.name: p for p in self.params}
        schedulable = ", ".join(IICConfig.SCHEDULABLE_FIELDS)
        for name in pbt.mutate if pbt.mutate is not None else []:
            if name not in IICConfig.SCHEDULABLE_FIELDS:
                problems.append(f"pbt.mutate: {name} cannot change while a trial trains; PBT may mutate {schedulable}")
            elif name not in params:
                problems.append(
                    f"pbt.mutate: {name} is not searched; give it a range under space (PBT draws fresh values from it)"
                )
            elif params[name].when is not None:
                problems.append(
                    f"pbt.mutate: {name} is proposed only when {params[name].when} is on; PBT cannot mutate a gated "
                    "field"
                )
        if not self.mutated_params():
            problems.append(f"pbt: nothing to mutate; the space searches none of {schedulable} (outside a gate)")
        if "schedule" in self.config:
            problems.append(
                "config.schedule: under PBT every trial's schedule is what the population makes of it; remove the "
                "fixed schedule"
            )
        return problems

    def mutated_params(self) -> list[Param]:
        """The searched fields PBT changes as trials train: ``pbt.mutate``, or every schedulable field
        of the space that no gate switches off."""
        names = self.pbt.mutate if self.pbt.mutate is not None else IICConfig.SCHEDULABLE_FIELDS
        return [p for p in self.params if p.name in names and p.name in IICConfig.SCHEDULABLE_FIELDS and p.when is None]

    def mutations(self) -> dict:
        """PBT's ``hyperparam_mutations``."""
        return {param.name: tune_mutation(param) for param in self.mutated_params()}

    def clip_to_ranges(self) -> "ClipToRanges":
        """PBT's ``custom_explore_fn``: mutated values kept inside their ranges."""
        return ClipToRanges(tuple((p.name, p.low, p.high) for p in self.mutated_params() if p.kind == "float"))

    def population(self, seeds: list[int], seed: int) -> list[dict]:
        """PBT's first population: ``pbt.population`` complete trial configs drawn at random from
        the space (gates and their ``otherwise`` included), from ``seed``, each marked as a member
        (``pbt: true``, see trainables.iic_trainable)."""
        space = self.space(seeds)
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
        members = []
        for _ in range(self.pbt.population):
            trial = study.ask()
            config = {**space(trial), PBT_KEY: True}
            for name, value in trial.params.items():  # "gate/x" -> config["gate"]["x"], as OptunaSearch nests them
                group, _, key = name.rpartition("/")
                (config.setdefault(group, {}) if group else config)[key] = value
            members.append(config)
        return members

    def space(self, seeds: list[int] | None = None) -> "SearchSpace":
        return SearchSpace(self.config, self.params, seeds)


def problems_of(config: IICConfig, **changes) -> list[str]:
    """What IICConfig's own checks find wrong with ``config`` with ``changes`` made (the data unchecked)."""
    try:
        config.replace(**changes).validate(check_data=False)
    except ConfigError as err:
        return err.problems
    return []


@dataclass(frozen=True)
class ClipToRanges:
    """PBT's explore step scales a value by 0.8 or 1.2 and may leave its range (a probability above
    1, a crop above the whole image): such a value is put back at the range's end."""

    ranges: tuple[tuple[str, float, float], ...]

    def __call__(self, config: dict) -> dict:
        return {**config, **{name: min(max(config[name], low), high) for name, low, high in self.ranges}}


class SearchSpace:
    """Optuna define-by-run function: suggests the searched fields (gated ones only when their gate
    is on) and returns the preset's fixed fields as constants, so that every trial's config holds
    its complete IICConfig plus its gates under ``gate`` and the seeds it trains on under
    ``seeds``."""

    def __init__(self, config: dict, params: list[Param], seeds: list[int] | None = None):
        # Every field, defaults included, so that each trial records its complete config.
        self.config = IICConfig.from_dict(config).to_dict()
        self.params = list(params)
        if seeds is not None:
            self.config[SEEDS_KEY] = list(seeds)

    def __call__(self, trial: optuna.Trial) -> dict:
        chosen, fixed = assign(self.params, lambda param: suggest(param, trial))
        # Ray merges the constants over the suggestions: a suggested field must not be among them.
        return {**{name: value for name, value in self.config.items() if name not in chosen}, **fixed}

    def distributions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        return {optuna_name(p): distribution(p) for p in self.params}

    def point(self, config: dict) -> dict:
        """The Optuna parameters that would reproduce ``config`` (an IICConfig dict): searched fields
        at the config's values, a gate on unless the config matches its ``otherwise`` values."""
        by_name = {p.name: p for p in self.params}
        return {optuna_name(by_name[name]): v for name, v in self.point_values(config).items()}

    def point_values(self, config: dict) -> dict:
        """``point``'s values by field (and gate) name."""

        def value(param: Param):
            if param.kind == "gate":
                return not param.off or any(config.get(k) != v for k, v in param.off)
            return config[param.name]

        return assign(self.params, value)[0]
