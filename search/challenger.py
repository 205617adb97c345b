"""When a trial has beaten the config its search started from: by more than the seed noise.

A search that starts from the preset's config (``start_from_config``) ranks every trial against it
on the same few seeds. The best of a dozen trials beats it on those seeds by luck alone (the
winner's curse). In two default digits searches the best trial beat the start config by 0.006 and
0.015 on the search's two seeds, less than the seed noise, and then confirmed 0.919 and 0.931 on
fresh seeds. The start config read 0.975 and 0.935 on those same fresh seeds
(benchmarks/data/digits_quality_default_px12_on_confirmation_seeds_of_search_seeds0_4.txt).

So a trial goes ahead of the start config only when its mean over the search seeds beats the start
config's by ``challenger_margin`` standard errors of the difference of two such means. The seeds'
sd is pooled over the trials that trained as long as the start config. With one seed a trial there
is no sd to pool, and the plain ranking stands.
"""

import math
from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

Item = TypeVar("Item")


@dataclass(frozen=True)
class SeedFigures:
    """A trial's objective over its seeds, as the search measured it."""

    value: float  # mean over the seeds
    sd: float  # sample sd over the seeds (0 for one seed)
    seeds: int
    epochs: int  # the epoch the figures are from


def figures_from_metrics(metrics: dict, objective: str, seeds: int) -> SeedFigures:
    """A trial's figures from its last result (Tune's or the MLflow run's latest metrics)."""
    return SeedFigures(float(metrics[objective]), float(metrics.get(f"{objective}_sd", 0.0)), seeds, int(metrics.get("epoch", 0)))


@dataclass(frozen=True)
class Margin:
    """How far a trial must beat the start config: ``standard_errors`` x the standard error of the
    difference of two trials' means, from ``pooled_sd`` over ``pooled_trials`` trials."""

    standard_errors: float
    pooled_sd: float
    pooled_trials: int
    seeds: int

    @property
    def value(self) -> float:
        return self.standard_errors * self.pooled_sd * math.sqrt(2 / self.seeds)

    def describe(self) -> str:
        return (f"{self.value:.3f} ({self.standard_errors:g} standard errors; seed sd {self.pooled_sd:.3f} pooled over "
                f"{self.pooled_trials} trial(s) of {self.seeds} seeds that trained as long as the start config)")


def margin(start: SeedFigures, trials: Sequence[SeedFigures], standard_errors: float) -> Margin | None:
    """The margin over ``start`` (one of ``trials``), or None when there is no seed sd to pool
    (one seed a trial) or no margin is asked for."""
    pooled = [t for t in trials if t.epochs >= start.epochs and t.seeds > 1 and math.isfinite(t.sd)]
    degrees = sum(t.seeds - 1 for t in pooled)
    if standard_errors <= 0 or degrees == 0:
        return None
    pooled_sd = math.sqrt(sum((t.seeds - 1) * t.sd**2 for t in pooled) / degrees)
    return Margin(standard_errors, pooled_sd, len(pooled), start.seeds)


def start_ahead_of_noise(ranked: list[Item], start: Item | None, figures: Callable[[Item], SeedFigures], standard_errors: float,
                         mode: str) -> tuple[list[Item], Margin | None]:
    """``ranked`` (best first, by the search's figures) with the start config moved ahead of every
    trial that does not beat it by the margin; and the margin (None: the ranking is unchanged)."""
    if start is None or start not in ranked:
        return ranked, None
    found = margin(figures(start), [figures(item) for item in ranked], standard_errors)
    if found is None:
        return ranked, None
    sign = 1 if mode == "max" else -1
    bar = figures(start).value + sign * found.value
    ahead = [item for item in ranked if item is not start and sign * (figures(item).value - bar) > 0]
    behind = [item for item in ranked if item is not start and all(item is not a for a in ahead)]
    return ahead + [start] + behind, found
