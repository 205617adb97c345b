"""A deadline for a whole search, confirmation included (``deadline_s``, ``--deadline``).

Tune's ``time_budget_s`` bounds the search stage alone; the confirmation stage then trains the best
``confirm_top`` configs on ``confirm_seeds`` fresh seeds, which on a slow machine may take as long
again. ``ConfirmationDeadline`` ends the search stage as soon as the confirmation, at the speed the
search's own trials measured, would no longer end by the deadline: a search sized for 10 minutes
takes 10 minutes on a laptop that is slower today, searching less rather than finishing late.

The estimate: the confirmation retrains each of the best ``confirm_top`` trials as it stands (to the
epoch it reached: ``search/confirm.py``), so it costs the seconds that trial's epochs took so far
(its ``epoch_seconds``: no start-up, which would weigh most at the first epochs), times
``confirm_seeds / seeds_per_trial``, times ``CONFIRMATION_SLOWDOWN``, ``max_concurrent`` at a time.
Trials go on while confirming them as they stand would still end by the deadline. It counts from
the driver's start (``search/run.py``), so only the summary printed at the end falls outside it; a
search resumed by a new driver counts afresh.
"""

import math
import time
import uuid
from typing import ClassVar

from ray import tune

from search.preset import SearchDefaults
from search.tracking.runs import result_epoch

# A confirmation epoch takes up to this much longer, per model, than the search's own epochs of the
# same config on 2 cores (measured between 1.05 and 1.32).
CONFIRMATION_SLOWDOWN = 1.3


class ConfirmationDeadline(tune.Stopper):
    """Stops the whole search stage (``stop_all``) once elapsed time plus the estimated
    confirmation reaches ``deadline_s``; ``fired`` says whether it did."""

    # When each deadline of this process started counting, and which have fired, by token: Tune
    # stops the search with its own copy of the stopper, the MLflow logger asks the one it was given,
    # and a search resumed in a new process counts afresh.
    _started_at: ClassVar[dict[str, float]] = {}
    _fired_tokens: ClassVar[set[str]] = set()

    def __init__(self, deadline_s: float, search: SearchDefaults, mode: str, started: float | None = None):
        """``started``: the ``time.monotonic()`` the deadline counts from (default: now); the
        search driver passes its own start, so that Ray's start counts too."""
        self.deadline_s = deadline_s
        self.search = search
        self.mode = mode
        self.token = uuid.uuid4().hex
        self._started_at[self.token] = time.monotonic() if started is None else started
        self._reset()

    def _reset(self) -> None:
        self._started_at.setdefault(self.token, time.monotonic())
        self._epoch_s: dict[str, dict[int, float]] = {}  # trial id -> epoch -> the seconds it took
        self._objective: dict[str, float] = {}

    @property
    def fired(self) -> bool:
        return self.token in self._fired_tokens

    def __getstate__(self):
        # Copied, and pickled with the experiment: settings only (the clock is the process's, above).
        return {key: getattr(self, key) for key in ("deadline_s", "search", "mode", "token")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._reset()

    def __call__(self, trial_id: str, result: dict) -> bool:
        epoch, seconds = result_epoch(result), result.get("epoch_seconds")
        if isinstance(seconds, (int, float)) and math.isfinite(seconds):
            # by epoch, so that a result seen twice counts once and a trial restored from an earlier
            # checkpoint drops the epochs it trains again
            earlier = {e: took for e, took in self._epoch_s.get(trial_id, {}).items() if e < epoch}
            self._epoch_s[trial_id] = {**earlier, epoch: seconds}
        value = result.get(self.search.objective)
        if isinstance(value, (int, float)) and math.isfinite(value):
            self._objective[trial_id] = value if self.mode == "max" else -value
        return False  # the deadline ends the search stage as a whole, never one trial

    def trained_s(self, trial_id: str) -> float:
        """The seconds the trial's epochs so far took."""
        return sum(self._epoch_s.get(trial_id, {}).values())

    def confirmation_s(self) -> float:
        """Seconds the confirmation stage would take if the search stage ended now: the slowest of
        the best ``confirm_top`` trials as they stand, for ``confirm_seeds`` seeds, in rounds of
        ``max_concurrent``."""
        top = self.search.confirm_top
        if not top or not self._epoch_s:
            return 0.0
        best = sorted(self._epoch_s, key=lambda trial_id: -self._objective.get(trial_id, -math.inf))[:top]
        per_config = (
            max(map(self.trained_s, best))
            * self.search.confirm_seeds
            / self.search.seeds_per_trial
            * CONFIRMATION_SLOWDOWN
        )
        return per_config * math.ceil(top / self.search.max_concurrent)

    def elapsed_s(self) -> float:
        return time.monotonic() - self._started_at[self.token]

    def stop_all(self) -> bool:
        if not self.fired and self.elapsed_s() + self.confirmation_s() >= self.deadline_s:
            self._fired_tokens.add(self.token)
            print(
                f"the search stage ends at {self.elapsed_s():.0f} s: the confirmation, about "
                f"{self.confirmation_s():.0f} s "
                f"at the speed this search's trials measured, must end by its {self.deadline_s:.0f} s deadline",
                flush=True,
            )
        return self.fired
