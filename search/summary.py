"""The end of a search: the trials and the confirmed configs as tables, the parent run's summary,
where to look."""

import json
import math
import tempfile
import time
import urllib.parse
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import optuna
import pandas as pd
from matplotlib import pyplot as plt
from mlflow.tracking import MlflowClient
from scipy.stats import spearmanr

from iic.seeds import COLLAPSED_SEEDS, LABEL_FREE_PICK
from search.ceiling import Ceiling, ceiling_line, record_ceiling
from search.confirmation import Candidate, Choice, Confirmation, print_confirmed, record_confirmed
from search.objectives import OBJECTIVES
from search.preset import Preset
from search.ranking import best_first, counts, trial_status
from search.space import search_space
from search.tracking.runs import START_TRIAL_TAG, TRIAL_ROLE, role_filter, wait_for_server
from trainables.iic_trainable import trial_iic_config

TABLE_PARAMS = ("lr", "batch_size", "lamb", "repeats", "sobel", "overcluster_k", "crop_min_scale", "rotation_degrees")
# Parameter importances from fewer completed trials than this are noise, not a ranking.
MIN_TRIALS_FOR_IMPORTANCE = 10
# How often the summary is recorded when the MLflow server goes away in the middle of it.
SUMMARY_ATTEMPTS = 3


class StampedClient:
    """The MLflow client, every metric it logs stamped with the time it was made at step 0: a summary
    recorded again from the start stores each of its metrics once (MLflow keeps one of identical points)."""

    def __init__(self, client: MlflowClient):
        self.client, self.timestamp = client, int(time.time() * 1000)

    def log_metric(self, run_id: str, key: str, value: float) -> None:
        self.client.log_metric(run_id, key, value, timestamp=self.timestamp, step=0)

    def __getattr__(self, name: str):
        return getattr(self.client, name)


def trial_table(results, objective: str, statuses: dict[str, str]) -> pd.DataFrame:
    """One row per trial: its last reported figures over its seeds, status and main settings;
    trials that count (see search.ranking) first, best first."""
    rows = []
    for result in results:
        metrics = result.metrics or {}
        config = trial_iic_config(result.config).to_dict() if result.config else {}
        trial_id = metrics.get("trial_id", Path(str(result.path)).name)
        rows.append(
            {
                "trial_id": trial_id,
                objective: metrics.get(objective, math.nan),
                f"{objective}_min": metrics.get(f"{objective}_min", math.nan),
                f"{objective}_sd": metrics.get(f"{objective}_sd", math.nan),
                "cluster_accuracy": metrics.get("cluster_accuracy", math.nan),
                "mutual_information": metrics.get("mutual_information", math.nan),
                LABEL_FREE_PICK: metrics.get(LABEL_FREE_PICK, math.nan),
                "largest_cluster_share": metrics.get("largest_cluster_share", math.nan),
                "epochs": metrics.get("epoch", 0),
                COLLAPSED_SEEDS: metrics.get(COLLAPSED_SEEDS, math.nan),  # beside the status: how many failed
                "status": str(statuses.get(trial_id) or trial_status(metrics, result.error is not None)),
                **{name: config.get(name) for name in TABLE_PARAMS},
            }
        )
    table = pd.DataFrame(rows).loc[:, lambda frame: ~frame.columns.duplicated()]  # objective may be cluster_accuracy
    ranked = best_first(rows, lambda row: row[objective], lambda row: row["status"], OBJECTIVES[objective])
    order = [rows.index(row) for row in ranked] + [i for i, row in enumerate(rows) if row not in ranked]
    return table.iloc[order].reset_index(drop=True)


def completed_trials(table: pd.DataFrame, objective: str) -> pd.DataFrame:
    return table[[counts(status, value) for status, value in zip(table["status"], table[objective], strict=True)]]


def optuna_study(results, preset: Preset, objective: str, trial_ids: set[str]) -> optuna.Study:
    """The search's trials (those in ``trial_ids``) as an Optuna study, for its plots; a trial whose
    values lie outside the space (a --warm-start config from a search with other ranges) is left out."""
    space = search_space(preset)
    distributions = space.distributions()
    study = optuna.create_study(direction="maximize" if OBJECTIVES[objective] == "max" else "minimize")
    for result in results:
        metrics = result.metrics or {}
        if metrics.get("trial_id") not in trial_ids:
            continue
        params = space.point(trial_iic_config(result.config).to_dict())
        try:
            study.add_trial(
                optuna.trial.create_trial(
                    params=params, distributions={k: distributions[k] for k in params}, value=metrics[objective]
                )
            )
        except ValueError:  # Optuna refuses a value outside its distribution
            continue
    return study


