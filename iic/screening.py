"""Screening of initialisations: each seed starts as several models and keeps one.

With ``screen_inits`` > 1 a seed trains that many initialisations side by side (the seed itself,
then seeds drawn from it) and reports the one with the highest held-out mutual information; after
the config's ``pick_epoch`` only that one trains on. A seed whose first initialisation would fail
shows it by then, for the cost of the other initialisations' epochs until the pick.
"""

import numpy as np

from iic.seeds import SEED_RANGE, label_free_pick

_SCREENING_STREAM = 1  # a seed's initialisations come from its own stream, not draw_seeds(seed)'s


def initialisations(seeds: list[int], inits: int) -> list[list[int]]:
    """Each seed's ``inits`` initialisations: the seed itself, then seeds drawn from it (none
    repeating another of the run's, so every model of a stack is its own run)."""
    taken = set(seeds)
    groups = []
    for seed in seeds:
        rng = np.random.default_rng([seed, _SCREENING_STREAM])
        group = [seed]
        while len(group) < inits:
            candidate = int(rng.integers(SEED_RANGE))
            if candidate not in taken:
                taken.add(candidate)
                group.append(candidate)
        groups.append(group)
    return groups


def groups_by_seed(seed_of_model: list[int], seeds: list[int]) -> list[list[int]]:
    """The indices of a stack's models, grouped by the seed each reports as."""
    return [[i for i, reported in enumerate(seed_of_model) if reported == seed] for seed in seeds]


def picks(groups: list[list[int]], per_model: list[dict]) -> list[int]:
    """The model each seed reports: of its group, the one whose metrics in ``per_model`` have the
    highest held-out mutual information."""
    return [group[label_free_pick([per_model[i] for i in group])] for group in groups]


def kept_after(epoch: int, pick_epoch: int, groups: list[list[int]], per_model: list[dict]) -> list[int] | None:
    """The models that train on after ``epoch``: from ``pick_epoch`` on, each seed's pick; None
    while every model trains on (or none is left to drop)."""
    if epoch < pick_epoch or all(len(group) == 1 for group in groups):
        return None
    return sorted(picks(groups, per_model))
