"""Search presets: editable YAML files that say which IIC settings a search varies, and how.

A preset has three sections:

- ``config``: IICConfig fields shared by every trial (defaults of ``iic/config.py`` fill the rest);
- ``space``: the searched fields, each a range (``low``/``high``, optional ``log``) or a list of
  ``choices``, optionally only ``when`` a gate is on, or ``unless`` it is; a gate (``{gate: true}``)
  is a yes/no choice that switches a group of fields on or off (overclustering: its
  ``overcluster_k`` and ``overcluster_passes`` are proposed only when it is on, and ``otherwise:
  {overcluster_k: 0}`` says what the fields are when it is off). A gate comes before the fields
  that name it. ``unless`` searches what only fits the gate's off state (``sobel`` unless
  ``pretrained``: ImageNet weights do not read Sobel's gradients);
- ``search``: the defaults of the search itself (budget, concurrency, resources, early stopping).

``SearchSpace`` turns a preset into the define-by-run function that Ray Tune's ``OptunaSearch``
calls for every new trial. It is a plain module-level class so that it pickles (Ray stores the
searcher with the experiment so that an interrupted search can be resumed).
"""

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path

import optuna

from iic.config import ConfigError, IICConfig, read_yaml
from trainables.iic_trainable import GATE_KEY, SEEDS_KEY, TrialSettings

PRESETS_DIR = Path(__file__).resolve().parent / "presets"
OBJECTIVES = {"cluster_accuracy": "max", "mutual_information": "max"}


class PresetError(ValueError):
    """A preset that cannot be searched; the message names the entry and the fix."""


