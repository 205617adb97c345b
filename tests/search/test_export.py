"""search/export.py against a real MLflow store holding really trained tiny trials, laid out as
search.tracking.logger.MLflowTrialLogger lays them out."""

import csv
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from iic.config import IICConfig
from iic.train import main as train_main
from iic.trainer import train
from search.best_configs import export_best
from search.confirmation import CONFIRMED_FIGURES
from search.export import main as export_main
from search.tracking.runs import (
    CONFIRMS_TAG,
    ROLE_TAG,
    SEARCH_TAG,
    STATUS_TAG,
    TRIAL_TAG,
    flat_params,
    logged_metric_names,
)
from trainables.iic_trainable import SEEDS_KEY

SUMMARY_COLUMNS = [
    "rank",
    "file",
    "run_id",
    "trial_id",
    "search",
    "cluster_accuracy",
    "nmi",
    "largest_cluster_share",
    "search_seeds",
    *(f"confirmed_{name}" for name in CONFIRMED_FIGURES),
    "confirm_seeds",
    "epochs",
    "lr",
    "batch_size",
    "lamb",
    "repeats",
    "sobel",
    "overcluster_k",
]
_HISTORIES: dict[str, list[dict]] = {}


def trained_history(config: IICConfig) -> list[dict]:
    """The per-epoch metrics of really training ``config`` (each distinct config trains once)."""
    key = json.dumps(config.to_dict(), sort_keys=True)
    if key not in _HISTORIES:
        _HISTORIES[key] = train(config).history
    return _HISTORIES[key]


@dataclass
class Store:
    uri: str
    client: MlflowClient
    experiment: str
    experiment_id: str

    def log(
        self,
        config: IICConfig,
        history: list[dict],
        trial_id: str,
        search: str = "s1",
        status: str = "completed",
        run_status: str = "FINISHED",
        role: str = "trial",
        seeds: list[int] | None = None,
        confirms: str | None = None,
    ) -> str:
        """One trial run: tags, params, every epoch's metrics at step = epoch, config.yaml, final status."""
        tags = {
            SEARCH_TAG: search,
            TRIAL_TAG: trial_id,
            ROLE_TAG: role,
            STATUS_TAG: "running",
            **({CONFIRMS_TAG: confirms} if confirms else {}),
        }
        run_id = self.client.create_run(self.experiment_id, run_name=trial_id, tags=tags).info.run_id
        params = flat_params({**config.to_dict(), SEEDS_KEY: seeds or [config.seed]})
        self.client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
        now = int(time.time() * 1000)
        for metrics in history:
            self.client.log_batch(
                run_id,
                metrics=[
                    Metric(key, float(metrics[key]), now, metrics["epoch"])
                    for key in logged_metric_names(metrics)
                    if key in metrics
                ],
            )
        with tempfile.TemporaryDirectory() as folder:
            self.client.log_artifact(run_id, str(config.to_yaml(Path(folder) / "config.yaml")))
        self.client.set_tag(run_id, STATUS_TAG, status)
        self.client.set_terminated(run_id, run_status)
        return run_id


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory) -> str:
    # One database for the module (creating one takes seconds); each test gets its own experiment.
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


@pytest.fixture
def store(tracking_uri, tmp_path) -> Store:
    client = MlflowClient(tracking_uri)
    name = f"iic-{tmp_path.name}"
    experiment_id = client.create_experiment(name, artifact_location=(tmp_path / "artifacts").as_uri())
    return Store(tracking_uri, client, name, experiment_id)


