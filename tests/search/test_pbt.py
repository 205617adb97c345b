"""Population-based training end to end: python search/run.py --scheduler pbt on a real local Ray,
a real MLflow SQLite store, then export and python -m iic.train replaying an exploited trial."""

import json
import tempfile
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune.schedulers import PopulationBasedTraining

from iic.config import IICConfig
from iic.screening import initialisations
from search.best_configs import export_best
from search.run import main
from search.tracking.runs import ROLE_TAG, STATUS_TAG, TRIAL_TAG
from search.tuning import StalledPopulation
from tests.search import flags

TINY = [*flags.TINY, "--epochs", "3"]


def _args(tmp_path, *extra):
    return ["--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--storage-path", str(tmp_path / "ray"), *TINY, *extra]


@pytest.fixture
def state_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("IIC_STATE_DIR", str(tmp_path / "state"))


@pytest.mark.slow
def test_pbt_search_records_schedules_that_export_replays(
    ray_session, tmp_path, state_dir, eager_preset, capsys, replay
):
    # Each seed screens two initialisations until epoch 2: a trial may take over a checkpoint saved
    # while screening (epoch 1) or after the pick (epoch 2), and its export still replays.
    screening = ["--set", "screen_inits=2", "--set", "screen_epochs=2"]
    assert (
        main(
            _args(
                tmp_path,
                *eager_preset,
                *screening,
                "--scheduler",
                "pbt",
                "--population",
                "4",
                "--cpus-per-trial",
                "0.5",
                "--seed",
                "3",
            )
        )
        == 0
    )
    assert "population-based training of 4 trials" in capsys.readouterr().out
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("iic-digits")
    trials = [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get(ROLE_TAG) == "trial"]
    trial_ids = {run.data.tags[TRIAL_TAG] for run in trials}
    assert len(trials) == len(trial_ids) == 4  # one run per trial, however often PBT paused and restarted it
    for run in trials:
        assert run.info.status == "FINISHED" and run.data.tags[STATUS_TAG] == "completed"
        assert run.data.params["pbt"] == "True"
        [candidates] = initialisations(json.loads(run.data.params["seeds"]), 2)
        assert (
            int(run.data.tags["iic.init_seed"]) in candidates
        )  # the initialisation kept, its own or an exploited one's
        for name in IICConfig.SCHEDULABLE_FIELDS:  # the values in force, every epoch once, step = epoch
            assert sorted(m.step for m in client.get_metric_history(run.info.run_id, f"schedule.{name}")) == [
                1,
                2,
                3,
            ], name
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
    assert (config.screen_inits, config.screen_epochs) == (2, 2)
    history = {
        name: {m.step: m.value for m in client.get_metric_history(run.info.run_id, f"schedule.{name}")}
        for name in ("lr", "lamb")
    }
    assert config.values_at(3)["lr"] == history["lr"][3] and config.values_at(3)["lamb"] == history["lamb"][3]
    seeds = json.loads(run.data.params["seeds"])
    replayed = replay(path, seeds, threads=1, out=tmp_path / "replay")  # half a CPU: one thread
    assert replayed["epochs"] == 3
    assert replayed["cluster_accuracy"] == pytest.approx(run.data.metrics["cluster_accuracy"], abs=1e-6)
    assert replayed["loss"] == pytest.approx(run.data.metrics["loss"], abs=1e-5)


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["--scheduler", "pbt", "--num-samples", "8"],
            "--num-samples: under --scheduler pbt the trials are the population; give --population instead",
        ),
        (["--population", "4"], "--population: only population-based training has one; add --scheduler pbt"),
        (["--scheduler", "pbt", "--population", "1"], "pbt.population: a population needs at least 2 trials"),
        (
            ["--scheduler", "pbt", "--set", "schedule=[{epoch: 2, values: {hue: 0.1}}]"],
            "config.schedule: under PBT every trial's schedule",
        ),
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


class _MarkWhenPaused(tune.Callback):
    """Touches a file once the trial of role ``long`` is paused: what the short trial waits for."""

    def __init__(self, marker: Path):
        self.marker = marker

    def on_step_end(self, iteration, trials, **info):
        if any(trial.config["role"] == "long" and trial.status == trial.PAUSED for trial in trials):
            self.marker.touch()


