"""A search from its plan to its summary: the trials (search.tuning), the confirmation of the best
configs on fresh seeds (search.confirmation), the supervised ceiling if asked for, the summary."""

import argparse
import dataclasses

from mlflow.tracking import MlflowClient
from ray import tune

from search.ceiling import run_ceiling
from search.confirmation import (
    candidates_from_results,
    confirmation_seeds,
    confirmations,
    ranked_confirmations,
    run_confirmation,
)
from search.deadline import ConfirmationDeadline
from search.driver import experiment_dir, make_trainable, report_path
from search.plan import SearchPlan, start_config
from search.preset import OBJECTIVES
from search.summary import summarise
from search.tracking.logger import MLflowTrialLogger
from search.tracking.reconcile import logged_statuses, reconcile, restored_trials
from search.tracking.runs import CEILING_ROLE, CONFIRM_ROLE, STAGE_SUFFIXES, SearchRecord
from search.tuning import build_tuner


def run_search(plan: SearchPlan, search: SearchRecord, started: float) -> None:
    """Tune's trials, the confirmation stage and the summary of a search whose parent run is open;
    ``started``: the driver's start (``time.monotonic()``), which a deadline counts from."""
    args, preset = argparse.Namespace(**plan.arguments), plan.preset
    trials_report = report_path(plan.name)
    settings = preset.search
    how = (
        f"population-based training of {settings.num_samples} trials"
        if settings.scheduler == "pbt"
        else f"{settings.num_samples} trials"
    )
    print(
        f"search {plan.name!r}: preset {preset.name}, {how} of {settings.seeds_per_trial} seed(s) each, "
        f"objective {settings.objective}, MLflow {plan.tracking_uri} (experiment {plan.experiment!r}), storage "
        f"{plan.experiment_dir}",
        flush=True,
    )
    for note in plan.notes:
        print(note, flush=True)
    if args.resume:
        # Tune brings its own stored logger back; first MLflow gets what the last driver could not send.
        report = reconcile(
            MlflowClient(plan.tracking_uri), search, plan.experiment_dir, restored_trials(plan.experiment_dir)
        )
        print(
            f"resuming: MLflow got {sum(map(len, report.sent.values()))} epoch(s) it lacked; {len(report.closed_lost)} "
            "run(s) of trials "
            "Tune never recorded closed as lost",
            flush=True,
        )
        # Finished trials stay finished; unfinished and errored ones continue from their checkpoints.
        tuner = tune.Tuner.restore(
            plan.experiment_dir, trainable=make_trainable(preset), resume_unfinished=True, resume_errored=True
        )
    else:
        deadline = (
            ConfirmationDeadline(settings.deadline_s, settings, OBJECTIVES[settings.objective], started)
            if settings.deadline_s
            else None
        )
        logger = MLflowTrialLogger(
            search, trials_report, plan.experiment_dir, time_budget_s=settings.time_budget_s, deadline=deadline
        )
        tuner = build_tuner(plan, logger)
    results = tuner.fit()
    statuses = logged_statuses(trials_report)
    choice = candidates_from_results(
        results,
        settings.objective,
        statuses,
        max(settings.confirm_top, 1),
        start_config(preset),
        settings.challenger_margin,
    )
    if choice.note():  # why the start config is confirmed though a trial read higher
        print(f"\n{choice.note()}", flush=True)
    candidates = choice.candidates
    confirmed = []
    if settings.confirm_top and candidates:
        seeds = confirmation_seeds(args.seed, plan.trial_seeds, settings.confirm_seeds)
        print(
            f"\nconfirming the best {len(candidates)} config(s) on {len(seeds)} fresh seeds "
            f"({' '.join(map(str, seeds))})",
            flush=True,
        )
        confirm_report = report_path(plan.name, CONFIRM_ROLE)
        confirm_name = plan.name + STAGE_SUFFIXES[CONFIRM_ROLE]
        confirm_logger = MLflowTrialLogger(
            dataclasses.replace(search, role=CONFIRM_ROLE),
            confirm_report,
            experiment_dir(plan.storage_path, confirm_name),
        )
        confirm_results = run_confirmation(
            candidates,
            seeds,
            preset,
            confirm_name,
            plan.storage_path,
            confirm_logger,
            resume=args.resume,
        )
        confirmed = ranked_confirmations(
            confirmations(candidates, confirm_results, seeds, logged_statuses(confirm_report)), settings.objective
        )
    ceiling = None
    if args.ceiling:
        print("\ntraining the supervised ceiling: the same backbone on the labels", flush=True)
        ceiling_name = plan.name + STAGE_SUFFIXES[CEILING_ROLE]
        ceiling_logger = MLflowTrialLogger(
            dataclasses.replace(search, role=CEILING_ROLE),
            report_path(plan.name, CEILING_ROLE),
            experiment_dir(plan.storage_path, ceiling_name),
        )
        ceiling = run_ceiling(
            preset,
            plan.trial_seeds,
            ceiling_name,
            plan.storage_path,
            ceiling_logger,
            resume=args.resume,
        )
        if ceiling is None:
            print(
                "the supervised ceiling failed: its error is in its MLflow run (iic.role=ceiling) and Tune's error.txt",
                flush=True,
            )
    summarise(
        results,
        preset,
        plan.tracking_uri,
        search.experiment_id,
        search.parent_run_id,
        plan.name,
        trials_report,
        top=args.top,
        confirmed=confirmed,
        choice=choice,
        ceiling=ceiling,
    )
