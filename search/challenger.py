"""When a trial has beaten the config its search started from: by more than the seed noise.

A search that starts from the preset's config (``start_from_config``) ranks every trial against it
on the same few seeds. The best of a dozen trials beats it on those seeds by luck alone (the
winner's curse): on digits, trials that beat the start config by less than the seed noise
confirmed below it on fresh seeds (docs/results.md).

So a trial goes ahead of the start config only when its mean over the search seeds beats the start
config's by ``challenger_margin`` standard errors of the difference of two such means. The seeds'
sd comes from every trial that counts: the median of their sample sds, scaled to the sd it
estimates. Each trial's sd rests on a few seeds (two on digits: one degree of freedom), so the sds
of the few trials as long as the start config would leave the margin to chance; the median of a
dozen is steady and ignores the few configs whose seeds split, one of them collapsing (their sds
would set the margin alone). With one seed a trial there is no sd, and the plain ranking stands.
"""

import math
import statistics
from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

from scipy.stats import chi2

Item = TypeVar("Item")


@dataclass(frozen=True)
class SeedFigures:
    """A trial's objective over its seeds, as the search measured it."""

    value: float  # mean over the seeds
    sd: float  # sample sd over the seeds (0 for one seed)
    seeds: int


def figures_from_metrics(metrics: dict, objective: str, seeds: int) -> SeedFigures:
    """A trial's figures from its last result (Tune's or the MLflow run's latest metrics)."""
    return SeedFigures(float(metrics[objective]), float(metrics.get(f"{objective}_sd", 0.0)), seeds)


def median_sd_ratio(seeds: int) -> float:
    """The median of a sample sd over ``seeds`` normal draws, as a share of their sd: (n-1) s²/σ² is
    chi-squared with n-1 degrees of freedom (0.674 for two seeds)."""
    return math.sqrt(chi2.median(seeds - 1) / (seeds - 1))


@dataclass(frozen=True)
class Margin:
    """How far a trial must beat the start config: ``standard_errors`` x the standard error of the
    difference of two means over ``seeds`` seeds, for seeds whose sd is ``seed_sd`` (estimated from
    ``trials`` trials)."""

    standard_errors: float
    seed_sd: float
    trials: int
    seeds: int

    @property
    def value(self) -> float:
        return self.standard_errors * self.seed_sd * math.sqrt(2 / self.seeds)

    def describe(self) -> str:
        return (
            f"{self.value:.3f} ({self.standard_errors:g} standard errors of the difference of two means over "
            f"{self.seeds} seeds; "
            f"seed sd {self.seed_sd:.3f} from the median of {self.trials} trials' sds)"
        )


def margin_problem(standard_errors: float) -> str | None:
    """Why a challenger margin of ``standard_errors`` cannot be used (None: it can)."""
    if standard_errors >= 0:
        return None
    return (
        f"--challenger-margin must be 0 or more standard errors (got {standard_errors}); "
        "0 ranks trials by their figures alone"
    )


def margin(start: SeedFigures, trials: Sequence[SeedFigures], standard_errors: float) -> Margin | None:
    """The margin over ``start`` from the seed sds of ``trials`` (those over as many seeds as it),
    or None when there is none to estimate (one seed a trial) or none is asked for."""
    sds = [t.sd for t in trials if t.seeds == start.seeds and math.isfinite(t.sd)]
    if standard_errors <= 0 or start.seeds < 2 or not sds:
        return None
    return Margin(standard_errors, statistics.median(sds) / median_sd_ratio(start.seeds), len(sds), start.seeds)


def start_ahead_of_noise(
    ranked: list[Item], start: Item | None, figures: Callable[[Item], SeedFigures], standard_errors: float, mode: str
) -> tuple[list[Item], Margin | None]:
    """``ranked`` (best first, by the search's figures) with ``start`` (one of them, or None) moved
    ahead of every trial that does not beat it by the margin; and the margin (None: the ranking is
    unchanged)."""
    if start is None:
        return ranked, None
    found = margin(figures(start), [figures(item) for item in ranked], standard_errors)
    if found is None:
        return ranked, None
    sign = 1 if mode == "max" else -1
    bar = figures(start).value + sign * found.value
    ahead = [item for item in ranked if item is not start and sign * (figures(item).value - bar) > 0]
    behind = [item for item in ranked if item is not start and all(item is not a for a in ahead)]
    return ahead + [start] + behind, found