@pytest.mark.slow
def test_a_population_waiting_for_a_trial_that_ended_early_ends_the_search(ray_session, tmp_path, capsys):
    # The short trial ends (a final status: the stopper ends it) only once the long one waits for it at the
    # perturbation point: synchronous PBT alone would wait for ever; StalledPopulation ends the search.
    def long_or_short_trial(config):
        """``long`` reports epoch 1 of 3 (with a checkpoint, as PBT pauses it there); ``short`` waits until
        ``long`` is paused at the perturbation point, then reports its one and final epoch. (Defined
        here: Ray's workers unpickle it by value, they cannot import a test module.)"""
        if config["role"] == "short":
            waited = 0.0
            while not Path(config["marker"]).exists():
                assert waited < 120, "the long trial was never paused"
                time.sleep(0.2)
                waited += 0.2
            tune.report({"epoch": 1, "status": "completed", "cluster_accuracy": 0.5})
            return
        for epoch in range(1, 4):
            with tempfile.TemporaryDirectory() as folder:
                (Path(folder) / "epoch").write_text(str(epoch))
                tune.report(
                    {"epoch": epoch, "status": "running", "cluster_accuracy": 0.1},
                    checkpoint=tune.Checkpoint.from_directory(folder),
                )

    stalled = StalledPopulation(patience_s=5)
    marker = tmp_path / "long-is-paused"
    tuner = tune.Tuner(
        tune.with_resources(long_or_short_trial, {"cpu": 1}),
        param_space={"role": tune.grid_search(["long", "short"]), "marker": str(marker), "lr": 1e-3},
        tune_config=tune.TuneConfig(
            scheduler=PopulationBasedTraining(
                time_attr="training_iteration",
                perturbation_interval=1,
                hyperparam_mutations={"lr": [1e-3, 3e-3]},
                synch=True,
            ),
            metric="cluster_accuracy",
            mode="max",
            time_budget_s=120,
        ),  # without the guard: fail, not hang
        run_config=tune.RunConfig(
            name="stalled",
            storage_path=str(tmp_path),
            stop=stalled,
            callbacks=[stalled, _MarkWhenPaused(marker)],
            verbose=0,
        ),
    )
    results = {result.config["role"]: result for result in tuner.fit()}
    assert "every trial of the population has waited 5 s for one that ended early" in capsys.readouterr().err
    assert list(results["short"].metrics_dataframe["status"]) == ["completed"]
    assert list(results["long"].metrics_dataframe["epoch"]) == [
        1
    ]  # it waited at the perturbation point until the search ended


def test_configs_with_gates_and_schedules_pass_through_tunes_variant_generator_unchanged(ray_session, tmp_path):
    # The PBT population (nested gates) and confirmation points (schedules) start as Tune's points.
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from search.driver import space_of
    from search.preset import Preset
    from search.space import population
    from trainables.iic_trainable import trial_config_values, trial_iic_config

    preset = Preset.load("digits")
    points = population(preset, seeds=[1, 2], seed=0)[:2]
    points[0]["gate"]["overclustering"], points[1]["gate"]["overclustering"] = True, False
    schedules = [
        [{"epoch": 2, "values": {"lr": 1e-3}}],
        [{"epoch": 3, "values": {"lr": 2e-3, "hue": 0.1}}, {"epoch": 4, "values": {"lamb": 1.0}}],
    ]
    points += [
        {**points[0], **trial_config_values(trial_iic_config(points[0]).replace(schedule=schedule))}
        for schedule in schedules
    ]
    tuner = tune.Tuner(
        lambda config: tune.report({"done": 1}),
        param_space=space_of(points),
        tune_config=tune.TuneConfig(
            search_alg=BasicVariantGenerator(points_to_evaluate=points), num_samples=len(points)
        ),
        run_config=tune.RunConfig(name="points", storage_path=str(tmp_path), verbose=0),
    )
    configs = sorted((result.config for result in tuner.fit()), key=lambda config: json.dumps(config, sort_keys=True))
    assert configs == sorted(points, key=lambda config: json.dumps(config, sort_keys=True))
    assert [trial_iic_config(point).schedule for point in points[2:]] == schedules
