"""Export the best trials of a search as configs that ``python -m iic.train`` runs unchanged.

    python search/export.py --experiment iic-digits --top 5 --out best/
    python search/export.py --experiment iic-har --search har-1 --top 3 --out best-har --objective mutual_information
    python -m iic.train --config best/rank01_<trial>.yaml --out runs/retrain/rank01   # retrain the best
    python search/run.py --warm-start best/                                            # or seed a new search

Reads the trial runs that ``search/run.py`` recorded in MLflow (tag ``iic.role = trial``), keeps those
that FINISHED with a finite objective and did not diverge or fail, and ranks them by the objective's
last value, best first. Each trial's ``config.yaml`` artifact is written with ``epochs`` set to the
epochs the trial actually ran (ASHA may have stopped it early), so that retraining it with the same
seed reproduces the recorded accuracy. Trials with identical configs count once. OUT also receives
``summary.csv`` and ``summary.md``; the rank files of an earlier export into OUT are replaced.
"""

import argparse
import csv
import math
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow.artifacts
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from iic.config import ConfigError, IICConfig
from search.run import SearchError, check_tracking_uri
from search.space import OBJECTIVES
from search.tracking import ROLE_TAG, SEARCH_TAG, STATUS_TAG, TRIAL_TAG

SETTINGS = ("lr", "batch_size", "lamb", "repeats", "sobel", "overcluster_k")
SKIPPED_STATUSES = ("diverged", "error")
RANK_FILE = re.compile(r"rank\d+_.+\.yaml")
SUMMARY_FILES = ("summary.csv", "summary.md")


class ExportError(ValueError):
    """An export that cannot run; the message says what to change."""


@dataclass
class ExportedTrial:
    """One trial to export: its MLflow run, its objective value and its retrainable config."""

    run: Run
    value: float
    config: IICConfig

    @property
    def trial_id(self) -> str:
        return self.run.data.tags.get(TRIAL_TAG, self.run.info.run_id[:8])


# ---- reading MLflow -----------------------------------------------------------------------------


def connect(tracking_uri: str) -> tuple[MlflowClient, str]:
    """A client of the store (sqlite path made absolute, server checked), and the URI it uses."""
    try:
        tracking_uri = check_tracking_uri(tracking_uri)
    except SearchError as err:
        raise ExportError(str(err)) from None
    if tracking_uri.startswith("sqlite:///"):
        database = Path(tracking_uri.removeprefix("sqlite:///"))
        if not database.is_file():  # MLflow would create an empty one
            raise ExportError(f"--tracking-uri {tracking_uri}: no MLflow database there; pass the --tracking-uri the search used")
    return MlflowClient(tracking_uri), tracking_uri


def find_experiment_id(client: MlflowClient, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        known = sorted(e.name for e in client.search_experiments())
        raise ExportError(f"--experiment {name}: no such experiment; known experiments: {', '.join(known) or 'none'}")
    return experiment.experiment_id


def trial_runs(client: MlflowClient, experiment_id: str) -> list[Run]:
    """Every trial run of the experiment (all pages)."""
    runs, page_token = [], None
    while True:
        page = client.search_runs([experiment_id], f"tags.`{ROLE_TAG}` = 'trial'", max_results=1000, page_token=page_token)
        runs.extend(page)
        page_token = page.token
        if not page_token:
            return runs


def runs_of_search(runs: list[Run], experiment: str, search: str | None) -> list[Run]:
    if not runs:
        raise ExportError(f"experiment {experiment!r} has no trial runs; run a search first (python search/run.py --experiment {experiment})")
    if search is None:
        return runs
    matching = [run for run in runs if run.data.tags.get(SEARCH_TAG) == search]
    if not matching:
        known = sorted({run.data.tags.get(SEARCH_TAG, "?") for run in runs})
        raise ExportError(f"--search {search}: no trial runs of that search in {experiment!r}; its searches: {', '.join(known)}")
    return matching


def objective_value(run: Run, objective: str) -> float | None:
    """The run's last objective value if the run counts (finished, finite, not diverged or failed)."""
    value = run.data.metrics.get(objective)
    if run.info.status != "FINISHED" or run.data.tags.get(STATUS_TAG) in SKIPPED_STATUSES:
        return None
    return value if value is not None and math.isfinite(value) else None


def ranked_runs(runs: list[Run], objective: str) -> list[tuple[Run, float]]:
    """Runs that count with their objective value, best first (ties: the earlier run first)."""
    scored = [(run, value) for run in runs if (value := objective_value(run, objective)) is not None]
    sign = -1 if OBJECTIVES[objective] == "max" else 1
    return sorted(scored, key=lambda item: (sign * item[1], item[0].info.start_time or 0, item[0].info.run_id))


def retrainable_config(client: MlflowClient, tracking_uri: str, run: Run, objective: str) -> IICConfig:
    """The run's config.yaml with ``epochs`` = the last epoch it recorded the objective for."""
    with tempfile.TemporaryDirectory() as folder:
        path = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="config.yaml", dst_path=folder, tracking_uri=tracking_uri)
        config = IICConfig.from_yaml(path)
    epochs_run = max(metric.step for metric in client.get_metric_history(run.info.run_id, objective))
    return config.replace(epochs=epochs_run)


