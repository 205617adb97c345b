"""Population-based training end to end: python search/run.py --scheduler pbt on a real local Ray,
a real MLflow SQLite store, then export and python -m iic.train replaying an exploited trial."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from iic.config import IICConfig
from iic.train import main as train_main
from search.export import export_best
from search.run import main
from search.mlflow_runs import ROLE_TAG, STATUS_TAG, TRIAL_TAG

ROOT = Path(__file__).resolve().parents[2]

TINY = ["--set", "max_samples=200", "--set", "backbone_width=4", "--epochs", "3", "--seeds-per-trial", "1", "--confirm-top", "0"]


@pytest.fixture
def eager_preset(tmp_path) -> list[str]:
    """The digits preset with a perturbation point after every epoch: synchronous PBT then gives the
    weakest of the four trials the best one's checkpoint after epochs 1 and 2."""
    preset = yaml.safe_load((ROOT / "search" / "presets" / "digits.yaml").read_text())
    preset["pbt"]["perturbation_interval"] = 1
    preset["search"]["time_budget_s"] = None
    path = tmp_path / "digits.yaml"  # same stem: the experiment stays iic-digits
    path.write_text(yaml.safe_dump(preset))
    return ["--config", str(path)]


def _args(tmp_path, *extra):
    return ["--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--storage-path", str(tmp_path / "ray"), *TINY, *extra]


@pytest.fixture
def state_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("IIC_STATE_DIR", str(tmp_path / "state"))


@pytest.mark.slow
def test_pbt_search_records_schedules_that_export_replays(ray_session, tmp_path, state_dir, eager_preset, capsys):
    assert main(_args(tmp_path, *eager_preset, "--scheduler", "pbt", "--population", "4", "--cpus-per-trial", "0.5", "--seed", "3")) == 0
    assert "population-based training of 4 trials" in capsys.readouterr().out
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("iic-digits")
    trials = [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get(ROLE_TAG) == "trial"]
    trial_ids = {run.data.tags[TRIAL_TAG] for run in trials}
    assert len(trials) == len(trial_ids) == 4  # one run per trial, however often PBT paused and restarted it
    for run in trials:
        assert run.info.status == "FINISHED" and run.data.tags[STATUS_TAG] == "completed"
        assert run.data.params["pbt"] == "True"
        for name in IICConfig.SCHEDULABLE_FIELDS:  # the values in force, every epoch once, step = epoch
            assert sorted(m.step for m in client.get_metric_history(run.info.run_id, f"schedule.{name}")) == [1, 2, 3], name
    # PBT gave the weakest trial the best one's checkpoint: its tags say whose and after which epoch
    exploited = [run for run in trials if "iic.exploited_from" in run.data.tags]
    assert exploited, "no trial took over another's checkpoint"
    for run in exploited:
        assert run.data.tags["iic.exploited_from"] in trial_ids - {run.data.tags[TRIAL_TAG]}
        assert 1 <= int(run.data.tags["iic.exploit_epoch"]) < 3
    # the exported config of an exploited trial carries its whole schedule, and retrains to its figure
    run = exploited[0]
    paths = export_best(f"sqlite:///{tmp_path}/mlflow.db", "iic-digits", top=4, out=tmp_path / "best")
    [path] = [p for p in paths if p.stem.endswith(run.data.tags[TRIAL_TAG])]
    config = IICConfig.from_yaml(path)
    assert config.epochs == 3 and config.schedule, "an exploited trial's schedule changes after its first epoch"
    history = {name: {m.step: m.value for m in client.get_metric_history(run.info.run_id, f"schedule.{name}")} for name in ("lr", "lamb")}
    assert config.values_at(3)["lr"] == history["lr"][3] and config.values_at(3)["lamb"] == history["lamb"][3]
    seeds = json.loads(run.data.params["seeds"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the trial trained (half a CPU: one thread): the same sums in the same order
    try:
        assert train_main(["--config", str(path), "--seeds", *map(str, seeds), "--out", str(tmp_path / "replay")]) == 0
    finally:
        torch.set_num_threads(threads)
    replayed = json.loads((tmp_path / "replay" / "metrics.json").read_text())
    assert replayed["epochs"] == 3
    assert replayed["cluster_accuracy"] == pytest.approx(run.data.metrics["cluster_accuracy"], abs=1e-6)
    assert replayed["loss"] == pytest.approx(run.data.metrics["loss"], abs=1e-5)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--scheduler", "pbt", "--num-samples", "8"], "--num-samples: under --scheduler pbt the trials are the population; give --population instead"),
        (["--population", "4"], "--population: only population-based training has one; add --scheduler pbt"),
        (["--scheduler", "pbt", "--population", "1"], "pbt.population: a population needs at least 2 trials"),
        (["--scheduler", "pbt", "--set", "schedule=[{epoch: 2, values: {hue: 0.1}}]"], "config.schedule: under PBT every trial's schedule"),
    ],
)
def test_bad_pbt_input_fails_fast_with_a_clear_message(ray_session, tmp_path, state_dir, capsys, extra, message):
    assert main(_args(tmp_path, *extra)) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "ray").exists()  # no trial started


