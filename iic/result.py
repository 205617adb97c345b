"""What a run leaves: its status, metrics and history combined over its seeds, and each seed's own."""

from dataclasses import dataclass

import numpy as np

from iic.config import IICConfig
from iic.seeds import label_free_pick
from iic.status import RunStatus


@dataclass
class SeedRun:
    """One seed's share of a run: its own metrics, history and final clustering."""

    seed: int
    metrics: dict
    history: list[dict]
    clusters: np.ndarray  # final cluster of every image (the seed's chosen sub-head)
    confusion: np.ndarray | None  # clusters x classes, None without labels
    init: int  # the initialisation kept (``seed`` itself unless screening chose another)


@dataclass
class TrainResult:
    """What a finished (or stopped, or diverged) run leaves: the final metrics combined over its
    seeds (see ``iic.seeds.combine_seeds``), their history, and each seed's own."""

    status: RunStatus
    metrics: dict
    history: list[dict]
    seeds: list[SeedRun]
    class_names: list[str]
    config: IICConfig  # as trained: a resume with new schedulable values adds them to its schedule

    @property
    def label_free_pick(self) -> SeedRun:
        """The seed a user without labels would keep (highest held-out mutual information)."""
        return (
            self.seeds[label_free_pick([run.metrics for run in self.seeds])] if self.seeds[0].metrics else self.seeds[0]
        )

    @property
    def clusters(self) -> np.ndarray:
        return self.label_free_pick.clusters

    @property
    def confusion(self) -> np.ndarray | None:
        return self.label_free_pick.confusion
