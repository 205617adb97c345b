"""Run an IIC hyperparameter search: Ray Tune trials, Optuna proposals, MLflow records.

    python search/run.py                                  # bundled digits, local Ray, ~10 min on 2 cores
    python search/run.py --preset har --set data_root=data/har --address auto
    python search/run.py --resume                         # continue an interrupted search

Each trial is one IIC training run (``trainables.iic_trainable.train_iic``) of its config on
``seeds_per_trial`` seeds at once, reporting their mean (and spread) every epoch. Optuna's TPE
proposes the settings from the preset's space, ASHA stops weak trials early, trials whose
clustering collapses stop themselves, and every trial is one MLflow run under the search's parent
run. With ``--scheduler pbt`` a population drawn at random from the space trains instead, and Ray
Tune's population-based training gives its weakest trials the best ones' checkpoints with perturbed
augmentation strengths, lr and lamb: each trial learns a schedule of them (recorded as
``schedule.<field>`` metrics, and in its config.yaml, which ``python -m iic.train`` replays). Then
the best ``confirm_top`` distinct configs are trained again on ``confirm_seeds`` fresh seeds
(``search.confirmation``), and the search's result is the best of them by that confirmed mean.
Everything the command line can get wrong is checked before Ray starts a trial.

The stages, in order: ``search.plan`` (flags and preset, checked and stored), ``search.tuning``
(the trials), ``search.confirmation``, ``search.summary``; ``search.pipeline`` runs them.
"""

import argparse
import os
import sys
import time

import ray

from iic.config import ConfigError
from search.driver import (
    SearchError,
    code_version,
    default_storage_path,
    default_tracking_uri,
    set_driver_environment,
    start_ray,
)
from search.objectives import OBJECTIVES
from search.pipeline import run_search
from search.plan import new_plan, resumed_plan, write_record
from search.preset import SCHEDULERS, PresetError, available_presets
from search.tracking.runs import SearchRecord, fail_search_run, open_search_run, prepare_experiment


def build_parser(given_only: bool = False) -> argparse.ArgumentParser:
    """The command line; with ``given_only``, flags left out are absent from the parsed namespace."""
    default = (lambda value: argparse.SUPPRESS) if given_only else (lambda value: value)
    parser = argparse.ArgumentParser(
        prog="python search/run.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=default(None),
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--preset",
        default=default("digits"),
        help=f"bundled preset: {', '.join(available_presets())} (default: digits)",
    )
    source.add_argument("--config", help="a preset YAML file of your own (see search/presets/)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=default([]),
        metavar="KEY=VALUE",
        help="fix an IICConfig field for every trial, e.g. --set data_root=data/har",
    )
    parser.add_argument(
        "--scheduler",
        choices=SCHEDULERS,
        help="asha: TPE proposes, ASHA stops weak trials (default); "
        "pbt: population-based training of augmentation, lr and lamb schedules (the preset's pbt section)",
    )
    parser.add_argument(
        "--population",
        type=int,
        help="trials in the population under --scheduler pbt (default: the preset's pbt.population)",
    )
    parser.add_argument("--num-samples", type=int, help="number of trials (under --scheduler pbt: --population)")
    parser.add_argument("--epochs", type=int, help="epochs per trial (ASHA's max_t)")
    parser.add_argument("--max-concurrent", type=int, help="trials running at once")
    parser.add_argument(
        "--time-budget", type=float, help="seconds after which no new trial starts and running ones stop"
    )
    parser.add_argument(
        "--deadline",
        type=float,
        help="seconds for the whole search, confirmation included: the search stage "
        "ends early enough for the confirmation to end by then, at the speed its trials measured",
    )
    parser.add_argument(
        "--objective", choices=sorted(OBJECTIVES), help="metric to maximise (default: the preset's, cluster_accuracy)"
    )
    parser.add_argument("--cpus-per-trial", type=float)
    parser.add_argument("--gpus-per-trial", type=float, help="fractions such as 0.25 put several trials on one GPU")
    parser.add_argument("--experiment", help="MLflow experiment (default: iic-<preset>)")
    parser.add_argument(
        "--name", help="search name: Ray experiment folder and MLflow tag (default: the experiment name)"
    )
    parser.add_argument(
        "--tracking-uri",
        default=default(default_tracking_uri()),
        help="MLflow store: sqlite:///FILE (default sqlite:///mlflow.db) or http://HOST:PORT",
    )
    parser.add_argument(
        "--storage-path",
        default=default(default_storage_path()),
        help="Ray Tune storage (checkpoints); shared storage (s3://...) on multi-node clusters",
    )
    parser.add_argument(
        "--address",
        default=default(os.environ.get("RAY_ADDRESS")),
        help="Ray cluster to join (e.g. auto); default: start a local Ray",
    )
    parser.add_argument(
        "--resume", action="store_true", default=default(False), help="continue the interrupted search of this name"
    )
    parser.add_argument("--warm-start", metavar="DIR", help="folder of exported configs to evaluate first")
    parser.add_argument(
        "--seed",
        type=int,
        default=default(0),
        help="seed of the sampler and of the seeds trials train on (drawn from it)",
    )
    parser.add_argument(
        "--seeds-per-trial",
        type=int,
        help="seeds each trial trains its config on (mean reported; default: the preset's)",
    )
    parser.add_argument(
        "--confirm-top", type=int, help="distinct configs confirmed on fresh seeds after the search (0: none)"
    )
    parser.add_argument("--confirm-seeds", type=int, help="fresh seeds each confirmed config trains on")
    parser.add_argument(
        "--challenger-margin",
        type=float,
        help="standard errors by which a trial must beat the preset's own config "
        "(start_from_config) on the search's seeds to be confirmed instead of it (0: the plain ranking; default: the "
        "preset's)",
    )
    parser.add_argument(
        "--ceiling",
        action="store_true",
        default=default(False),
        help="also train the supervised ceiling (the same backbone on the labels) once, "
        "to read the search's accuracy against",
    )
    parser.add_argument("--top", type=int, default=default(5), help="best trials to print at the end")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def explicit_flags(argv: list[str] | None) -> dict:
    """The flags the command line gives (defaults left out)."""
    return vars(build_parser(given_only=True).parse_args(argv))


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    args = parse_args(argv)
    set_driver_environment()
    try:
        plan = resumed_plan(args, explicit_flags(argv)) if args.resume else new_plan(args)
        experiment_id = prepare_experiment(plan.tracking_uri, plan.experiment)
        # last: nothing above has started anything
        started_ray = start_ray(plan.arguments["address"], plan.preset, plan.storage_path)
    except (SearchError, PresetError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    parent_run_id = open_search_run(
        plan.tracking_uri, experiment_id, plan.name, plan.preset, {**plan.arguments, "seeds": plan.trial_seeds}
    )
    search = SearchRecord(plan.tracking_uri, experiment_id, plan.name, parent_run_id, code_version())
    try:
        if not args.resume:
            write_record(plan)
        run_search(plan, search, started)
    except BaseException as err:
        fail_search_run(plan.tracking_uri, parent_run_id, err)
        raise
    finally:
        if started_ray:
            ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