def test_warm_start_and_pbt_are_refused_together(ray_session, tmp_path, state_dir, capsys):
    warm = tmp_path / "warm"
    IICConfig().to_yaml(warm / "rank01.yaml")
    assert main(_args(tmp_path, "--scheduler", "pbt", "--warm-start", str(warm))) == 2
    assert "--warm-start: its configs seed Optuna's TPE, which PBT does not use" in capsys.readouterr().err


@pytest.mark.skip(reason="racy: whether the population stalls depends on which trial Ray starts first; failed 3 of 6 runs on 2026-11-27 (see issue 11's note)")
def test_a_population_waiting_for_a_trial_that_ended_early_ends_the_search(ray_session, tmp_path, tiny_config, capsys):
    # The short trial (one epoch, eight times the work of an epoch of the other) ends after the long one has paused
    # at the perturbation point to wait for it: synchronous PBT alone would wait for ever.
    from ray import tune
    from ray.tune.schedulers import PopulationBasedTraining

    from search.run import StalledPopulation
    from trainables.iic_trainable import PBT_KEY, TrialSettings, train_iic

    def attempt(number: int) -> tuple[dict, str]:
        stalled = StalledPopulation(patience_s=5)
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(train_iic, settings=TrialSettings(collapse_share=1.1)), {"cpu": 1}),
            param_space={**tiny_config.to_dict(), PBT_KEY: True, "epochs": tune.grid_search([3, 1]),
                         "repeats": tune.sample_from(lambda config: 1 if config["epochs"] == 3 else 8)},
            tune_config=tune.TuneConfig(scheduler=PopulationBasedTraining(
                time_attr="training_iteration", perturbation_interval=1, hyperparam_mutations={"lr": [1e-3, 3e-3]}, synch=True),
                metric="cluster_accuracy", mode="max"),
            run_config=tune.RunConfig(name=f"stalled{number}", storage_path=str(tmp_path), stop=stalled, callbacks=[stalled], verbose=0),
        )
        return {result.config["epochs"]: result for result in tuner.fit()}, capsys.readouterr().err

    # Which trial gets its worker first is up to Ray: when the short one ends before the long one
    # has reached the perturbation point, nothing waits and nothing is to be stopped; try again.
    for number in range(3):
        results, printed = attempt(number)
        if list(results[3].metrics_dataframe["epoch"]) != [1, 2, 3]:
            break
    assert "every trial of the population has waited 5 s for one that ended early" in printed
    assert list(results[1].metrics_dataframe["status"]) == ["completed"]
    assert list(results[3].metrics_dataframe["epoch"]) == [1]  # it waited at the perturbation point until the search ended


def test_configs_with_gates_and_schedules_pass_through_tunes_variant_generator_unchanged(ray_session, tmp_path):
    # The PBT population (nested gates) and confirmation points (schedules) start as Tune's points.
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from search.confirm import space_of
    from search.space import Preset
    from trainables.iic_trainable import trial_config_values, trial_iic_config

    preset = Preset.load("digits")
    points = preset.population(seeds=[1, 2], seed=0)[:2]
    points[0]["gate"]["overclustering"], points[1]["gate"]["overclustering"] = True, False
    schedules = [[{"epoch": 2, "values": {"lr": 1e-3}}], [{"epoch": 3, "values": {"lr": 2e-3, "hue": 0.1}}, {"epoch": 4, "values": {"lamb": 1.0}}]]
    points += [{**points[0], **trial_config_values(trial_iic_config(points[0]).replace(schedule=schedule))} for schedule in schedules]
    tuner = tune.Tuner(
        lambda config: tune.report({"done": 1}),
        param_space=space_of(points),
        tune_config=tune.TuneConfig(search_alg=BasicVariantGenerator(points_to_evaluate=points), num_samples=len(points)),
        run_config=tune.RunConfig(name="points", storage_path=str(tmp_path), verbose=0),
    )
    configs = sorted((result.config for result in tuner.fit()), key=lambda config: json.dumps(config, sort_keys=True))
    assert configs == sorted(points, key=lambda config: json.dumps(config, sort_keys=True))
    assert [trial_iic_config(point).schedule for point in points[2:]] == schedules
