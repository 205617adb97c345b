import math

from iic.status import RunStatus
from search.ranking import best_first, counts, trial_status


def test_only_trials_that_ended_well_count():
    for status in (RunStatus.COMPLETED, RunStatus.EARLY_STOPPED, RunStatus.STOPPED_BY_BUDGET, RunStatus.STOPPED):
        assert counts(status, 0.5)
    for status in (
        RunStatus.COLLAPSED,
        RunStatus.DIVERGED,
        RunStatus.ERROR,
        RunStatus.LOST_WITH_DRIVER,
        RunStatus.RUNNING,
    ):
        assert not counts(status, 0.5)
    assert not counts(RunStatus.COMPLETED, math.nan) and not counts(RunStatus.COMPLETED, None)


def test_a_collapsed_trial_with_the_highest_accuracy_is_not_ranked_first():
    trials = [
        ("collapsed", RunStatus.COLLAPSED, 0.99),
        ("good", RunStatus.COMPLETED, 0.8),
        ("better", RunStatus.EARLY_STOPPED, 0.9),
        ("failed", RunStatus.ERROR, 0.95),
        ("tie", RunStatus.COMPLETED, 0.9),
    ]
    ranked = best_first(trials, lambda t: t[2], lambda t: t[1], "max")
    assert [t[0] for t in ranked] == ["better", "tie", "good"]  # ties keep their order
    assert [t[0] for t in best_first(trials, lambda t: t[2], lambda t: t[1], "min")] == ["good", "better", "tie"]


def test_a_trial_still_running_at_its_last_report_was_stopped_by_the_scheduler():
    assert trial_status({"status": "running"}, errored=False) == RunStatus.EARLY_STOPPED
    assert trial_status({"status": "collapsed"}, errored=False) == RunStatus.COLLAPSED
    assert trial_status({"status": "completed"}, errored=True) == RunStatus.ERROR
