"""Confirm the best configs of a search on seeds it never saw.

    python search/confirm.py --experiment iic-digits --top 3 --seeds 5
    python search/confirm.py --experiment iic-har --search har-1 --top 2 --seeds 4 --gpus-per-trial 0.25 --address auto

A search ranks configs by their mean over the seeds every trial trains on; the best of many noisy
trials is flattered by those seeds. Confirmation trains the ``top`` distinct configs again on
``seeds`` fresh seeds (drawn from the search's seed, never the search's own), one Ray trial per
config with all its seeds stacked, each an MLflow child run of the search tagged
``iic.role=confirm`` and ``iic.confirms=<trial id>``. ``search/run.py`` runs this stage at the end
of every search (``confirm_top``, ``confirm_seeds``); this command runs it for a finished search.
Confirmed figures are what ``search/export.py`` and the search's summary rank by.
"""

import argparse
import math
import os
import sys
from dataclasses import dataclass

from ray import tune
from ray.tune.search.basic_variant import BasicVariantGenerator

from iic.config import IICConfig
from iic.seeds import LABEL_FREE_PICK, draw_seeds
from search.driver import make_trainable
from search.ranking import best_first, trial_status
from search.space import OBJECTIVES, Preset
from search.tracking import CONFIRM_ROLE, MLflowTrialLogger
from trainables.iic_trainable import SEEDS_KEY, SOURCE_KEY, trial_iic_config, trial_seeds

# Figures of a confirmation run, each over its seeds.
CONFIRMED_FIGURES = ("cluster_accuracy", "cluster_accuracy_min", "cluster_accuracy_sd", LABEL_FREE_PICK, "mutual_information", "nmi")


@dataclass
class Candidate:
    """A config a search found, to be confirmed: as it trained (``epochs`` = the epochs it ran)."""

    trial_id: str
    config: IICConfig
    search_value: float  # the objective over the search's seeds
    search_seeds: list[int]


@dataclass
class Confirmation:
    """A candidate trained on fresh seeds: its final figures over them, and how it ended."""

    candidate: Candidate
    seeds: list[int]
    status: str
    metrics: dict

    def value(self, objective: str) -> float | None:
        return self.metrics.get(objective)


def candidates_from_results(results, objective: str, statuses: dict[str, str], top: int) -> list[Candidate]:
    """The ``top`` best distinct configs among a search's trials (by the shared ranking rule)."""

    def status(result) -> str:
        trial_id = (result.metrics or {}).get("trial_id")
        return statuses.get(trial_id) or trial_status(result.metrics, result.error is not None)

    ranked = best_first(list(results), lambda r: (r.metrics or {}).get(objective), status, OBJECTIVES[objective])
    chosen: list[Candidate] = []
    for result in ranked:
        config = trial_iic_config(result.config).replace(epochs=int(result.metrics["epoch"]))
        if all(config != kept.config for kept in chosen):
            chosen.append(Candidate(result.metrics["trial_id"], config, result.metrics[objective], trial_seeds(result.config)))
        if len(chosen) == top:
            break
    return chosen


def confirmation_seeds(search_seed: int, search_seeds: list[int], count: int) -> list[int]:
    """``count`` seeds drawn from the search's seed, none of them a seed the search trained on."""
    seeds: list[int] = []
    skip = 0
    while len(seeds) < count:  # draw past the search's own seeds, which come first from the same stream
        seeds = [s for s in draw_seeds(search_seed, count + skip) if s not in search_seeds][:count]
        skip += 1
    return seeds


def run_confirmation(candidates: list[Candidate], seeds: list[int], preset: Preset, name: str, storage_path: str,
                     logger: MLflowTrialLogger, resume: bool = False):
    """Train every candidate on ``seeds`` as Ray trials (``preset.search``'s concurrency and
    resources, no early stopping but the collapse rule); returns Tune's ResultGrid. An interrupted
    confirmation stage of the same ``name`` continues with ``resume``."""
    experiment_dir = f"{storage_path.rstrip('/')}/{name}"
    if resume and tune.Tuner.can_restore(experiment_dir):
        return tune.Tuner.restore(experiment_dir, trainable=make_trainable(preset), resume_unfinished=True, resume_errored=True).fit()
    points = [{**c.config.to_dict(), SEEDS_KEY: seeds, SOURCE_KEY: c.trial_id} for c in candidates]
    search = preset.search
    tuner = tune.Tuner(
        make_trainable(preset),
        tune_config=tune.TuneConfig(
            search_alg=BasicVariantGenerator(points_to_evaluate=points, max_concurrent=search.max_concurrent),
            num_samples=len(points),
        ),
        run_config=tune.RunConfig(
            name=name, storage_path=storage_path, callbacks=[logger],
            failure_config=tune.FailureConfig(max_failures=search.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            verbose=1,
        ),
    )
    return tuner.fit()


def confirmations(candidates: list[Candidate], results, seeds: list[int], statuses: dict[str, str]) -> list[Confirmation]:
    """Each candidate with what its confirmation trial ended with."""
    by_source = {result.config.get(SOURCE_KEY): result for result in results}
    confirmed = []
    for candidate in candidates:
        result = by_source.get(candidate.trial_id)
        metrics = (result.metrics or {}) if result is not None else {}
        status = statuses.get(metrics.get("trial_id")) or trial_status(metrics, result is None or result.error is not None)
        confirmed.append(Confirmation(candidate, seeds, str(status), metrics))
    return confirmed


def ranked_confirmations(confirmed: list[Confirmation], objective: str) -> list[Confirmation]:
    """Confirmed configs best first by their mean over the confirmation seeds; those whose
    confirmation failed or degenerated come last, in the search's order."""
    ranked = best_first(confirmed, lambda c: c.value(objective), lambda c: c.status, OBJECTIVES[objective])
    return ranked + [c for c in confirmed if c not in ranked]


def confirmed_row(confirmation: Confirmation, objective: str) -> dict:
    """One row of a confirmed-configs table."""
    metrics = confirmation.metrics
    row = {"trial_id": confirmation.candidate.trial_id, f"search_{objective}": confirmation.candidate.search_value}
    row.update({f"confirmed_{name}": metrics.get(name, math.nan) for name in CONFIRMED_FIGURES})
    row.update(confirm_status=confirmation.status, confirm_seeds=" ".join(map(str, confirmation.seeds)),
               search_seeds=" ".join(map(str, confirmation.candidate.search_seeds)), epochs=confirmation.candidate.config.epochs)
    return row


# ---- command line: confirm a finished search ----------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python search/confirm.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", required=True, help="MLflow experiment of the search (e.g. iic-digits)")
    parser.add_argument("--search", help="the search (iic.search tag) whose trials to confirm (default: the experiment's only search)")
    parser.add_argument("--top", type=int, required=True, help="distinct configs to confirm")
    parser.add_argument("--seeds", type=int, required=True, help="fresh seeds each config trains on")
    parser.add_argument("--objective", choices=sorted(OBJECTIVES), default="cluster_accuracy")
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"))
    parser.add_argument("--storage-path", default=os.environ.get("IIC_STORAGE_PATH", "runs/search"))
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS"), help="Ray cluster to join (default: a local Ray)")
    parser.add_argument("--max-concurrent", type=int, default=1)
    parser.add_argument("--cpus-per-trial", type=float, default=1.0)
    parser.add_argument("--gpus-per-trial", type=float, default=0.0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from search.confirm_cli import confirm_search

    return confirm_search(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
