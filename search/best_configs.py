"""The best configs of a search as files that ``python -m iic.train`` retrains unchanged.

Reads the trial runs a search recorded in MLflow (tag ``iic.role = trial``), keeps those that
FINISHED with a finite objective and did not diverge or fail, and ranks them: configs confirmed on
fresh seeds first, by their confirmed mean, then the others by the objective's last value. Each
trial's ``config.yaml`` artifact is written with ``epochs`` set to the epochs the trial actually ran
(ASHA may have stopped it early), so that retraining it with the same seed reproduces the recorded
accuracy; a population-based trial's config carries its whole schedule (its donors' epochs, then its
own), up to those epochs. Trials with identical configs count once. The folder also receives
``summary.csv`` and ``summary.md``; the rank files of an earlier export into it are replaced.
"""

import csv
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from iic.config import ConfigError, IICConfig
from iic.seeds import LABEL_FREE_PICK
from search.confirmation import CONFIRMED_FIGURES
from search.objectives import OBJECTIVES
from search.preset import SearchDefaults
from search.tracking.records import (
    RecordsError,
    connect,
    find_experiment_id,
    objective_value,
    ranked_runs,
    retrainable_config,
    runs_of_search,
    seeds_param,
    trial_runs,
)
from search.tracking.runs import CONFIRM_ROLE, CONFIRMS_TAG, SEARCH_TAG, TRIAL_TAG

SETTINGS = ("lr", "batch_size", "lamb", "repeats", "sobel", "overcluster_k")
RANK_FILE = re.compile(r"rank\d+_.+\.yaml")
SUMMARY_FILES = ("summary.csv", "summary.md")


@dataclass
class ExportedTrial:
    """One trial to export: its MLflow run, its objective value, its retrainable config, and the
    run that confirmed it on fresh seeds (if the search had a confirmation stage)."""

    run: Run
    value: float
    config: IICConfig
    confirmation: Run | None = None

    @property
    def trial_id(self) -> str:
        return self.run.data.tags.get(TRIAL_TAG, self.run.info.run_id[:8])


def best_unique_trials(
    client: MlflowClient, tracking_uri: str, ranked: list[tuple[Run, float]], objective: str, top: int
) -> list[ExportedTrial]:
    """The first ``top`` runs with distinct configs; a run whose config cannot be read is skipped."""
    chosen: list[ExportedTrial] = []
    for run, value in ranked:
        try:
            config = retrainable_config(client, tracking_uri, run, objective)
        except (MlflowException, OSError, ConfigError, ValueError) as err:
            print(
                f"warning: run {run.info.run_id}: could not rebuild its config from config.yaml "
                f"({str(err).splitlines()[0][:200]}); skipped",
                file=sys.stderr,
            )
            continue
        if all(config.to_dict() != kept.config.to_dict() for kept in chosen):
            chosen.append(ExportedTrial(run, value, config))
        if len(chosen) == top:
            break
    return chosen


def confirmation_runs(client: MlflowClient, experiment_id: str, objective: str) -> dict[str, Run]:
    """The newest confirmation run that counts for each confirmed trial id."""
    newest_first = sorted(trial_runs(client, experiment_id, CONFIRM_ROLE), key=lambda run: -(run.info.start_time or 0))
    confirmed: dict[str, Run] = {}
    for run in newest_first:
        if objective_value(run, objective) is not None:
            confirmed.setdefault(run.data.tags.get(CONFIRMS_TAG, ""), run)
    return confirmed


def confirmed_first(
    ranked: list[tuple[Run, float]], confirmed: dict[str, Run], objective: str
) -> list[tuple[Run, float]]:
    """Trials confirmed on fresh seeds first, by their confirmed mean; the others after, in the
    search's order (their figures hold for the seeds they were chosen on only)."""
    sign = -1 if OBJECTIVES[objective] == "max" else 1

    def key(item: tuple[Run, float]) -> tuple:
        confirmation = confirmed.get(item[0].data.tags.get(TRIAL_TAG, ""))
        return (0, sign * confirmation.data.metrics[objective]) if confirmation else (1, 0.0)

    return sorted(ranked, key=key)


def rank_file_name(rank: int, trial: ExportedTrial) -> str:
    return f"rank{rank:02d}_{re.sub(r'[^A-Za-z0-9_.-]', '_', trial.trial_id)}.yaml"


