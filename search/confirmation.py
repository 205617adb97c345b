"""Confirmation: the best configs of a search trained again on seeds it never saw.

A search ranks configs by their mean over the seeds every trial trains on; the best of many noisy
trials is flattered by those seeds. Confirmation trains the ``top`` distinct configs again on
fresh seeds (drawn from the search's seed, never the search's own), one Ray trial per config with
all its seeds stacked, each an MLflow child run of the search tagged ``iic.role=confirm`` and
``iic.confirms=<trial id>``. A search runs it at its end (``confirm_top``, ``confirm_seeds``),
``search/confirm.py`` for a finished search. Confirmed figures are what the export and the
search's summary rank by.
"""

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune.search.basic_variant import BasicVariantGenerator

from iic.config import IICConfig
from iic.label_free import LABEL_FREE_METRICS
from iic.plots import plot_cluster_gallery
from iic.seeds import LABEL_FREE_PICK, draw_seeds
from search.challenger import Margin, figures_from_metrics, start_ahead_of_noise
from search.driver import experiment_dir, make_trainable, progress_reporter, space_of, trial_dirname
from search.objectives import OBJECTIVES
from search.preset import Preset
from search.ranking import best_first, trial_status
from search.tracking.logger import MLflowTrialLogger
from search.tracking.records import ranked_runs, retrainable_config, seeds_param
from search.tracking.runs import TRIAL_TAG
from trainables.iic_trainable import (
    SEEDS_KEY,
    SOURCE_KEY,
    SUMMARY_FILE,
    trial_config_values,
    trial_iic_config,
    trial_seeds,
)

# Figures of a confirmation run, each over its seeds.
CONFIRMED_FIGURES = (
    "cluster_accuracy",
    "cluster_accuracy_min",
    "cluster_accuracy_sd",
    LABEL_FREE_PICK,
    "mutual_information",
    "nmi",
    *LABEL_FREE_METRICS,
)


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
    checkpoint: tune.Checkpoint | None = None  # its last, with its clusters' summary (SUMMARY_FILE)

    def value(self, objective: str) -> float | None:
        return self.metrics.get(objective)


@dataclass
class Choice:
    """What a search's trials put forward for confirmation: the ``top`` distinct configs, best
    first, with the start config ahead of trials that beat it by less than the seed noise; the
    trial of the start config, and that margin (None: the plain ranking)."""

    candidates: list[Candidate]
    start_trial_id: str | None = None
    margin: Margin | None = None
    best_trial_id: str | None = None  # the best by the search's own figures, before the margin

    def note(self) -> str | None:
        """Why the start config is confirmed though a trial read higher on the search's seeds."""
        if (
            self.margin is None
            or not self.candidates
            or self.candidates[0].trial_id != self.start_trial_id
            or self.best_trial_id == self.start_trial_id
        ):
            return None
        return (
            f"no trial beat the start config (trial {self.start_trial_id}) by more than the seed noise: "
            f"the best, trial {self.best_trial_id}, fell within the margin of {self.margin.describe()}"
        )


def distinct_candidates(ranked: list, candidate: Callable[[object], Candidate], top: int) -> list[Candidate]:
    """The first ``top`` distinct configs of ``ranked``."""
    chosen: list[Candidate] = []
    for item in ranked:
        found = candidate(item)
        if all(found.config != kept.config for kept in chosen):
            chosen.append(found)
        if len(chosen) == top:
            break
    return chosen