@dataclass(frozen=True)
class Param:
    """One searched field: a float/int range or a list of choices, or a gate."""

    name: str
    kind: str  # "float", "int", "categorical" or "gate"
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple = ()
    when: str | None = None
    unless: str | None = None  # proposed only while this gate is off
    off: tuple = ()  # a gate's (field, value) pairs for when it is off

    def active(self, gates: dict[str, bool]) -> bool:
        """Whether the field is proposed, given the gates decided so far."""
        if self.when is not None and not gates.get(self.when, False):
            return False
        return self.unless is None or not gates.get(self.unless, True)

    @property
    def optuna_name(self) -> str:
        # OptunaSearch unflattens "gate/x" into {"gate": {"x": ...}} in the trial config.
        return f"{GATE_KEY}/{self.name}" if self.kind == "gate" else self.name

    def distribution(self) -> optuna.distributions.BaseDistribution:
        if self.kind == "float":
            return optuna.distributions.FloatDistribution(self.low, self.high, log=self.log)
        if self.kind == "int":
            return optuna.distributions.IntDistribution(int(self.low), int(self.high), log=self.log)
        return optuna.distributions.CategoricalDistribution(list(self.choices) if self.kind == "categorical" else [False, True])

    def suggest(self, trial: optuna.Trial):
        if self.kind == "float":
            return trial.suggest_float(self.optuna_name, self.low, self.high, log=self.log)
        if self.kind == "int":
            return trial.suggest_int(self.optuna_name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_categorical(self.optuna_name, list(self.choices) if self.kind == "categorical" else [False, True])


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
    grace_period: int = 10  # epochs before ASHA may stop a trial
    reduction_factor: int = 3
    time_budget_s: float | None = None  # for the search; the confirmation stage runs after it
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    collapse_share: float = TrialSettings.collapse_share
    collapse_patience: int = TrialSettings.collapse_patience
    collapse_information: float = TrialSettings.collapse_information
    collapse_warmup: int = TrialSettings.collapse_warmup
    max_failures: int = 2  # retries of a crashed trial, from its last checkpoint


@dataclass
class Preset:
    name: str
    description: str
    config: dict
    params: list[Param]
    search: SearchDefaults = field(default_factory=SearchDefaults)

    @classmethod
    def load(cls, name_or_path: str) -> "Preset":
        """A bundled preset by name (``search/presets/NAME.yaml``) or a YAML file by path."""
        path = Path(name_or_path)
        if not path.suffix:
            path = PRESETS_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise PresetError(f"unknown preset {name_or_path!r}: choose one of {', '.join(available_presets())} or give a YAML file path")
        raw = read_yaml(path, PresetError) or {}
        if raw.get("extends"):
            # A training config file (configs/*.yaml) under the preset's own config section.
            extended = (path.parent / raw["extends"]).resolve()
            if not extended.is_file():
                raise PresetError(f"{path}: extends {raw['extends']!r}, which does not exist (paths are relative to the preset)")
            raw["config"] = {**(read_yaml(extended, PresetError) or {}), **(raw.get("config") or {})}
        try:
            return cls.from_dict(path.stem, raw)
        except PresetError as err:
            raise PresetError(f"{path}: {err}") from None

    @classmethod
    def from_dict(cls, name: str, raw: dict) -> "Preset":
        unknown = set(raw) - {"description", "extends", "config", "space", "search"}
        if unknown:
            raise PresetError(f"unknown section(s) {', '.join(sorted(unknown))}; a preset has description, extends, config, space and search")
        try:
            IICConfig.from_dict(raw.get("config") or {})
        except ConfigError as err:
            raise PresetError(f"config section: {err}") from None
        search_fields = {f.name for f in dataclasses.fields(SearchDefaults)}
        bad = set(raw.get("search") or {}) - search_fields
        if bad:
            raise PresetError(f"search section: unknown setting(s) {', '.join(sorted(bad))}; valid: {', '.join(sorted(search_fields))}")
        preset = cls(
            name=name,
            description=raw.get("description", ""),
            config=dict(raw.get("config") or {}),
            params=[_parse_param(key, spec) for key, spec in (raw.get("space") or {}).items()],
            search=SearchDefaults(**(raw.get("search") or {})),
        )
        preset.validate()
        return preset

    def validate(self) -> None:
        """Check every range against IICConfig's own validation, before any trial starts."""
        problems = []
        gates = {}
        for param in self.params:
            for key, gate in (("when", param.when), ("unless", param.unless)):
                if gate is not None and gate not in gates:
                    problems.append(f"space.{param.name}: '{key}: {gate}' names no gate before it; declare `{gate}: {{gate: true}}` first")
            if param.kind == "gate":
                gates[param.name] = param
        base = IICConfig.from_dict(self.config)
        for param in self.params:
            if param.kind == "gate" and param.off:
                try:
                    base.replace(**dict(param.off)).validate(check_data=False)
                except ConfigError as err:
                    detail = "\n  ".join(err.problems)
                    problems.append(f"space.{param.name}.otherwise: {detail}")
        # Every extreme of every range must make a valid config on its own (with its gate off for ``unless``).
        for param in self.params:
            if param.kind == "gate":
                continue
            values = param.choices if param.kind == "categorical" else (param.low, param.high)
            off = dict(gates[param.unless].off) if param.unless in gates else {}
            for value in values:
                try:
                    base.replace(**{**off, param.name: value}).validate(check_data=False)
                except ConfigError as err:
                    detail = "\n  ".join(err.problems)
                    problems.append(f"space.{param.name}: value {value!r} is invalid ({detail})")
        if self.search.objective not in OBJECTIVES:
            problems.append(f"search.objective: {self.search.objective!r} is not one of {', '.join(OBJECTIVES)}")
        if problems:
            raise PresetError("invalid search space:\n  " + "\n  ".join(problems))

    def space(self, seeds: list[int] | None = None) -> "SearchSpace":
        return SearchSpace(self.config, self.params, seeds)


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
        constants = dict(self.config)
        gates = {}
        for param in self.params:
            if not param.active(gates):
                continue
            value = param.suggest(trial)
            # Ray merges the constants over the suggestions: a suggested field must not be among them.
            constants.pop(param.name, None)
            if param.kind == "gate":
                gates[param.name] = value
                if not value:
                    constants.update(param.off)
        return constants

    def distributions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        return {p.optuna_name: p.distribution() for p in self.params}

    def point(self, config: dict) -> dict:
        """The Optuna parameters that would reproduce ``config`` (an IICConfig dict): searched fields
        at the config's values, a gate on unless the config matches its ``otherwise`` values."""
        point, gates = {}, {}
        for param in self.params:
            if not param.active(gates):
                continue
            if param.kind == "gate":
                gates[param.name] = not param.off or any(config.get(k) != v for k, v in param.off)
                point[param.optuna_name] = gates[param.name]
            else:
                point[param.optuna_name] = config[param.name]
        return point


def available_presets() -> list[str]:
    return sorted(path.stem for path in PRESETS_DIR.glob("*.yaml"))


def _parse_param(name: str, spec) -> Param:
    fields = {f.name: f for f in dataclasses.fields(IICConfig)}
    if not isinstance(spec, dict):
        raise PresetError(f"space.{name}: expected a mapping such as {{low: 0.1, high: 0.9}} or {{choices: [...]}}, got {spec!r}")
    unknown = set(spec) - {"low", "high", "log", "choices", "when", "unless", "gate", "otherwise"}
    if unknown:
        raise PresetError(f"space.{name}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; use low/high/log, choices, when or unless, or gate and otherwise")
    when, unless = spec.get("when"), spec.get("unless")
    if spec.get("gate"):
        if name in fields:
            raise PresetError(f"space.{name}: a gate cannot share its name with an IICConfig field")
        off = spec.get("otherwise") or {}
        if not isinstance(off, dict) or any(key not in fields for key in off):
            raise PresetError(f"space.{name}: otherwise must map IICConfig fields to their values when the gate is off, e.g. {{overcluster_k: 0}}")
        return Param(name, "gate", off=tuple(off.items()))
    if name not in fields:
        close = difflib.get_close_matches(name, fields, n=1)
        raise PresetError(f"space.{name}: not an IICConfig field" + (f" — did you mean {close[0]!r}?" if close else ""))
    if "choices" in spec:
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise PresetError(f"space.{name}: choices must be a non-empty list")
        return Param(name, "categorical", choices=tuple(choices), when=when, unless=unless)
    if "low" not in spec or "high" not in spec:
        raise PresetError(f"space.{name}: give low and high (a range) or choices (a list)")
    low, high = spec["low"], spec["high"]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)):
        raise PresetError(f"space.{name}: low and high must be numbers, got {low!r} and {high!r}")
    if low >= high:
        raise PresetError(f"space.{name}: low ({low}) must be below high ({high}); for a fixed value put it under config")
    log = bool(spec.get("log", False))
    if log and low <= 0:
        raise PresetError(f"space.{name}: a log range needs low > 0 (got {low})")
    kind = "int" if fields[name].type is int else "float"
    if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
        raise PresetError(f"space.{name}: {name} is an integer field; low and high must be integers")
    return Param(name, kind, low=low, high=high, log=log, when=when, unless=unless)
