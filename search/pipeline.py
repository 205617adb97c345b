"""A search from its plan to its summary: the trials (search.tuning), the confirmation of the best
configs on fresh seeds (search.confirmation), the supervised ceiling if asked for, the summary."""

import dataclasses

from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune import ResultGrid

from search.ceiling import Ceiling, run_ceiling
from search.confirmation import (
    Candidate,
    Confirmation,
    candidates_from_results,
    confirmation_seeds,
    confirmations,
    ranked_confirmations,
    run_confirmation,
)
from search.deadline import ConfirmationDeadline
from search.driver import experiment_dir, make_trainable, report_path
from search.objectives import OBJECTIVES
from search.plan import SearchPlan, start_config
from search.summary import summarise
from search.tracking.logger import MLflowTrialLogger
from search.tracking.reconcile import logged_statuses, reconcile, restored_trials
from search.tracking.runs import CEILING_ROLE, CONFIRM_ROLE, STAGE_SUFFIXES, SearchRecord
from search.tuning import build_tuner


def run_search(plan: SearchPlan, search: SearchRecord, started: float) -> None:
    """Tune's trials, the confirmation stage and the summary of a search whose parent run is open;
    ``started``: the driver's start (``time.monotonic()``), which a deadline counts from."""
    settings = plan.preset.search
    how = f"{settings.num_samples} trials"
    if settings.scheduler == "pbt":
        how = f"population-based training of {how}"
    print(
        f"search {plan.name!r}: preset {plan.preset.name}, {how} of {settings.seeds_per_trial} seed(s) each, "
        f"objective {settings.objective}, MLflow {plan.tracking_uri} (experiment {plan.experiment!r}), storage "
        f"{plan.experiment_dir}",
        flush=True,
    )
    for note in plan.notes:
        print(note, flush=True)
    results = run_trials(plan, search, started)
    choice = candidates_from_results(
        results,
        settings.objective,
        logged_statuses(report_path(plan.name)),
        max(settings.confirm_top, 1),
        start_config(plan.preset),
        settings.challenger_margin,
    )
    if choice.note():  # why the start config is confirmed though a trial read higher
        print(f"\n{choice.note()}", flush=True)
    confirmed = confirm(plan, search, choice.candidates) if settings.confirm_top and choice.candidates else []
    ceiling = train_ceiling(plan, search) if plan.arguments["ceiling"] else None
    summarise(
        results,
        plan.preset,
        plan.tracking_uri,
        search.experiment_id,
        search.parent_run_id,
        plan.name,
        report_path(plan.name),
        top=plan.arguments["top"],
        confirmed=confirmed,
        choice=choice,
        ceiling=ceiling,
    )


def run_trials(plan: SearchPlan, search: SearchRecord, started: float) -> ResultGrid:
    """The search stage: a new search's trials, or a resumed search's, once MLflow has what the last
    driver could not send it."""
    settings = plan.preset.search
    if plan.arguments["resume"]:
        # Tune brings its own stored logger back; first MLflow gets what the last driver could not send.
        report = reconcile(
            MlflowClient(plan.tracking_uri), search, plan.experiment_dir, restored_trials(plan.experiment_dir)
        )
        print(
            f"resuming: MLflow got {sum(map(len, report.sent.values()))} epoch(s) it lacked; "
            f"{len(report.closed_lost)} run(s) of trials Tune never recorded closed as lost",
            flush=True,
        )
        # Finished trials stay finished; unfinished and errored ones continue from their checkpoints.
        tuner = tune.Tuner.restore(
            plan.experiment_dir, trainable=make_trainable(plan.preset), resume_unfinished=True, resume_errored=True
        )
        return tuner.fit()
    deadline = None
    if settings.deadline_s:
        deadline = ConfirmationDeadline(settings.deadline_s, settings, OBJECTIVES[settings.objective], started)
    logger = MLflowTrialLogger(
        search, report_path(plan.name), plan.experiment_dir, time_budget_s=settings.time_budget_s, deadline=deadline
    )
    return build_tuner(plan, logger).fit()


def confirm(plan: SearchPlan, search: SearchRecord, candidates: list[Candidate]) -> list[Confirmation]:
    """The candidates trained again on fresh seeds, best first by their confirmed figures."""
    settings = plan.preset.search
    seeds = confirmation_seeds(plan.search_seed, plan.trial_seeds, settings.confirm_seeds)
    print(
        f"\nconfirming the best {len(candidates)} config(s) on {len(seeds)} fresh seeds ({' '.join(map(str, seeds))})",
        flush=True,
    )
    name = plan.name + STAGE_SUFFIXES[CONFIRM_ROLE]
    logger = MLflowTrialLogger(
        dataclasses.replace(search, role=CONFIRM_ROLE),
        report_path(plan.name, CONFIRM_ROLE),
        experiment_dir(plan.storage_path, name),
    )
    results = run_confirmation(
        candidates, seeds, plan.preset, name, plan.storage_path, logger, resume=plan.arguments["resume"]
    )
    statuses = logged_statuses(report_path(plan.name, CONFIRM_ROLE))
    return ranked_confirmations(confirmations(candidates, results, seeds, statuses), settings.objective)


def train_ceiling(plan: SearchPlan, search: SearchRecord) -> Ceiling | None:
    """The supervised ceiling of the search's base config (None: it failed)."""
    print("\ntraining the supervised ceiling: the same backbone on the labels", flush=True)
    name = plan.name + STAGE_SUFFIXES[CEILING_ROLE]
    logger = MLflowTrialLogger(
        dataclasses.replace(search, role=CEILING_ROLE),
        report_path(plan.name, CEILING_ROLE),
        experiment_dir(plan.storage_path, name),
    )
    ceiling = run_ceiling(
        plan.preset, plan.trial_seeds, name, plan.storage_path, logger, resume=plan.arguments["resume"]
    )
    if ceiling is None:
        print(
            "the supervised ceiling failed: its error is in its MLflow run (iic.role=ceiling) and Tune's error.txt",
            flush=True,
        )
    return ceiling
