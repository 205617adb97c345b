"""The end of a search: the best trials as a table, the parent run's summary, where to look."""

import json
import math
import tempfile
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import optuna
import pandas as pd
from matplotlib import pyplot as plt
from mlflow.tracking import MlflowClient

from search.space import OBJECTIVES, Preset
from trainables.iic_trainable import trial_iic_config

TABLE_PARAMS = ("lr", "batch_size", "lamb", "repeats", "sobel", "overcluster_k", "crop_min_scale", "rotation_degrees")


def trial_table(results, objective: str) -> pd.DataFrame:
    """One row per trial: its last reported metrics, status and main settings, best first."""
    rows = []
    for result in results:
        metrics = result.metrics or {}
        config = trial_iic_config(result.config).to_dict() if result.config else {}
        status = "error" if result.error else metrics.get("status", "pending")
        rows.append({
            "trial_id": metrics.get("trial_id", Path(str(result.path)).name),
            objective: metrics.get(objective, math.nan),
            "cluster_accuracy": metrics.get("cluster_accuracy", math.nan),
            "nmi": metrics.get("nmi", math.nan),
            "largest_cluster_share": metrics.get("largest_cluster_share", math.nan),
            "epochs": metrics.get("epoch", 0),
            "status": "early_stopped" if status == "running" else status,
            **{name: config.get(name) for name in TABLE_PARAMS},
        })
    table = pd.DataFrame(rows)  # with objective cluster_accuracy the two keys are one column
    return table.sort_values(objective, ascending=OBJECTIVES[objective] == "min", na_position="last").reset_index(drop=True)


def optuna_study(results, preset: Preset, objective: str) -> optuna.Study:
    """The search's trials as an Optuna study (for its plots), rebuilt from what Tune recorded."""
    space = preset.space()
    distributions = space.distributions()
    study = optuna.create_study(direction="maximize" if OBJECTIVES[objective] == "max" else "minimize")
    for result in results:
        value = (result.metrics or {}).get(objective)
        if value is None or not math.isfinite(value):
            continue
        params = space.point(trial_iic_config(result.config).to_dict())
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions={k: distributions[k] for k in params}, value=value,
        ))
    return study


def save_optuna_plots(study: optuna.Study, folder: Path) -> list[Path]:
    plots = []
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name, draw in (("optuna_history.png", optuna.visualization.matplotlib.plot_optimization_history),
                       ("optuna_importance.png", optuna.visualization.matplotlib.plot_param_importances)):
        if len(study.trials) < 2:
            break
        try:
            with warnings.catch_warnings():  # "experimental" and small-sample notes: not for the user
                warnings.simplefilter("ignore")
                axes = draw(study)
        except (ValueError, RuntimeError):  # e.g. importances when no parameter varied
            continue
        axes.figure.set_size_inches(8, 5)
        axes.figure.tight_layout()
        axes.figure.savefig(folder / name, dpi=90)
        plt.close(axes.figure)
        plots.append(folder / name)
    return plots


def ui_hint(tracking_uri: str, experiment_id: str) -> tuple[str, str]:
    """The command that serves the MLflow UI, and the address of the experiment's runs page (MLflow
    3.17's UI otherwise opens on its GenAI overview)."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"(server already running at {tracking_uri})", f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs"
    return (f"mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port 5000",
            f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs")


def summarise(results, preset: Preset, tracking_uri: str, experiment_id: str, parent_run_id: str, name: str,
              report_path: Path, top: int = 5) -> pd.DataFrame:
    objective = preset.search.objective
    table = trial_table(results, objective)
    failures = json.loads(Path(report_path).read_text())["failures"] if Path(report_path).is_file() else []
    client = MlflowClient(tracking_uri)
    try:
        with tempfile.TemporaryDirectory() as folder:
            folder = Path(folder)
            table.to_csv(folder / "trials.csv", index=False)
            files = [folder / "trials.csv", *save_optuna_plots(optuna_study(results, preset, objective), folder)]
            best = table.iloc[0] if len(table) and math.isfinite(table.iloc[0][objective]) else None
            if best is not None:
                best_result = next(r for r in results if (r.metrics or {}).get("trial_id") == best["trial_id"])
                trial_iic_config(best_result.config).to_yaml(folder / "best_config.yaml")
                files.append(folder / "best_config.yaml")
                client.set_tag(parent_run_id, "iic.best_trial_id", str(best["trial_id"]))
                client.log_metric(parent_run_id, f"best_{objective}", float(best[objective]))
            client.log_metric(parent_run_id, "trials", len(table))
            for path in files:
                client.log_artifact(parent_run_id, str(path))
            client.set_terminated(parent_run_id, "FINISHED")
    except Exception as err:  # noqa: BLE001 - the trials are done; say what could not be recorded
        failures.append(f"search: could not record the summary in the parent run: {type(err).__name__}: {str(err).splitlines()[0][:200]}")

    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.3f}".format):
        print(f"\nBest {min(top, len(table))} of {len(table)} trials by {objective} ({name}):")
        print(table.head(top).to_string(index=False))
    command, address = ui_hint(tracking_uri, experiment_id)
    print(f"\nMLflow: {command}\n        then open {address}")
    if failures:
        print(f"\nMLflow could not record {len(failures)} item(s); the trials themselves ran:")
        for line in failures:
            print(f"  - {line}")
    return table
