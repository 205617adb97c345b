"""Which trials count as a search's result, and in what order: one rule for the summary at the end
of a search, the confirmation stage and the export."""

import math
from typing import Callable, Iterable, TypeVar

from iic.status import NOT_RANKED, RunStatus

Item = TypeVar("Item")


def counts(status: str, value: float | None) -> bool:
    """A trial counts when it ended without failing or degenerating (completed, or stopped by the
    scheduler, the time budget or the user) and has a finite objective."""
    return status not in NOT_RANKED and value is not None and math.isfinite(value)


def best_first(
    items: Iterable[Item], value: Callable[[Item], float | None], status: Callable[[Item], str], mode: str
) -> list[Item]:
    """The items that count, best objective first (``mode`` "max" or "min"); ties keep their order."""
    sign = -1 if mode == "max" else 1
    return sorted((item for item in items if counts(status(item), value(item))), key=lambda item: sign * value(item))


def trial_status(last_result: dict | None, errored: bool) -> RunStatus:
    """The final status of a trial that Tune ended (completed, stopped by a scheduler, or failed):
    a trial still "running" in its last report was stopped between epochs by the scheduler."""
    if errored:
        return RunStatus.ERROR
    status = RunStatus((last_result or {}).get("status", RunStatus.RUNNING))
    return RunStatus.EARLY_STOPPED if status == RunStatus.RUNNING else status