def read_summary(out: Path) -> list[dict]:
    with open(out / "summary.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_ranks_distinct_finished_trials_and_writes_the_top_k(store, tiny_config, tmp_path):
    configs = {"a": tiny_config, "b": tiny_config.replace(lr=1e-3), "c": tiny_config.replace(seed=1)}
    histories = {name: trained_history(config) for name, config in configs.items()}
    for name, config in configs.items():
        store.log(config, histories[name], trial_id=name)
    store.log(configs["a"], histories["a"], trial_id="a_dup")  # the same config under a second run
    # Runs that must not count, each recording a perfect accuracy that would otherwise rank first.
    perfect = [{**metrics, "cluster_accuracy": 1.0} for metrics in histories["a"]]
    store.log(tiny_config.replace(seed=7), perfect, trial_id="failed", run_status="FAILED")
    store.log(tiny_config.replace(seed=8), perfect, trial_id="diverged", status="diverged")
    store.log(tiny_config.replace(seed=9), perfect, trial_id="errored", status="error")
    store.log(tiny_config.replace(seed=12), perfect, trial_id="collapsed", status="collapsed")
    store.log(tiny_config.replace(seed=13), perfect, trial_id="lost", status="lost_with_driver", run_status="KILLED")
    store.log(tiny_config.replace(seed=10), perfect, trial_id="other_search", search="s2")
    store.log(tiny_config.replace(seed=11), perfect, trial_id="parent", role="search")

    out = tmp_path / "best"
    paths = export_best(store.uri, store.experiment, top=5, out=out, search="s1")

    rows = read_summary(out)
    assert list(rows[0]) == SUMMARY_COLUMNS
    trial_ids = [row["trial_id"] for row in rows]
    assert len(rows) == len(paths) == 3  # three distinct configs, however large --top
    assert sorted(trial_id.removesuffix("_dup") for trial_id in trial_ids) == ["a", "b", "c"]
    recorded = sorted((history[-1]["cluster_accuracy"] for history in histories.values()), reverse=True)
    assert [float(row["cluster_accuracy"]) for row in rows] == pytest.approx(recorded, abs=1e-12)
    assert [path.name for path in paths] == [f"rank{i:02d}_{trial_id}.yaml" for i, trial_id in enumerate(trial_ids, 1)]
    assert [row["file"] for row in rows] == [path.name for path in paths]
    for path, trial_id in zip(paths, trial_ids, strict=True):
        assert IICConfig.from_yaml(path) == configs[trial_id.removesuffix("_dup")]
    assert [row["epochs"] for row in rows] == ["2", "2", "2"]
    assert {row["lr"] for row in rows} == {str(tiny_config.lr), "0.001"}
    assert {row["search"] for row in rows} == {"s1"}

    markdown = (out / "summary.md").read_text().splitlines()
    assert markdown[0] == "| " + " | ".join(SUMMARY_COLUMNS) + " |"
    assert len(markdown) == 2 + 3 and all(path.name in "".join(markdown) for path in paths)

    # A second, smaller export into the same folder replaces the first one's files.
    paths = export_best(store.uri, store.experiment, top=2, out=out, search="s1", objective="mutual_information")
    assert sorted(out.glob("rank*.yaml")) == sorted(paths) and len(paths) == 2
    information = [float(row["mutual_information"]) for row in read_summary(out)]
    assert information == sorted(information, reverse=True)


def test_configs_confirmed_on_fresh_seeds_rank_by_their_confirmed_mean(store, tiny_config, tmp_path):
    configs = {"a": tiny_config, "b": tiny_config.replace(lr=1e-3), "c": tiny_config.replace(lr=2e-3)}
    for name, config in configs.items():
        store.log(config, trained_history(config), trial_id=name, seeds=[5, 6])
    search_order = [
        row["trial_id"]
        for row in read_summary_of(export_best(store.uri, store.experiment, top=3, out=tmp_path / "before"))
    ]
    worst, best = search_order[0], search_order[-1]  # confirmation turns the search's order round
    for trial_id, mean in ((worst, 0.2), (best, 0.9)):
        final = {
            "epoch": 2,
            "cluster_accuracy": mean,
            "cluster_accuracy_min": mean - 0.1,
            "cluster_accuracy_sd": 0.05,
            "label_free_pick_accuracy": mean + 0.02,
            "mutual_information": 1.0,
            "nmi": 0.5,
        }
        store.log(
            configs[trial_id],
            [final],
            trial_id=f"confirm_{trial_id}",
            role="confirm",
            seeds=[71, 72, 73],
            confirms=trial_id,
        )

    paths = export_best(store.uri, store.experiment, top=3, out=tmp_path / "best")
    rows = read_summary(tmp_path / "best")
    middle = next(t for t in search_order if t not in (worst, best))
    assert [row["trial_id"] for row in rows] == [best, worst, middle]  # confirmed first, by confirmed mean
    assert float(rows[0]["confirmed_cluster_accuracy"]) == 0.9 and rows[0]["confirm_seeds"] == "71 72 73"
    assert rows[0]["search_seeds"] == "5 6" and rows[2]["confirmed_cluster_accuracy"] == ""
    header = paths[0].read_text().split("\n")
    assert (
        "confirmed on seeds it was not chosen with (71 72 73): cluster_accuracy mean 0.9000, min 0.8000"
        in "\n".join(header)
    )
    assert "label-free pick 0.9200\n" in "\n".join(header) and "consensus" not in "\n".join(header)
    assert not any("consensus" in name for name in rows[0])
    assert "--seeds 5 6" in header[2] and IICConfig.from_yaml(paths[0]) == configs[best]
    assert "not confirmed on other seeds" in paths[2].read_text()


def read_summary_of(paths: list[Path]) -> list[dict]:
    return read_summary(paths[0].parent)


def test_best_config_retrains_to_the_recorded_accuracy(store, tiny_config, tmp_path):
    for name, config in {"a": tiny_config, "b": tiny_config.replace(lr=1e-3)}.items():
        store.log(config, trained_history(config), trial_id=name)
    [best] = export_best(store.uri, store.experiment, top=1, out=tmp_path / "best")
    [row] = read_summary(tmp_path / "best")

    assert train_main(["--config", str(best), "--out", str(tmp_path / "retrain")]) == 0
    retrained = json.loads((tmp_path / "retrain" / "metrics.json").read_text())
    assert retrained["epochs"] == 2
    assert retrained["cluster_accuracy"] == pytest.approx(float(row["cluster_accuracy"]), abs=0.01)


def test_epochs_are_those_the_trial_ran(store, tiny_config, tmp_path):
    history = trained_history(tiny_config)
    store.log(tiny_config, history, trial_id="full")
    store.log(tiny_config, history[:1], trial_id="stopped")  # e.g. stopped by ASHA after epoch 1
    paths = export_best(store.uri, store.experiment, top=5, out=tmp_path / "best")

    exported = {path.stem.split("_", 1)[1]: IICConfig.from_yaml(path) for path in paths}
    assert exported == {"full": tiny_config, "stopped": tiny_config.replace(epochs=1)}
    stopped = next(path for path in paths if path.stem.endswith("_stopped"))
    assert train_main(["--config", str(stopped), "--out", str(tmp_path / "retrain")]) == 0
    retrained = json.loads((tmp_path / "retrain" / "metrics.json").read_text())
    assert retrained["epochs"] == 1
    assert retrained["cluster_accuracy"] == pytest.approx(history[0]["cluster_accuracy"], abs=0.01)


BAD_INPUTS = {
    "unknown_experiment": ({"--experiment": "nope"}, "known experiments: "),
    "no_trial_runs": ({}, "has no trial runs"),
    "unknown_search": ({"--search": "nope"}, "its searches: s1"),
    "top_zero": ({"--top": "0"}, "--top must be at least 1"),
    "missing_database": ({"--tracking-uri": "sqlite:///{tmp_path}/missing.db"}, "no MLflow database there"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_inputs_exit_2_and_write_nothing(case, store, tiny_config, tmp_path, capsys):
    store.log(
        tiny_config, trained_history(tiny_config), trial_id="t", role="search" if case == "no_trial_runs" else "trial"
    )
    changes, expected = BAD_INPUTS[case]
    out = tmp_path / "best"
    arguments = {"--tracking-uri": store.uri, "--experiment": store.experiment, "--top": "3", "--out": str(out)}
    arguments.update({flag: value.format(tmp_path=tmp_path) for flag, value in changes.items()})

    assert export_main([item for pair in arguments.items() for item in pair]) == 2
    error = capsys.readouterr().err
    assert expected in error and len(error.strip().splitlines()) == 1
    if case == "unknown_experiment":
        assert store.experiment in error
    assert not out.exists() and not (tmp_path / "missing.db").exists()


def test_a_scheduled_trial_exports_its_schedule_up_to_the_epochs_it_ran(store, tiny_config, tmp_path):
    scheduled = tiny_config.replace(
        epochs=3, schedule=[{"epoch": 2, "values": {"lr": 1e-3}}, {"epoch": 3, "values": {"brightness": 0.0}}]
    )
    ran = scheduled.truncated(2)  # stopped after epoch 2 (the time budget, say): the change due at epoch 3 never came
    store.log(scheduled, trained_history(ran), trial_id="pbt")
    [path] = export_best(store.uri, store.experiment, top=1, out=tmp_path / "best")
    assert IICConfig.from_yaml(path) == ran and ran.schedule == scheduled.schedule[:1]
