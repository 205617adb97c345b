"""Search presets: editable YAML files that say which IIC settings a search varies, and how.

A preset (``search/presets/NAME.yaml``, or a file of your own) has these sections:

- ``extends``: a training config file (``configs/*.yaml``) read under the preset's own ``config``;
- ``config``: IICConfig fields shared by every trial (defaults of ``iic/config.py`` fill the rest);
- ``space``: the searched fields and the gates that switch groups of them on or off
  (``search/params.py``: overclustering's ``overcluster_k`` is proposed only when its gate is on, and
  ``otherwise: {overcluster_k: 0}`` says what the field is when it is off; ``sobel`` unless
  ``pretrained``: ImageNet weights do not read Sobel's gradients);
- ``search``: the search's own defaults (``SearchDefaults``: budget, resources, objective, scheduler, ...);
- ``pbt``: how population-based training runs it (``PBTSettings``).

This module reads a preset and checks every range, under every state of its gates, against
IICConfig's own validation; ``search/space.py`` makes Optuna's and Tune's objects of it.
"""

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from iic.config import ConfigError, IICConfig, read_yaml
from search.objectives import objective_problems
from search.params import Param, PresetError, config_point, gate_states, parse_space, space_spec
from trainables.collapse import TrialSettings

PRESETS_DIR = Path(__file__).resolve().parent / "presets"
PRESET_SECTIONS = ("description", "extends", "config", "space", "search", "pbt")
SCHEDULERS = ("asha", "pbt")  # ASHA stops TPE's weak trials early; PBT evolves a population's schedules
# The collapse rule's settings: a trial's TrialSettings, searchable per preset under the same names.
COLLAPSE_SETTINGS = tuple(f.name for f in dataclasses.fields(TrialSettings) if f.name.startswith("collapse_"))