def summary_rows(trials: list[ExportedTrial], objective: str) -> list[dict]:
    rows = []
    for rank, trial in enumerate(trials, start=1):
        metrics = trial.run.data.metrics
        row = {
            "rank": rank,
            "file": rank_file_name(rank, trial),
            "run_id": trial.run.info.run_id,
            "trial_id": trial.trial_id,
            "search": trial.run.data.tags.get(SEARCH_TAG, ""),
            objective: trial.value,
        }
        for name in ("cluster_accuracy", "nmi", "largest_cluster_share"):
            row.setdefault(name, metrics.get(name))
        row["search_seeds"] = " ".join(seeds_param(trial.run))
        confirmed = trial.confirmation.data.metrics if trial.confirmation else {}
        row.update({f"confirmed_{name}": confirmed.get(name) for name in CONFIRMED_FIGURES})
        row["confirm_seeds"] = " ".join(seeds_param(trial.confirmation)) if trial.confirmation else ""
        row["epochs"] = trial.config.epochs
        row.update({name: getattr(trial.config, name) for name in SETTINGS})
        rows.append(row)
    return rows


def cell(value) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def markdown_table(rows: list[dict]) -> str:
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(row[name]) for name in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_config(path: Path, trial: ExportedTrial, row: dict) -> Path:
    """The trial's config as YAML, headed by comments that say what accuracy it holds, on which seeds."""
    objective = next(name for name in row if name in OBJECTIVES)  # summary_rows puts it before the other figures
    seeds = row["search_seeds"]
    lines = [
        f"# iic-search export, rank {row['rank']}: trial {row['trial_id']} of search {row['search']!r}",
        f"# search: {objective} {row[objective]:.4f} (mean over seeds {seeds}, the seeds it was chosen on)",
        f"#   retrain those: python -m iic.train --config {path.name} --seeds {seeds}",
    ]
    if trial.confirmation:
        lines.append(
            f"# confirmed on seeds it was not chosen with ({row['confirm_seeds']}): {objective} mean "
            f"{row[f'confirmed_{objective}']:.4f}"
            + "".join(
                f", {label} {row[f'confirmed_{name}']:.4f}"
                for label, name in (
                    ("min", "cluster_accuracy_min"),
                    ("sd", "cluster_accuracy_sd"),
                    ("label-free pick", LABEL_FREE_PICK),
                )
                if row.get(f"confirmed_{name}") is not None and objective == "cluster_accuracy"
            )
        )
    else:
        lines.append("# not confirmed on other seeds: expect less (python search/confirm.py confirms it)")
    trial.config.to_yaml(path)
    path.write_text("\n".join(lines) + "\n" + path.read_text())
    return path


def write_export(out: Path, trials: list[ExportedTrial], rows: list[dict]) -> list[Path]:
    """The rank files, summary.csv and summary.md in ``out``, replacing an earlier export's."""
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.iterdir():
        if RANK_FILE.fullmatch(stale.name) or stale.name in SUMMARY_FILES:
            stale.unlink()
    paths = [write_config(out / row["file"], trial, row) for trial, row in zip(trials, rows, strict=True)]
    with open(out / "summary.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / "summary.md").write_text(markdown_table(rows))
    return paths


def export_best(
    tracking_uri: str,
    experiment: str,
    top: int,
    out: str | Path,
    objective: str = SearchDefaults.objective,
    search: str | None = None,
) -> list[Path]:
    """Write the ``top`` best distinct trial configs of ``experiment`` (optionally of one search)
    to ``out`` with summary.csv and summary.md; returns the config files, best first. Raises
    RecordsError, before writing anything, when there is nothing to export."""
    if top < 1:
        raise RecordsError(f"--top must be at least 1 (got {top})")
    if objective not in OBJECTIVES:
        raise RecordsError(f"--objective {objective}: choose one of {', '.join(OBJECTIVES)}")
    client, tracking_uri = connect(tracking_uri)
    try:
        runs = runs_of_search(trial_runs(client, find_experiment_id(client, experiment)), experiment, search)
        experiment_id = find_experiment_id(client, experiment)
        confirmed = confirmation_runs(client, experiment_id, objective)
        ranked = confirmed_first(ranked_runs(runs, objective), confirmed, objective)
        trials = best_unique_trials(client, tracking_uri, ranked, objective, top)
        for trial in trials:
            trial.confirmation = confirmed.get(trial.trial_id)
    except MlflowException as err:
        raise RecordsError(
            f"could not read the trials from {tracking_uri}: {str(err).splitlines()[0][:200]}; check --tracking-uri"
        ) from None
    if not trials:
        raise RecordsError(
            f"none of the {len(runs)} trial runs finished with a finite {objective} and a config.yaml artifact "
            f"(diverged and failed trials are skipped); run a longer or steadier search"
        )
    return write_export(Path(out), trials, summary_rows(trials, objective))