def save_optuna_plots(study: optuna.Study, folder: Path) -> list[Path]:
    """The optimisation history; the parameter importances only from MIN_TRIALS_FOR_IMPORTANCE
    completed trials or more, captioned with their count."""
    plots = []
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    completed = len(study.trials)
    drawings = [("optuna_history.png", optuna.visualization.matplotlib.plot_optimization_history, None)]
    if completed >= MIN_TRIALS_FOR_IMPORTANCE:
        drawings.append(
            (
                "optuna_importance.png",
                optuna.visualization.matplotlib.plot_param_importances,
                f"from {completed} completed trials (fANOVA on their mean over the search's seeds)",
            )
        )
    for name, draw, caption in drawings:
        if completed < 2:
            break
        try:
            with warnings.catch_warnings():  # "experimental" and small-sample notes: not for the user
                warnings.simplefilter("ignore")
                axes = draw(study)
        except (ValueError, RuntimeError):  # e.g. importances when no parameter varied
            continue
        if caption:
            axes.set_title(f"{axes.get_title()}\n{caption}", fontsize=10)
        axes.figure.set_size_inches(8, 5)
        axes.figure.tight_layout()
        axes.figure.savefig(folder / name, dpi=90)
        plt.close(axes.figure)
        plots.append(folder / name)
    return plots


def information_accuracy_correlation(table: pd.DataFrame) -> tuple[float, int]:
    """Spearman's rank correlation between held-out mutual information and cluster accuracy over
    the search's trials (each trial's last figures), and the number of trials it is over: how far
    the label-free objective can be trusted on this data."""
    both = table[["mutual_information", "cluster_accuracy"]].astype(float).dropna()
    if len(both) < 3 or both.nunique().min() < 2:
        return math.nan, len(both)
    return float(spearmanr(both["mutual_information"], both["cluster_accuracy"]).statistic), len(both)


def ui_hint(tracking_uri: str, experiment_id: str, objective: str, role: str = TRIAL_ROLE) -> tuple[str, str]:
    """The command that serves the MLflow UI, and the address that opens the experiment's runs of
    one role sorted by the objective, with their per-epoch charts (checked in MLflow 3.17.2)."""
    base = tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    query = urllib.parse.urlencode(
        {
            "searchFilter": role_filter(role),
            "orderByKey": f"metrics.`{objective}`",
            "orderByAsc": "false",
            "compareRunsMode": "CHART",
        },
        quote_via=urllib.parse.quote,
    )
    address = f"{base}/#/experiments/{experiment_id}/runs?{query}"
    if tracking_uri.startswith(("http://", "https://")):
        return f"(server already running at {tracking_uri})", address
    return f"mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port 5000", address


def best_accuracy(table: pd.DataFrame, confirmed: list[Confirmation] | None) -> tuple[float | None, str]:
    """The search's best cluster accuracy, and what it is: the best confirmed config's mean, else the
    best counted trial's (over the search's seeds)."""
    if confirmed and confirmed[0].metrics.get("cluster_accuracy") is not None:
        return float(confirmed[0].metrics["cluster_accuracy"]), "the best config, confirmed on fresh seeds"
    counted = table[
        [counts(status, value) for status, value in zip(table["status"], table["cluster_accuracy"], strict=True)]
    ]
    return (
        (float(counted["cluster_accuracy"].max()), "the best trial, over the search's seeds")
        if len(counted)
        else (None, "")
    )


def record_best(client: MlflowClient, run_id: str, folder: Path, best: Candidate) -> None:
    """The parent run's record of the best trial by the search's own figures."""
    best.config.to_yaml(folder / "best_config.yaml")
    client.log_artifact(run_id, str(folder / "best_config.yaml"))
    client.set_tag(run_id, "iic.best_trial_id", best.trial_id)


def record_start_trial(client: MlflowClient, parent_run_id: str, choice: Choice) -> None:
    """Which trial was the start config, so that ``search/confirm.py`` applies the same margin; the
    margin and the seed sd it rests on (``challenger_margin``, ``seed_sd``)."""
    if choice.start_trial_id is not None:
        client.set_tag(parent_run_id, START_TRIAL_TAG, choice.start_trial_id)
    if choice.margin is not None:
        client.log_metric(parent_run_id, "challenger_margin", choice.margin.value)
        client.log_metric(parent_run_id, "seed_sd", choice.margin.seed_sd)