def candidates_from_results(
    results,
    objective: str,
    statuses: dict[str, str],
    top: int,
    start_config: IICConfig | None = None,
    challenger_margin: float = 0.0,
) -> Choice:
    """The ``top`` best distinct configs among a search's trials (by the shared ranking rule); a
    trial of ``start_config`` goes ahead of those that beat it by less than ``challenger_margin``
    standard errors (search/challenger.py)."""

    def status(result) -> str:
        trial_id = (result.metrics or {}).get("trial_id")
        return statuses.get(trial_id) or trial_status(result.metrics, result.error is not None)

    def config(result) -> IICConfig:
        return trial_iic_config(result.config, result.metrics).truncated(int(result.metrics["epoch"]))

    ranked = best_first(list(results), lambda r: (r.metrics or {}).get(objective), status, OBJECTIVES[objective])
    start = next((r for r in ranked if start_config is not None and trial_iic_config(r.config) == start_config), None)
    reordered, found = start_ahead_of_noise(
        ranked,
        start,
        lambda r: figures_from_metrics(r.metrics, objective, len(trial_seeds(r.config))),
        challenger_margin,
        OBJECTIVES[objective],
    )
    candidates = distinct_candidates(
        reordered,
        lambda r: Candidate(r.metrics["trial_id"], config(r), r.metrics[objective], trial_seeds(r.config)),
        top,
    )
    return Choice(
        candidates,
        start.metrics["trial_id"] if start else None,
        found,
        ranked[0].metrics["trial_id"] if ranked else None,
    )


def confirmation_seeds(search_seed: int, search_seeds: list[int], count: int) -> list[int]:
    """``count`` seeds drawn from the search's seed, none of them a seed the search trained on."""
    seeds: list[int] = []
    skip = 0
    while len(seeds) < count:  # draw past the search's own seeds, which come first from the same stream
        seeds = [s for s in draw_seeds(search_seed, count + skip) if s not in search_seeds][:count]
        skip += 1
    return seeds


