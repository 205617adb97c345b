"""TPE's search algorithm for Ray Tune, made to agree on resume with the trials Tune restores.

Tune saves a search as several files (the trials; the search generator's count of proposed trials
and its concurrency limiter's live trials; the Optuna searcher) and copies them from the driver's
staging folder to the storage one by one, on threads. A driver killed during that copy leaves some
files of its newest snapshot beside others of the one before. Restored as they were, a trial that
the searcher's older copy never proposed fails when it reports or ends (Optuna knows no such trial:
the trial ends as an error, or the whole search stops), and a trial that only the searcher's copy
holds keeps a concurrency slot for ever and counts towards ``num_samples``. ``ResumableSearch``
makes them agree with the trial list Tune restores from: a trial there is the truth, any other the
searcher proposed was lost with the driver and is replaced, as a trial proposed after the last
snapshot is.
"""

from pathlib import Path

from ray import tune
from ray.tune.search import ConcurrencyLimiter, SearchGenerator
from ray.tune.search.optuna import OptunaSearch


class TrialAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that takes no report of a trial it did not propose (a trial of a newer snapshot
    than its own), rather than failing it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.proposed: set[str] = set()  # saved and restored with the searcher's state

    def suggest(self, trial_id: str):
        suggestion = super().suggest(trial_id)
        if isinstance(suggestion, dict):
            self.proposed.add(trial_id)
        return suggestion

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.proposed:
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self.proposed:
            super().on_trial_complete(trial_id, result=result, error=error)


class ResumableSearch(SearchGenerator):
    """Tune's search generator over ``ConcurrencyLimiter(TrialAwareOptunaSearch)``; on restore, the
    count of proposed trials and the live ones are those of the restored trial list."""

    def __init__(self, searcher: ConcurrencyLimiter):
        super().__init__(searcher)

    def restore_from_dir(self, dirpath: str) -> None:
        super().restore_from_dir(dirpath)
        if not tune.Tuner.can_restore(dirpath):  # no trial list beside the searcher's state: nothing to agree with
            return
        trials = {trial.trial_id: trial for trial in tune.ExperimentAnalysis(str(Path(dirpath))).trials}
        ended = {trial_id for trial_id, trial in trials.items() if trial.status in (trial.TERMINATED, trial.ERROR)}
        limiter: ConcurrencyLimiter = self.searcher
        for trial_id in set(limiter.live_trials) - (trials.keys() - ended):
            # ended in the trial list (Optuna is told how), or lost with the driver: its slot is freed
            trial = trials.get(trial_id)
            limiter.on_trial_complete(trial_id, result=trial.last_result if trial else None, error=trial is None)
        limiter.live_trials |= trials.keys() - ended
        state = self.get_state()
        self.set_state({**state, "counter": len(trials)})
