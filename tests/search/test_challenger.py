import math

import pytest
from mlflow.tracking import MlflowClient
from ray.tune import Result

from iic.config import IICConfig
from search.challenger import SeedFigures, margin, start_ahead_of_noise
from search.confirm import candidates_from_results, candidates_from_runs
from search.mlflow_runs import ROLE_TAG, STATUS_TAG, TRIAL_TAG

START = IICConfig(dataset="digits", lr=0.003, lamb=1.3, epochs=45)
SEEDS = [11, 12]


def test_the_margin_pools_the_seed_sd_of_the_trials_that_trained_as_long_as_the_start_config():
    start = SeedFigures(0.95, 0.03, 2, 45)
    trials = [start, SeedFigures(0.96, 0.01, 2, 45), SeedFigures(0.5, 0.4, 2, 10)]  # the last, stopped at 10, is left out
    found = margin(start, trials, standard_errors=2.0)
    pooled = math.sqrt((0.03**2 + 0.01**2) / 2)
    assert found.pooled_trials == 2 and found.pooled_sd == pytest.approx(pooled)
    # two means of two seeds each: the sd of their difference is the seeds' sd x sqrt(2/2)
    assert found.value == pytest.approx(2 * pooled)
    assert "2 standard errors" in found.describe() and "pooled over 2 trial(s)" in found.describe()
    assert margin(start, trials, standard_errors=0.0) is None  # switched off
    one_seed = SeedFigures(0.95, 0.0, 1, 45)
    assert margin(one_seed, [one_seed, SeedFigures(0.99, 0.0, 1, 45)], 2.0) is None  # no sd to pool


def test_the_start_config_goes_ahead_of_trials_within_the_noise_and_behind_those_beyond_it():
    figures = {"start": SeedFigures(0.90, 0.02, 2, 45), "lucky": SeedFigures(0.93, 0.02, 2, 45), "better": SeedFigures(0.97, 0.02, 2, 45),
               "worse": SeedFigures(0.80, 0.02, 2, 45)}
    by_value = sorted(figures, key=lambda name: -figures[name].value)
    ranked, found = start_ahead_of_noise(by_value, "start", figures.get, 2.0, "max")
    assert found.value == pytest.approx(0.04)  # 2 x 0.02: "lucky" is 0.03 ahead, "better" 0.07
    assert ranked == ["better", "start", "lucky", "worse"]
    ranked, _ = start_ahead_of_noise(["lucky", "start", "worse"], "start", figures.get, 2.0, "max")
    assert ranked == ["start", "lucky", "worse"]
    assert start_ahead_of_noise(by_value, None, figures.get, 2.0, "max") == (by_value, None)  # no start config: as ranked
    assert start_ahead_of_noise(by_value, "start", figures.get, 0.0, "max") == (by_value, None)
    # minimised objectives: ahead means lower
    low = {"start": SeedFigures(0.10, 0.02, 2, 45), "lucky": SeedFigures(0.08, 0.02, 2, 45), "better": SeedFigures(0.01, 0.02, 2, 45)}
    assert start_ahead_of_noise(["better", "lucky", "start"], "start", low.get, 2.0, "min")[0] == ["better", "start", "lucky"]


def _result(trial_id: str, config: IICConfig, accuracy: float, sd: float, epoch: int = 45) -> Result:
    metrics = {"trial_id": trial_id, "epoch": epoch, "status": "completed", "cluster_accuracy": accuracy, "cluster_accuracy_sd": sd,
               "config": {**config.to_dict(), "seeds": SEEDS}}
    return Result(metrics=metrics, checkpoint=None, error=None, path="")


def test_a_search_confirms_its_start_config_unless_a_trial_beats_it_by_more_than_the_noise():
    results = [_result("start", START, 0.930, 0.02), _result("lucky", START.with_overrides(["lr=0.0027"]), 0.936, 0.03),
               _result("short", START.with_overrides(["lamb=1.2"]), 0.70, 0.2, epoch=10)]
    choice = candidates_from_results(results, "cluster_accuracy", {}, 2, start_config=START, challenger_margin=2.0)
    assert [c.trial_id for c in choice.candidates] == ["start", "lucky"]
    assert choice.start_trial_id == "start" and choice.best_trial_id == "lucky"
    assert choice.margin.pooled_trials == 2  # the trial stopped at epoch 10 is not pooled
    assert "trial lucky" in choice.note() and "trial start" in choice.note()
    # without the margin, or without knowing the start config, the plain ranking
    assert [c.trial_id for c in candidates_from_results(results, "cluster_accuracy", {}, 1, START, 0.0).candidates] == ["lucky"]
    plain = candidates_from_results(results, "cluster_accuracy", {}, 1, None, 2.0)
    assert [c.trial_id for c in plain.candidates] == ["lucky"] and plain.note() is None
    # a trial far enough ahead is confirmed first
    results.append(_result("clear", START.with_overrides(["lamb=1.4"]), 0.995, 0.005))
    choice = candidates_from_results(results, "cluster_accuracy", {}, 1, START, 2.0)
    assert [c.trial_id for c in choice.candidates] == ["clear"] and choice.note() is None


def test_confirming_a_recorded_search_applies_the_same_margin_to_its_runs(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("recorded")
    runs = []
    for trial_id, lr, accuracy, sd in (("start", 0.003, 0.958, 0.02), ("lucky", 0.0027, 0.964, 0.03)):
        run = client.create_run(experiment_id, tags={TRIAL_TAG: trial_id, ROLE_TAG: "trial", STATUS_TAG: "completed"})
        client.log_param(run.info.run_id, "seeds", str(SEEDS))
        for name, value in (("cluster_accuracy", accuracy), ("cluster_accuracy_sd", sd), ("epoch", 45)):
            client.log_metric(run.info.run_id, name, value, step=45)
        config = tmp_path / trial_id / "config.yaml"
        START.with_overrides([f"lr={lr}"]).to_yaml(config)
        client.log_artifact(run.info.run_id, str(config))
        client.set_terminated(run.info.run_id)
        runs.append(client.get_run(run.info.run_id))
    choice = candidates_from_runs(client, uri, runs, "cluster_accuracy", 1, start_trial_id="start", challenger_margin=2.0)
    assert [c.trial_id for c in choice.candidates] == ["start"] and choice.candidates[0].config == START
    assert choice.margin.pooled_sd == pytest.approx(math.sqrt((0.02**2 + 0.03**2) / 2))
    assert [c.trial_id for c in candidates_from_runs(client, uri, runs, "cluster_accuracy", 1, None, 2.0).candidates] == ["lucky"]
