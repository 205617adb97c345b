import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from ray.tune import Result

from iic.config import IICConfig
from search.challenger import SeedFigures, margin, median_sd_ratio, start_ahead_of_noise
from search.confirmation import candidates_from_results, candidates_from_runs
from search.tracking.runs import ROLE_TAG, STATUS_TAG, TRIAL_TAG

START = IICConfig(dataset="digits", lr=0.003, lamb=1.3, epochs=45)
SEEDS = [11, 12]


def test_the_margin_comes_from_the_median_seed_sd_of_the_trials():
    start = SeedFigures(0.95, 0.03, 2)
    trials = [
        start,
        SeedFigures(0.96, 0.01, 2),
        SeedFigures(0.5, 0.3, 2),
    ]  # one config's seeds split: it does not set the margin
    found = margin(start, trials, standard_errors=2.0)
    # for two normal seeds the median sample sd is 0.674 of their sd
    assert median_sd_ratio(2) == pytest.approx(0.6745, abs=1e-4) and median_sd_ratio(5) == pytest.approx(
        0.916, abs=1e-3
    )
    assert found.trials == 3 and found.seed_sd == pytest.approx(0.03 / 0.6745, rel=1e-3)
    # two means of two seeds each: the sd of their difference is the seeds' sd x sqrt(2/2)
    assert found.value == pytest.approx(2 * found.seed_sd)
    assert "2 standard errors" in found.describe() and "median of 3 trials" in found.describe()
    assert margin(start, trials, standard_errors=0.0) is None  # switched off
    one_seed = SeedFigures(0.95, 0.0, 1)
    assert margin(one_seed, [one_seed, SeedFigures(0.99, 0.0, 1)], 2.0) is None  # no sd to estimate
    # the seed sd is estimated to within its noise: the margin over 12 trials of 2 seeds drawn with sd 0.02
    rng = np.random.default_rng(0)
    draws = [rng.normal(0.95, 0.02, size=(12, 2)) for _ in range(200)]
    estimates = [
        margin(start, [SeedFigures(d.mean(), d.std(ddof=1), 2) for d in trials12], 2.0).seed_sd for trials12 in draws
    ]
    assert np.median(estimates) == pytest.approx(0.02, rel=0.05) and np.percentile(estimates, 10) > 0.012


def test_the_start_config_goes_ahead_of_trials_within_the_noise_and_behind_those_beyond_it():
    sd = 0.02 * 0.6745  # the median sd of seeds whose sd is 0.02
    figures = {
        "start": SeedFigures(0.90, sd, 2),
        "lucky": SeedFigures(0.93, sd, 2),
        "better": SeedFigures(0.97, sd, 2),
        "worse": SeedFigures(0.80, sd, 2),
    }
    by_value = sorted(figures, key=lambda name: -figures[name].value)
    ranked, found = start_ahead_of_noise(by_value, "start", figures.get, 2.0, "max")
    assert found.value == pytest.approx(0.04, rel=1e-3)  # 2 x 0.02: "lucky" is 0.03 ahead, "better" 0.07
    assert ranked == ["better", "start", "lucky", "worse"]
    ranked, _ = start_ahead_of_noise(["lucky", "start", "worse"], "start", figures.get, 2.0, "max")
    assert ranked == ["start", "lucky", "worse"]
    assert start_ahead_of_noise(by_value, None, figures.get, 2.0, "max") == (
        by_value,
        None,
    )  # no start config: as ranked
    assert start_ahead_of_noise(by_value, "start", figures.get, 0.0, "max") == (by_value, None)
    # minimised objectives: ahead means lower
    low = {"start": SeedFigures(0.10, sd, 2), "lucky": SeedFigures(0.08, sd, 2), "better": SeedFigures(0.01, sd, 2)}
    assert start_ahead_of_noise(["better", "lucky", "start"], "start", low.get, 2.0, "min")[0] == [
        "better",
        "start",
        "lucky",
    ]


def _result(trial_id: str, config: IICConfig, accuracy: float, sd: float, epoch: int = 45) -> Result:
    """A trial's last result as Tune hands it back, on the search's two seeds."""
    metrics = {
        "trial_id": trial_id,
        "epoch": epoch,
        "status": "completed",
        "cluster_accuracy": accuracy,
        "cluster_accuracy_sd": sd,
        "config": {**config.to_dict(), "seeds": SEEDS},
    }
    return Result(metrics=metrics, checkpoint=None, error=None, path="")


def test_a_search_confirms_its_start_config_unless_a_trial_beats_it_by_more_than_the_noise():
    results = [
        _result("start", START, 0.850, 0.02),
        _result("lucky", START.with_overrides(["lr=0.0027"]), 0.860, 0.03),
        _result("short", START.with_overrides(["lamb=1.2"]), 0.70, 0.2, epoch=10),
    ]
    choice = candidates_from_results(results, "cluster_accuracy", {}, 2, start_config=START, challenger_margin=2.0)
    assert [c.trial_id for c in choice.candidates] == ["start", "lucky"]
    assert choice.start_trial_id == "start" and choice.best_trial_id == "lucky"
    assert choice.margin.trials == 3 and choice.margin.value == pytest.approx(2 * 0.03 / 0.6745, rel=1e-3)
    assert "trial lucky" in choice.note() and "trial start" in choice.note()
    # without the margin, or without knowing the start config, the plain ranking
    assert [c.trial_id for c in candidates_from_results(results, "cluster_accuracy", {}, 1, START, 0.0).candidates] == [
        "lucky"
    ]
    plain = candidates_from_results(results, "cluster_accuracy", {}, 1, None, 2.0)
    assert [c.trial_id for c in plain.candidates] == ["lucky"] and plain.note() is None
    # a trial far enough ahead is confirmed first
    results.append(_result("clear", START.with_overrides(["lamb=1.4"]), 0.99, 0.005))
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
    choice = candidates_from_runs(
        client, uri, runs, "cluster_accuracy", 1, start_trial_id="start", challenger_margin=2.0
    )
    assert [c.trial_id for c in choice.candidates] == ["start"] and choice.candidates[0].config == START
    assert choice.margin.seed_sd == pytest.approx(0.025 / 0.6745, rel=1e-3)
    assert [
        c.trial_id for c in candidates_from_runs(client, uri, runs, "cluster_accuracy", 1, None, 2.0).candidates
    ] == ["lucky"]
