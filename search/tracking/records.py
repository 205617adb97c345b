"""Reading a search's records back from MLflow: its experiment, its trial runs, their configs."""

import tempfile
from pathlib import Path

import mlflow.artifacts
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from iic.config import IICConfig
from search.driver import SearchError, check_tracking_uri
from search.objectives import OBJECTIVES
from search.ranking import best_first, counts
from search.tracking.runs import (
    SEARCH_ROLE,
    SEARCH_TAG,
    STATUS_TAG,
    TRIAL_ROLE,
    role_filter,
    search_run_filter,
)
from trainables.iic_trainable import SEEDS_KEY


class RecordsError(ValueError):
    """The records asked for are not there; the message says what is."""


def connect(tracking_uri: str) -> tuple[MlflowClient, str]:
    """A client of the store (sqlite path made absolute, server checked), and the URI it uses."""
    try:
        tracking_uri = check_tracking_uri(tracking_uri)
    except SearchError as err:
        raise RecordsError(str(err)) from None
    if tracking_uri.startswith("sqlite:///"):
        database = Path(tracking_uri.removeprefix("sqlite:///"))
        if not database.is_file():  # MLflow would create an empty one
            raise RecordsError(
                f"--tracking-uri {tracking_uri}: no MLflow database there; pass the --tracking-uri the search used"
            )
    return MlflowClient(tracking_uri), tracking_uri


def find_experiment_id(client: MlflowClient, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        known = sorted(e.name for e in client.search_experiments())
        raise RecordsError(f"--experiment {name}: no such experiment; known experiments: {', '.join(known) or 'none'}")
    return experiment.experiment_id


def trial_runs(client: MlflowClient, experiment_id: str, role: str = TRIAL_ROLE) -> list[Run]:
    """Every run of the experiment with this role (trial, confirm or search), all pages."""
    runs, page_token = [], None
    while True:
        page = client.search_runs([experiment_id], role_filter(role), max_results=1000, page_token=page_token)
        runs.extend(page)
        page_token = page.token
        if not page_token:
            return runs


def runs_of_search(runs: list[Run], experiment: str, search: str | None) -> list[Run]:
    if not runs:
        raise RecordsError(
            f"experiment {experiment!r} has no trial runs; run a search first (python search/run.py --experiment "
            f"{experiment})"
        )
    if search is None:
        return runs
    matching = [run for run in runs if run.data.tags.get(SEARCH_TAG) == search]
    if not matching:
        known = sorted({run.data.tags.get(SEARCH_TAG, "?") for run in runs})
        raise RecordsError(
            f"--search {search}: no trial runs of that search in {experiment!r}; its searches: {', '.join(known)}"
        )
    return matching


def objective_value(run: Run, objective: str) -> float | None:
    """The run's last objective value, None if the run does not count (see search.ranking)."""
    value = run.data.metrics.get(objective)
    return value if run.info.status == "FINISHED" and counts(run.data.tags.get(STATUS_TAG, ""), value) else None


def ranked_runs(runs: list[Run], objective: str) -> list[tuple[Run, float]]:
    """Runs that count with their objective value, best first (ties: the earlier run first)."""
    in_order = sorted(runs, key=lambda run: (run.info.start_time or 0, run.info.run_id))
    ranked = best_first(
        in_order,
        lambda run: objective_value(run, objective),
        lambda run: run.data.tags.get(STATUS_TAG, ""),
        OBJECTIVES[objective],
    )
    return [(run, objective_value(run, objective)) for run in ranked]


def retrainable_config(client: MlflowClient, tracking_uri: str, run: Run, objective: str) -> IICConfig:
    """The run's config.yaml with ``epochs`` = the last epoch it recorded the objective for (and
    its schedule up to that epoch)."""
    with tempfile.TemporaryDirectory() as folder:
        path = mlflow.artifacts.download_artifacts(
            run_id=run.info.run_id, artifact_path="config.yaml", dst_path=folder, tracking_uri=tracking_uri
        )
        config = IICConfig.from_yaml(path)
    epochs_run = max(metric.step for metric in client.get_metric_history(run.info.run_id, objective))
    return config.truncated(epochs_run)


def seeds_param(run: Run) -> list[str]:
    """The seeds a run trained on, as recorded in its params (``[1, 2]`` -> ["1", "2"])."""
    recorded = run.data.params.get(SEEDS_KEY) or run.data.params.get("seed", "")
    return [seed.strip() for seed in recorded.strip("[]").split(",") if seed.strip()]


def search_run(client: MlflowClient, experiment_id: str, search: str) -> Run:
    """The parent run of a search."""
    runs = client.search_runs([experiment_id], search_run_filter(search, SEARCH_ROLE), max_results=1)
    if not runs:
        raise RecordsError(f"search {search!r} has no parent run in this experiment; was it recorded by search/run.py?")
    return runs[0]


def only_search(runs: list[Run], experiment: str) -> str:
    """The name of the one search the runs belong to."""
    names = sorted({run.data.tags.get(SEARCH_TAG, "?") for run in runs})
    if len(names) > 1:
        raise RecordsError(
            f"experiment {experiment!r} holds several searches ({', '.join(names)}); choose one with --search"
        )
    return names[0]
