"""Confirm the best configs of a finished search on seeds it never saw (search.confirmation).

    python search/confirm.py --experiment iic-digits --top 3 --seeds 5
    python search/confirm.py --experiment iic-har --search har-1 --top 2 --seeds 4 --gpus-per-trial 0.25 --address auto

Each config trains on ``seeds`` fresh seeds as one Ray trial, recorded as an MLflow child run of the
search (``iic.role=confirm``); the search's parent run gets the confirmed best (``confirmed.csv``,
``best_config.yaml``, ``best_confirmed_*``), which ``search/export.py`` ranks by.
"""

import argparse
import os
import sys
import time

import ray
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from search.challenger import margin_problem
from search.confirmation import (
    candidates_from_runs,
    confirmation_seeds,
    confirmations,
    print_confirmed,
    ranked_confirmations,
    record_confirmed,
    run_confirmation,
)
from search.driver import (
    SearchError,
    code_version,
    default_storage_path,
    default_tracking_uri,
    experiment_dir,
    report_path,
    resolve_storage_path,
    set_driver_environment,
    start_ray,
)
from search.objectives import OBJECTIVES
from search.preset import COLLAPSE_SETTINGS, Preset, SearchDefaults
from search.tracking.logger import MLflowTrialLogger
from search.tracking.reconcile import logged_statuses
from search.tracking.records import (
    RecordsError,
    connect,
    find_experiment_id,
    only_search,
    runs_of_search,
    search_run,
    trial_runs,
)
from search.tracking.runs import CONFIRM_ROLE, STAGE_SUFFIXES, START_TRIAL_TAG, SearchRecord


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python search/confirm.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--experiment", required=True, help="MLflow experiment of the search (e.g. iic-digits)")
    parser.add_argument(
        "--search", help="the search (iic.search tag) whose trials to confirm (default: the experiment's only search)"
    )
    parser.add_argument("--top", type=int, required=True, help="distinct configs to confirm")
    parser.add_argument("--seeds", type=int, required=True, help="fresh seeds each config trains on")
    parser.add_argument("--objective", choices=sorted(OBJECTIVES), default=SearchDefaults.objective)
    parser.add_argument("--tracking-uri", default=default_tracking_uri())
    parser.add_argument(
        "--storage-path", default=default_storage_path(), help="Ray Tune storage for the confirmation trials"
    )
    parser.add_argument(
        "--address", default=os.environ.get("RAY_ADDRESS"), help="Ray cluster to join (default: a local Ray)"
    )
    parser.add_argument("--max-concurrent", type=int, default=1, help="confirmation trials at once")
    parser.add_argument(
        "--challenger-margin",
        type=float,
        help="standard errors by which a trial must beat the search's start config "
        "on the search's seeds to go ahead of it (0: the plain ranking; default: the search's own setting)",
    )
    parser.add_argument("--cpus-per-trial", type=float, default=1.0)
    parser.add_argument("--gpus-per-trial", type=float, default=0.0)
    return parser.parse_args(argv)


def searched_margin(parent: Run, args: argparse.Namespace) -> float:
    """The challenger margin: the command line's, else the one the search ran with (searches from
    before it had one: none)."""
    if args.challenger_margin is not None:
        return args.challenger_margin
    return float(parent.data.params.get("search.challenger_margin", 0.0))


def confirming_preset(parent: Run, args: argparse.Namespace) -> Preset:
    """The settings confirmation trials run with: the search's collapse rule, these resources."""
    recorded = {
        name: parent.data.params[f"search.{name}"]
        for name in COLLAPSE_SETTINGS
        if f"search.{name}" in parent.data.params
    }
    defaults = SearchDefaults()
    collapse = {name: type(getattr(defaults, name))(value) for name, value in recorded.items()}
    search = SearchDefaults(
        max_concurrent=args.max_concurrent,
        cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial,
        objective=args.objective,
        **collapse,
    )
    return Preset(name="confirm", description="", config={}, params=[], search=search)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    set_driver_environment()
    try:
        if args.top < 1 or args.seeds < 1:
            raise SearchError(f"--top and --seeds must be at least 1 (got {args.top} and {args.seeds})")
        if args.challenger_margin is not None and margin_problem(args.challenger_margin):
            raise SearchError(margin_problem(args.challenger_margin))
        client, tracking_uri = connect(args.tracking_uri)
        experiment_id = find_experiment_id(client, args.experiment)
        runs = runs_of_search(trial_runs(client, experiment_id), args.experiment, args.search)
        search = args.search or only_search(runs, args.experiment)
        parent = search_run(client, experiment_id, search)
        choice = candidates_from_runs(
            client,
            tracking_uri,
            runs,
            args.objective,
            args.top,
            parent.data.tags.get(START_TRIAL_TAG),
            searched_margin(parent, args),
        )
        candidates = choice.candidates
        if not candidates:
            raise SearchError(
                f"none of the {len(runs)} trial runs of {search!r} counts (finished, not collapsed, diverged or failed)"
            )
        preset = confirming_preset(parent, args)
        storage_path = resolve_storage_path(args.storage_path)
        started_ray = start_ray(args.address, preset, storage_path)  # last: nothing above has started anything
    except (SearchError, RecordsError, MlflowException) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    search_seed = int(parent.data.params.get("cli.seed", 0))
    seeds = confirmation_seeds(search_seed, sorted({s for c in candidates for s in c.search_seeds}), args.seeds)
    name = f"{search}{STAGE_SUFFIXES[CONFIRM_ROLE]}-{time.strftime('%Y%m%d-%H%M%S')}"
    report = report_path(name)
    logger = MLflowTrialLogger(
        SearchRecord(tracking_uri, experiment_id, search, parent.info.run_id, code_version(), CONFIRM_ROLE),
        report,
        experiment_dir(storage_path, name),
    )
    if choice.note():
        print(choice.note(), flush=True)
    print(
        f"confirming the best {len(candidates)} config(s) of {search!r} on {len(seeds)} fresh seeds "
        f"({' '.join(map(str, seeds))})",
        flush=True,
    )
    results = run_confirmation(candidates, seeds, preset, name, storage_path, logger)
    confirmed = ranked_confirmations(confirmations(candidates, results, seeds, logged_statuses(report)), args.objective)
    gallery = record_confirmed(client, parent.info.run_id, confirmed, args.objective)
    print_confirmed(confirmed, args.objective)
    if gallery:
        print(f"the confirmed best's images per cluster: {gallery}")
    if started_ray:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