def summarise(
    results,
    preset: Preset,
    tracking_uri: str,
    experiment_id: str,
    parent_run_id: str,
    name: str,
    report_path: Path,
    top: int = 5,
    confirmed: list[Confirmation] | None = None,
    choice: Choice | None = None,
    ceiling: Ceiling | None = None,
) -> pd.DataFrame:
    """Print and record the end of a search. ``confirmed``: the confirmation stage's results, best
    first; ``choice``: the configs the search's own figures put forward, best first, with its start
    config and challenger margin (search.confirmation.Choice); ``ceiling``: the supervised ceiling, when
    it was trained."""
    best_candidate = choice.candidates[0] if choice and choice.candidates else None
    objective = preset.search.objective
    report = json.loads(Path(report_path).read_text()) if Path(report_path).is_file() else {}
    failures, statuses = report.get("failures", []), report.get("statuses", {})
    table = trial_table(results, objective, statuses)
    completed = completed_trials(table, objective)
    correlation, correlated = information_accuracy_correlation(completed)

    def record() -> str | None:
        """The parent run's summary and closing; the confirmed best's gallery path, if any."""
        gallery = None
        with tempfile.TemporaryDirectory() as folder:
            folder = Path(folder)
            table.to_csv(folder / "trials.csv", index=False)
            files = [
                folder / "trials.csv",
                *save_optuna_plots(optuna_study(results, preset, objective, set(completed["trial_id"])), folder),
            ]
            if choice is not None:
                record_start_trial(client, parent_run_id, choice)
            if best_candidate is not None:
                client.log_metric(parent_run_id, f"best_{objective}", float(best_candidate.search_value))
                if confirmed:
                    gallery = record_confirmed(client, parent_run_id, confirmed, objective)
                else:
                    record_best(client, parent_run_id, folder, best_candidate)
            if ceiling is not None:
                record_ceiling(client, parent_run_id, ceiling, best_accuracy(table, confirmed)[0])
            if math.isfinite(correlation):
                client.log_metric(parent_run_id, "mi_accuracy_spearman", correlation)
            client.log_metric(parent_run_id, "trials", len(table))
            client.log_metric(parent_run_id, "completed_trials", len(completed))
            for path in files:
                client.log_artifact(parent_run_id, str(path))
            client.set_terminated(parent_run_id, "FINISHED")
        return gallery

    client, gallery, error = StampedClient(MlflowClient(tracking_uri)), None, None
    answering = wait_for_server(tracking_uri)
    for _ in range(SUMMARY_ATTEMPTS):
        try:
            gallery, error = record(), None
            break
        except Exception as err:  # noqa: BLE001 - the trials are done; say what could not be recorded
            error = err
            # The server went away in the middle: once it answers again, the summary is recorded again.
            if not (answering and wait_for_server(tracking_uri)):
                break
    if error is not None:
        failures.append(
            "search: could not record the summary in the parent run: "
            f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
        )
    print_summary(table, confirmed or [], objective, name, top, (correlation, correlated))
    if ceiling is not None:
        print("\n" + ceiling_line(ceiling, *best_accuracy(table, confirmed)))
    command, address = ui_hint(tracking_uri, experiment_id, objective)
    print(f"\nMLflow: {command}\n        then open the trials, best first: {address}")
    if gallery:
        print(f"the confirmed best's images per cluster: {gallery}")
    if failures:
        print(f"\nMLflow could not record {len(failures)} item(s); the trials themselves ran:")
        for line in failures:
            print(f"  - {line}")
    return table


def print_summary(
    table: pd.DataFrame,
    confirmed: list[Confirmation],
    objective: str,
    name: str,
    top: int,
    correlation: tuple[float, int],
) -> None:
    seeds_note = "mean over each trial's seeds"
    with pd.option_context("display.width", 220, "display.max_columns", 24, "display.float_format", "{:.3f}".format):
        print(f"\nBest {min(top, len(table))} of {len(table)} trials by {objective} ({name}; {seeds_note}):")
        # a figure no trial has (the spread of one seed, a label-free pick without screening) is left out
        print(table.head(top).dropna(axis=1, how="all").to_string(index=False))
    if confirmed:
        print_confirmed(confirmed, objective)
    value, count = correlation
    if math.isfinite(value):
        print(f"\nHeld-out mutual information vs accuracy over {count} completed trials: Spearman {value:+.2f}")