def run_confirmation(
    candidates: list[Candidate],
    seeds: list[int],
    preset: Preset,
    name: str,
    storage_path: str,
    logger: MLflowTrialLogger,
    resume: bool = False,
):
    """Train every candidate on ``seeds`` as Ray trials (``preset.search``'s concurrency and
    resources, no early stopping but the collapse rule); returns Tune's ResultGrid. An interrupted
    confirmation stage of the same ``name`` continues with ``resume``."""
    folder = experiment_dir(storage_path, name)
    if resume and tune.Tuner.can_restore(folder):
        return tune.Tuner.restore(
            folder, trainable=make_trainable(preset), resume_unfinished=True, resume_errored=True
        ).fit()
    points = [{**trial_config_values(c.config), SEEDS_KEY: seeds, SOURCE_KEY: c.trial_id} for c in candidates]
    search = preset.search
    tuner = tune.Tuner(
        make_trainable(preset),
        param_space=space_of(points),
        tune_config=tune.TuneConfig(
            search_alg=BasicVariantGenerator(points_to_evaluate=points, max_concurrent=search.max_concurrent),
            num_samples=len(points),
            trial_dirname_creator=trial_dirname,
            reuse_actors=True,  # as in the search: a candidate waiting for a slot skips the start-up of a new process
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage_path,
            callbacks=[logger],
            progress_reporter=progress_reporter(preset),
            failure_config=tune.FailureConfig(max_failures=search.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            verbose=1,
        ),
    )
    return tuner.fit()


def confirmations(
    candidates: list[Candidate], results, seeds: list[int], statuses: dict[str, str]
) -> list[Confirmation]:
    """Each candidate with what its confirmation trial ended with."""
    by_source = {result.config.get(SOURCE_KEY): result for result in results}
    confirmed = []
    for candidate in candidates:
        result = by_source.get(candidate.trial_id)
        metrics = (result.metrics or {}) if result is not None else {}
        status = statuses.get(metrics.get("trial_id")) or trial_status(
            metrics, result is None or result.error is not None
        )
        checkpoint = result.checkpoint if result is not None else None
        confirmed.append(Confirmation(candidate, seeds, str(status), metrics, checkpoint))
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
    row.update(
        confirm_status=confirmation.status,
        confirm_seeds=" ".join(map(str, confirmation.seeds)),
        search_seeds=" ".join(map(str, confirmation.candidate.search_seeds)),
        epochs=confirmation.candidate.config.epochs,
    )
    return row


def record_confirmed(client: MlflowClient, run_id: str, confirmed: list[Confirmation], objective: str) -> str | None:
    """The parent run's record of a confirmation stage: confirmed.csv, the confirmed best's
    best_config.yaml, figures (``best_confirmed_*``) and cluster gallery, the confirmation seeds.
    Returns where the gallery is (None without one)."""
    best = confirmed[0]
    with tempfile.TemporaryDirectory() as folder:
        pd.DataFrame([confirmed_row(c, objective) for c in confirmed]).to_csv(
            Path(folder) / "confirmed.csv", index=False
        )
        best.candidate.config.to_yaml(Path(folder) / "best_config.yaml")
        for name in ("confirmed.csv", "best_config.yaml"):
            client.log_artifact(run_id, str(Path(folder) / name))
    client.set_tag(run_id, "iic.best_trial_id", best.candidate.trial_id)
    client.set_tag(run_id, "iic.confirm_seeds", " ".join(map(str, best.seeds)))
    for name, value in confirmed_row(best, objective).items():
        if name.startswith("confirmed_") and isinstance(value, float) and math.isfinite(value):
            client.log_metric(run_id, f"best_{name}", value)
    return record_best_gallery(client, run_id, best)


BEST_GALLERY = "best_cluster_gallery.png"


def record_best_gallery(client: MlflowClient, run_id: str, best: Confirmation) -> str | None:
    """The confirmed best's images per cluster (its seed with the highest held-out MI), drawn from
    its last checkpoint into the parent run: how a person without labels checks the clusters."""
    if best.checkpoint is None:
        return None
    with best.checkpoint.as_directory() as saved, tempfile.TemporaryDirectory() as folder:
        if not (Path(saved) / SUMMARY_FILE).is_file():
            return None
        plot_cluster_gallery(dict(np.load(Path(saved) / SUMMARY_FILE)), Path(folder) / BEST_GALLERY)
        client.log_artifact(run_id, str(Path(folder) / BEST_GALLERY))
    return f"{client.get_run(run_id).info.artifact_uri.removeprefix('file://')}/{BEST_GALLERY}"


def print_confirmed(confirmed: list[Confirmation], objective: str) -> None:
    table = pd.DataFrame([confirmed_row(c, objective) for c in confirmed]).drop(columns=["confirm_seeds"])
    with pd.option_context("display.width", 220, "display.max_columns", 24, "display.float_format", "{:.3f}".format):
        print(
            f"\nConfirmed on {len(confirmed[0].seeds)} fresh seeds "
            f"({' '.join(map(str, confirmed[0].seeds))}), best first:"
        )
        print(table.to_string(index=False))


def candidates_from_runs(
    client: MlflowClient,
    tracking_uri: str,
    runs: list[Run],
    objective: str,
    top: int,
    start_trial_id: str | None = None,
    challenger_margin: float = 0.0,
) -> Choice:
    """The ``top`` best distinct configs among a search's recorded trial runs; the run of trial
    ``start_trial_id`` goes ahead of those that beat it by less than ``challenger_margin`` standard
    errors (search/challenger.py)."""
    ranked = [run for run, _ in ranked_runs(runs, objective)]
    start = next(
        (run for run in ranked if start_trial_id is not None and run.data.tags.get(TRIAL_TAG) == start_trial_id), None
    )
    reordered, found = start_ahead_of_noise(
        ranked,
        start,
        lambda run: figures_from_metrics(run.data.metrics, objective, len(seeds_param(run))),
        challenger_margin,
        OBJECTIVES[objective],
    )

    def candidate(run: Run) -> Candidate:
        return Candidate(
            run.data.tags[TRIAL_TAG],
            retrainable_config(client, tracking_uri, run, objective),
            run.data.metrics[objective],
            [int(s) for s in seeds_param(run)],
        )

    return Choice(
        distinct_candidates(reordered, candidate, top),
        start_trial_id if start else None,
        found,
        ranked[0].data.tags[TRIAL_TAG] if ranked else None,
    )
