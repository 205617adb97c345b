"""A preset (``search.preset``) as Optuna's and Ray Tune's objects.

``SearchSpace`` is the define-by-run function that Ray Tune's ``OptunaSearch`` calls for every new
trial. It is a plain module-level class so that it pickles (Ray stores the searcher with the
experiment so that an interrupted search can be resumed). Under PBT the same space draws the first
population at random (``population``), and its ranges become PBT's mutations (``mutations``).
"""

from dataclasses import dataclass

import optuna
from ray import tune

from iic.config import IICConfig
from search.params import Param, assign, config_changes, config_point
from search.preset import Preset
from trainables.iic_trainable import GATE_KEY, PBT_KEY, SEEDS_KEY


def optuna_name(param: Param) -> str:
    # OptunaSearch unflattens "gate/x" into {"gate": {"x": ...}} in the trial config: gates, and the
    # alternatives of a field (whose value the space returns under the field's own name).
    return param.name if param.name == param.field else f"{GATE_KEY}/{param.name}"


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
        # Ray merges the constants over the suggestions: a suggested field must not be among them
        # (an alternative's value, suggested under its own name, is returned under its field's).
        changes = config_changes(self.params, chosen, fixed)
        suggested = {p.name for p in self.params if p.name in chosen and p.name == p.field}
        return {name: value for name, value in {**self.config, **changes}.items() if name not in suggested}

    def distributions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        return {optuna_name(p): distribution(p) for p in self.params}

    def point(self, config: dict) -> dict:
        """The Optuna parameters that would reproduce ``config`` (an IICConfig dict)."""
        by_name = {p.name: p for p in self.params}
        return {optuna_name(by_name[name]): v for name, v in config_point(self.params, config).items()}


def search_space(preset: Preset, seeds: list[int] | None = None) -> SearchSpace:
    """The preset's space; with ``seeds``, every trial's config says it trains on them."""
    return SearchSpace(preset.config, preset.params, seeds)


def start_point(preset: Preset) -> dict:
    """The Optuna parameters of the preset's own config (``search.start_from_config``)."""
    space = search_space(preset)
    return space.point(space.config)


def population(preset: Preset, seeds: list[int], seed: int) -> list[dict]:
    """PBT's first population: ``pbt.population`` complete trial configs drawn at random from the
    space (gates and their ``otherwise`` included), from ``seed``, each marked as a member (``pbt:
    true``, see trainables.iic_trainable)."""
    space = search_space(preset, seeds)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    members = []
    for _ in range(preset.pbt.population):
        trial = study.ask()
        config = {**space(trial), PBT_KEY: True}
        for name, value in trial.params.items():  # "gate/x" -> config["gate"]["x"], as OptunaSearch nests them
            group, _, key = name.rpartition("/")
            (config.setdefault(group, {}) if group else config)[key] = value
        members.append(config)
    return members


def tune_mutation(param: Param):
    """What PBT draws a fresh value from: the range as a Tune domain, or the list of choices
    (a value PBT does not draw afresh is scaled by 0.8 or 1.2, or shifted to a neighbour choice)."""
    if param.kind == "categorical":
        return list(param.choices)
    return (tune.loguniform if param.log else tune.uniform)(param.low, param.high)


def mutations(preset: Preset) -> dict:
    """PBT's ``hyperparam_mutations``."""
    return {param.name: tune_mutation(param) for param in preset.mutated_params()}


@dataclass(frozen=True)
class ClipToRanges:
    """PBT's explore step scales a value by 0.8 or 1.2 and may leave its range (a probability above
    1, a crop above the whole image): such a value is put back at the range's end."""

    ranges: tuple[tuple[str, float, float], ...]

    def __call__(self, config: dict) -> dict:
        return {**config, **{name: min(max(config[name], low), high) for name, low, high in self.ranges}}


def clip_to_ranges(preset: Preset) -> ClipToRanges:
    """PBT's ``custom_explore_fn``: mutated values kept inside their ranges."""
    return ClipToRanges(tuple((p.name, p.low, p.high) for p in preset.mutated_params() if p.kind == "float"))