def best_unique_trials(client: MlflowClient, tracking_uri: str, ranked: list[tuple[Run, float]], objective: str, top: int) -> list[ExportedTrial]:
    """The first ``top`` runs with distinct configs; a run whose config cannot be read is skipped."""
    chosen: list[ExportedTrial] = []
    for run, value in ranked:
        try:
            config = retrainable_config(client, tracking_uri, run, objective)
        except (MlflowException, OSError, ConfigError, ValueError) as err:
            print(f"warning: run {run.info.run_id}: could not rebuild its config from config.yaml ({str(err).splitlines()[0][:200]}); skipped", file=sys.stderr)
            continue
        if all(config.to_dict() != kept.config.to_dict() for kept in chosen):
            chosen.append(ExportedTrial(run, value, config))
        if len(chosen) == top:
            break
    return chosen


# ---- writing the export -------------------------------------------------------------------------


def rank_file_name(rank: int, trial: ExportedTrial) -> str:
    return f"rank{rank:02d}_{re.sub(r'[^A-Za-z0-9_.-]', '_', trial.trial_id)}.yaml"


def summary_rows(trials: list[ExportedTrial], objective: str) -> list[dict]:
    rows = []
    for rank, trial in enumerate(trials, start=1):
        metrics = trial.run.data.metrics
        row = {
            "rank": rank, "file": rank_file_name(rank, trial), "run_id": trial.run.info.run_id, "trial_id": trial.trial_id,
            "search": trial.run.data.tags.get(SEARCH_TAG, ""), objective: trial.value,
        }
        for name in ("cluster_accuracy", "nmi", "largest_cluster_share"):
            row.setdefault(name, metrics.get(name))
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


def write_export(out: Path, trials: list[ExportedTrial], rows: list[dict]) -> list[Path]:
    """The rank files, summary.csv and summary.md in ``out``, replacing an earlier export's."""
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.iterdir():
        if RANK_FILE.fullmatch(stale.name) or stale.name in SUMMARY_FILES:
            stale.unlink()
    paths = [trial.config.to_yaml(out / row["file"]) for trial, row in zip(trials, rows)]
    with open(out / "summary.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / "summary.md").write_text(markdown_table(rows))
    return paths


def export_best(tracking_uri: str, experiment: str, top: int, out: str | Path, objective: str = "cluster_accuracy",
                search: str | None = None) -> list[Path]:
    """Write the ``top`` best distinct trial configs of ``experiment`` (optionally of one search)
    to ``out`` with summary.csv and summary.md; returns the config files, best first. Raises
    ExportError, before writing anything, when there is nothing to export."""
    if top < 1:
        raise ExportError(f"--top must be at least 1 (got {top})")
    if objective not in OBJECTIVES:
        raise ExportError(f"--objective {objective}: choose one of {', '.join(OBJECTIVES)}")
    client, tracking_uri = connect(tracking_uri)
    try:
        runs = runs_of_search(trial_runs(client, find_experiment_id(client, experiment)), experiment, search)
        ranked = ranked_runs(runs, objective)
        trials = best_unique_trials(client, tracking_uri, ranked, objective, top)
    except MlflowException as err:
        raise ExportError(f"could not read the trials from {tracking_uri}: {str(err).splitlines()[0][:200]}; check --tracking-uri") from None
    if not trials:
        raise ExportError(
            f"none of the {len(runs)} trial runs finished with a finite {objective} and a config.yaml artifact "
            f"(diverged and failed trials are skipped); run a longer or steadier search"
        )
    return write_export(Path(out), trials, summary_rows(trials, objective))


# ---- command line -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python search/export.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", required=True, help="MLflow experiment of the search (e.g. iic-digits)")
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"), help="MLflow store: sqlite:///FILE (default sqlite:///mlflow.db) or http://HOST:PORT")
    parser.add_argument("--search", help="only the trials of this search name (the iic.search tag; default: every search in the experiment)")
    parser.add_argument("--top", type=int, required=True, help="number of distinct configs to export")
    parser.add_argument("--out", required=True, help="folder for rank01_<trial>.yaml ..., summary.csv and summary.md")
    parser.add_argument("--objective", choices=sorted(OBJECTIVES), default="cluster_accuracy", help="metric to rank by (default: cluster_accuracy)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per run otherwise
    try:
        paths = export_best(args.tracking_uri, args.experiment, args.top, args.out, args.objective, args.search)
    except ExportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    print(f"Best {len(paths)} distinct trial(s) of {args.experiment!r} by {args.objective} -> {out}/\n")
    print((out / "summary.md").read_text())
    print(f"Retrain the best:  python -m iic.train --config {paths[0]} --out runs/retrain/{paths[0].stem}")
    print(f"Seed a new search: python search/run.py --warm-start {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
