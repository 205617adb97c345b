"""The collapse rule: when a seed's clustering has degenerated, judged on that seed's own history
within the run (never against its siblings, never changed after the run ends); a trial stops
itself once all its seeds have.

Kept free of Ray, so that a preset's search settings (``search.preset``) can name its defaults on a
machine without it.
"""

from dataclasses import dataclass

from iic.status import RunStatus


@dataclass(frozen=True)
class TrialSettings:
    """Search-level policy for each trial (not part of the model's config). The rule's thresholds
    were chosen on recorded digits runs (benchmarks/data/histories_digits_default_*.json): no good
    seed meets any of them after the warm-up."""

    collapse_share: float = 0.6  # a cluster holding at least this share of the data ...
    collapse_patience: int = 5  # ... for this many epochs in a row (the window): the seed has collapsed
    collapse_information: float = 0.01  # so has one whose held-out mutual information (nats) stays below this
    collapse_warmup: int = 10  # ... over the window, after these first epochs; the rules below wait for it too
    # After the warm-up, over the window: the largest cluster's mean share at or above this many
    # times an even share (1 / clusters) -- an oscillating collapse;
    collapse_mean_share: float = 3.5
    # ... at least this many empty clusters in every epoch (0: not judged);
    collapse_empty: int = 1
    # ... held-out mutual information never above this fraction of the seed's best before the window.
    collapse_information_drop: float = 0.5
    gallery_per_cluster: int = 8

    def collapsed(self, history: list[dict], num_clusters: int = 10) -> bool:
        """Whether a seed with this history (one metrics dict per epoch) ends collapsed."""
        return has_collapsed(
            history,
            self.collapse_share,
            self.collapse_patience,
            self.collapse_information,
            self.collapse_warmup,
            mean_share=min(self.collapse_share, self.collapse_mean_share / num_clusters),
            empty=self.collapse_empty,
            information_drop=self.collapse_information_drop,
        )

    def seeds_collapsed(self, histories: list[list[dict]], seed_of_model: list[int], seeds: list[int], k: int):
        """Per seed (in ``seeds``' order), whether it has collapsed: every model that reports as it
        (its initialisations, while a screening run still trains several) has."""
        return [
            all(self.collapsed(h, k) for h, s in zip(histories, seed_of_model, strict=True) if s == seed)
            for seed in seeds
        ]


def has_collapsed(
    history: list[dict],
    share: float,
    patience: int,
    information: float = 0.0,
    warmup: int = 0,
    *,
    mean_share: float = 1.0,
    empty: int = 0,
    information_drop: float = 0.0,
) -> bool:
    """Over the last ``patience`` epochs (the window), one cluster has held ``share`` or more of the
    data in every epoch (the usual failure: a single cluster taking most images); or, judged only
    after the first ``warmup`` epochs while the heads are still soft: the held-out mutual information
    has stayed under ``information`` nats (every image given the same near-uniform prediction, a
    degenerate optimum that λ > 1 rewards), the largest cluster's mean share has reached
    ``mean_share`` (the same failure, oscillating), every epoch has had ``empty`` or more empty
    clusters, or the mutual information has stayed under ``information_drop`` times the seed's best
    before the window. None of these tends to recover."""
    recent = history[-patience:]
    if len(recent) < patience:
        return False
    if all(m.get("largest_cluster_share", 0.0) >= share for m in recent):
        return True
    if len(history) < warmup + patience:
        return False
    information_now = [m.get("mutual_information", float("inf")) for m in recent]
    earlier = [m.get("mutual_information", 0.0) for m in history[:-patience]]
    return (
        all(value < information for value in information_now)
        or sum(m.get("largest_cluster_share", 0.0) for m in recent) / patience >= mean_share
        or (empty > 0 and all(m.get("empty_clusters", 0) >= empty for m in recent))
        or (information_drop > 0 and bool(earlier) and max(information_now) < information_drop * max(earlier))
    )


def collapse_ending(flags: list[bool], status: str, in_population: bool) -> RunStatus | None:
    """What its seeds' collapse flags make of a trial's epoch with this ``status``: collapsed once
    every seed has (a PBT member trains on, as its population replaces it, until its last epoch),
    partly collapsed when it ends its epochs with some collapsed (its mean counts them), else None."""
    if status == RunStatus.DIVERGED or not any(flags):
        return None
    if all(flags) and (status == RunStatus.COMPLETED or not in_population):
        return RunStatus.COLLAPSED
    return RunStatus.PARTLY_COLLAPSED if status == RunStatus.COMPLETED else None
