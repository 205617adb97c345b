"""Seeds as noise: drawing the seeds of a run, and summarising a config's results over them.

IIC's outcome swings by tens of points with the random seed, so a config's quality is a
distribution over seeds: its mean (the objective a search ranks by), its worst seed, its spread,
and what a user who trains it several times and keeps the run with the highest label-free score
(held-out mutual information) would get.
"""

import math
from typing import Sequence

import numpy as np

from iic.config import ConfigError

# Metrics whose spread over seeds is reported beside their mean.
SPREAD_METRICS = ("cluster_accuracy", "nmi", "mutual_information", "largest_cluster_share")
# Per-seed values kept under their own names (``<metric>/seed_<i>``), for curves per seed; a
# search's trial adds whether each seed has collapsed (1) or not (0), and how many have.
COLLAPSED_METRIC, COLLAPSED_SEEDS = "collapsed", "collapsed_seeds"
PER_SEED_METRICS = ("cluster_accuracy", "mutual_information", COLLAPSED_METRIC)
LABEL_FREE_PICK = "label_free_pick_accuracy"
# In a screening run (screen_inits > 1), the initialisation each seed's metrics come from: the one
# with the highest held-out MI so far, then the kept one.
INIT_SEED = "init_seed"
# Seeds are drawn from [0, SEED_RANGE): any of them is a valid torch/numpy seed.
SEED_RANGE = 2**31 - 1


def draw_seeds(search_seed: int, count: int, skip: int = 0) -> list[int]:
    """``count`` distinct seeds drawn reproducibly from ``search_seed``, after skipping the first
    ``skip`` draws: ``draw_seeds(s, n)`` and ``draw_seeds(s, m, skip=n)`` never share a seed, so
    the seeds a setting is chosen on and those it is confirmed on stay apart."""
    rng = np.random.default_rng(search_seed)
    seeds: list[int] = []
    while len(seeds) < skip + count:
        seed = int(rng.integers(SEED_RANGE))
        if seed not in seeds:
            seeds.append(seed)
    return seeds[skip:]


def label_free_ranking(per_seed: list[dict]) -> list[int]:
    """Indices of the seeds from the highest held-out mutual information down (ties and missing or
    non-finite values: in their order, last)."""
    scores = [m.get("mutual_information", -math.inf) for m in per_seed]
    scores = [s if math.isfinite(s) else -math.inf for s in scores]
    return sorted(range(len(scores)), key=lambda i: -scores[i])


def label_free_pick(per_seed: list[dict]) -> int:
    """Index of the seed a user without labels keeps: the highest held-out mutual information."""
    return label_free_ranking(per_seed)[0]


def combine_seeds(per_seed: list[dict]) -> dict:
    """One record from the same epoch's metrics on several seeds: each numeric metric's mean under
    its own name; ``<m>_min``, ``<m>_max``, ``<m>_sd`` (sample sd, 0 for one seed) for
    SPREAD_METRICS; ``<m>/seed_<i>`` for PER_SEED_METRICS; the label-free pick's accuracy and seed;
    ``chosen_subhead`` (and, when screening, ``init_seed``) as the list of each seed's."""
    combined: dict = {"num_seeds": len(per_seed), "chosen_subhead": [m.get("chosen_subhead") for m in per_seed]}
    if INIT_SEED in per_seed[0]:
        combined[INIT_SEED] = [m[INIT_SEED] for m in per_seed]
    listed = ("seed", "chosen_subhead", INIT_SEED)
    numeric = [
        k for k, v in per_seed[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in listed
    ]
    for key in numeric:
        values = np.array([m[key] for m in per_seed], dtype=np.float64)
        combined[key] = float(values.mean())
        if key in SPREAD_METRICS:
            combined[f"{key}_min"] = float(values.min())
            combined[f"{key}_max"] = float(values.max())
            combined[f"{key}_sd"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        if key in PER_SEED_METRICS:
            combined.update(per_seed_values(key, values))
    pick = label_free_pick(per_seed)
    combined["label_free_pick_seed"] = per_seed[pick].get("seed")
    if "cluster_accuracy" in per_seed[pick]:
        combined[LABEL_FREE_PICK] = float(per_seed[pick]["cluster_accuracy"])
    return combined


def per_seed_values(metric: str, values) -> dict[str, float]:
    """Each seed's value of a metric under its own name, ``<metric>/seed_<i>`` (i: the seed's place)."""
    return {f"{metric}/seed_{i}": float(value) for i, value in enumerate(values)}


def check_seeds(seeds: Sequence[int]) -> list[int]:
    seeds = list(seeds)
    if (
        not seeds
        or len(set(seeds)) != len(seeds)
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
    ):
        raise ConfigError(f"seeds: give one or more distinct non-negative integers (got {seeds})")
    return seeds
