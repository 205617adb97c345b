"""The collapse rule: when a trial stops itself because its clustering has degenerated.

Kept free of Ray, so that a preset's search settings (``search.preset``) can name its defaults on a
machine without it.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class TrialSettings:
    """Search-level policy for each trial (not part of the model's config)."""

    collapse_share: float = 0.6  # a cluster holding at least this share of the data ...
    collapse_patience: int = 5  # ... for this many epochs in a row: the trial has collapsed
    collapse_information: float = 0.01  # so has one whose held-out mutual information (nats) stays below this
    collapse_warmup: int = 10  # ... for collapse_patience epochs after these first epochs
    gallery_per_cluster: int = 8

    def collapsed(self, history: list[dict]) -> bool:
        return has_collapsed(
            history, self.collapse_share, self.collapse_patience, self.collapse_information, self.collapse_warmup
        )


def has_collapsed(history: list[dict], share: float, patience: int, information: float = 0.0, warmup: int = 0) -> bool:
    """For the last ``patience`` epochs, either one cluster has held ``share`` or more of the data
    (the usual failure: a single cluster taking most images), or — judged only on epochs
    after the first ``warmup``, while the heads are still soft — the assignments have carried less
    than ``information`` nats about the image (every image given the same soft, near-uniform
    prediction: a degenerate optimum that λ > 1 rewards). Neither tends to recover."""
    recent = history[-patience:]
    if len(recent) < patience:
        return False
    if all(m.get("largest_cluster_share", 0.0) >= share for m in recent):
        return True
    return len(history) >= warmup + patience and all(
        m.get("mutual_information", float("inf")) < information for m in recent
    )