@dataclass
class SearchDefaults:
    """How a preset is searched unless the command line says otherwise."""

    num_samples: int = 12
    max_concurrent: int = 2
    objective: str = "cluster_accuracy"  # on images without labels the search ranks by label_free
    # Seeds each trial trains its config on (the same for all, drawn from --seed); it reports their mean.
    seeds_per_trial: int = 3
    # The best confirm_top distinct configs train again on confirm_seeds fresh seeds, ranked by that (0: off).
    confirm_top: int = 3
    confirm_seeds: int = 5
    scheduler: str = "asha"  # or "pbt": population-based training (the preset's pbt section)
    grace_period: int = 10  # epochs before ASHA may stop a trial
    reduction_factor: int = 3
    time_budget_s: float | None = None  # for the search; the confirmation stage runs after it
    # For the whole search, confirmation included: search/deadline.py ends the search stage in time.
    deadline_s: float | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    collapse_share: float = TrialSettings.collapse_share
    collapse_patience: int = TrialSettings.collapse_patience
    collapse_information: float = TrialSettings.collapse_information
    collapse_warmup: int = TrialSettings.collapse_warmup
    collapse_mean_share: float = TrialSettings.collapse_mean_share
    collapse_empty: int = TrialSettings.collapse_empty
    collapse_information_drop: float = TrialSettings.collapse_information_drop
    max_failures: int = 2  # retries of a crashed trial, from its last checkpoint
    # TPE's first trial is the preset's config itself, so a search too short to explore ends no lower
    # than it. PBT's population is drawn at random and ignores it.
    start_from_config: bool = False
    # A trial is confirmed instead of that start config only when it beats it on the search's seeds by
    # this many standard errors of the difference (the seeds' sd from the median of the trials'): the
    # best of a dozen trials beats it by luck alone otherwise (search/challenger.py). 0: plain ranking.
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
            "space": space_spec(self.params),
            "search": dataclasses.asdict(self.search),
            "pbt": dataclasses.asdict(self.pbt),
        }

    def validate(self) -> None:
        """Check every range against IICConfig's own validation, before any trial starts: each value
        under every state of the gates it is proposed in, and at each end of a searched num_clusters."""
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
        if problems:
            raise PresetError("invalid preset:\n  " + "\n  ".join(problems))
        base = IICConfig.from_dict(self.config)
        # The fixed config's own problems are reported once, as its own; a searched value is blamed
        # only for the problems it adds.
        fixed = problems_of(base)
        problems += [f"config: {problem}" for problem in fixed]
        # A state of the gates fixes some fields, and its alternatives of a field (a ViT backbone under
        # `foundation`) another: each is checked with the first value of each alternative it proposes.
        states = [
            (
                decided,
                {
                    **fixes,
                    **{
                        p.field: p.options[0] if p.kind == "categorical" else p.low
                        for p in self.params
                        if p.kind != "gate" and p.name != p.field and p.active(decided)
                    },
                },
            )
            for decided, fixes in gate_states(self.params)
        ]
        for decided, fixes in states:
            added = [p for p in problems_of(base, **fixes) if p not in fixed]
            if added:
                where = ", ".join(f"{g} {'on' if on else 'off'}" for g, on in decided.items())
                problems.append(f"space: with {where}: " + "\n  ".join(dict.fromkeys(added)))
        k_ends = [{}] + [{"num_clusters": k} for p in self.params if p.field == "num_clusters" for k in (p.low, p.high)]
        for param in self.params:
            if param.kind == "gate":
                continue
            values = param.choices if param.kind == "categorical" else (param.low, param.high)
            contexts = [fixes for decided, fixes in states if param.active(decided)]
            for value in values:
                added = [
                    p
                    for fixes in contexts
                    for k in k_ends
                    for p in problems_of(base, **{**fixes, **k, param.field: value})
                    if p not in fixed
                ]
                if added:
                    detail = "\n  ".join(dict.fromkeys(added))
                    problems.append(f"space.{param.name}: value {value!r} is invalid ({detail})")
        problems += [f"search.{problem}" for problem in objective_problems(self.search, len(k_ends) > 1)]
        if self.search.scheduler not in SCHEDULERS:
            problems.append(f"search.scheduler: {self.search.scheduler!r} is not one of {', '.join(SCHEDULERS)}")
        problems += self._pbt_problems()
        problems += self._start_problems()
        if problems:
            raise PresetError("invalid preset:\n  " + "\n  ".join(problems))

    def _start_problems(self) -> list[str]:
        if not self.search.start_from_config:
            return []
        # gated fields whose gate the config leaves off are not proposed
        values = config_point(self.params, IICConfig.from_dict(self.config).to_dict())
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


def problems_of(config: IICConfig, **changes) -> list[str]:
    """What IICConfig's own checks find wrong with ``config`` with ``changes`` made (the data unchecked)."""
    try:
        config.replace(**changes).validate(check_data=False)
    except ConfigError as err:
        return err.problems
    return []


def available_presets() -> list[str]:
    return sorted(path.stem for path in PRESETS_DIR.glob("*.yaml"))


def read_preset(name_or_path: str) -> tuple[Path, dict]:
    """The file of a bundled preset (by name) or of a YAML path, and its contents, with the training
    config file it ``extends`` merged under its own ``config`` section."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PRESETS_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise PresetError(
            f"unknown preset {name_or_path!r}: choose one of {', '.join(available_presets())} or give a YAML file path"
        )
    raw = read_yaml(path, PresetError) or {}
    if raw.get("extends"):
        # A training config file (configs/*.yaml) under the preset's own config section.
        extended = (path.parent / raw["extends"]).resolve()
        if not extended.is_file():
            raise PresetError(
                f"{path}: extends {raw['extends']!r}, which does not exist (paths are relative to the preset)"
            )
        raw["config"] = {**(read_yaml(extended, PresetError) or {}), **(raw.get("config") or {})}
    return path, raw


def check_sections(raw: dict) -> None:
    unknown = set(raw) - set(PRESET_SECTIONS)
    if unknown:
        raise PresetError(f"unknown section(s) {', '.join(sorted(unknown))}; a preset has {', '.join(PRESET_SECTIONS)}")
