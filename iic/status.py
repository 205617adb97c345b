"""The statuses a training run (and a search's trial) can end in: one name for each, used from the
trainer up to MLflow's tags, the search summary and the export."""

from enum import StrEnum


class RunStatus(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"  # trained every epoch it was given
    STOPPED = "stopped"  # its epoch callback asked it to stop
    DIVERGED = "diverged"  # the loss became NaN/inf (on any of its seeds)
    COLLAPSED = "collapsed"  # stopped itself: the clustering of every seed degenerated (trainables.collapse)
    PARTLY_COLLAPSED = "partly_collapsed"  # trained every epoch, some of its seeds collapsed (collapsed_seeds)
    EARLY_STOPPED = "early_stopped"  # the search's scheduler (ASHA) stopped it between epochs
    STOPPED_BY_BUDGET = "stopped_by_budget"  # the search's time budget ran out while it trained
    ERROR = "error"  # it raised (after Tune's retries)
    LOST_WITH_DRIVER = "lost_with_driver"  # proposed by a driver that was killed before Tune recorded it


# A trial in one of these states never counts as a search's result: not ranked, not exported.
NOT_RANKED = frozenset(
    {RunStatus.DIVERGED, RunStatus.COLLAPSED, RunStatus.ERROR, RunStatus.LOST_WITH_DRIVER, RunStatus.RUNNING}
)
