"""The search CLI end to end, on a real local Ray and a real MLflow SQLite store."""

import json

import pytest
import yaml
from mlflow.tracking import MlflowClient

import search.pipeline
from iic.config import IICConfig
from iic.seeds import draw_seeds
from search.best_configs import export_best
from search.confirm import main as confirm_main
from search.confirmation import confirmation_seeds
from search.plan import SEARCH_RECORD_FILE
from search.run import main
from search.tracking.runs import CONFIRMS_TAG, PARENT_TAG, ROLE_TAG, STATUS_TAG, TRIAL_TAG
from tests.search import flags

TINY = [*flags.TINY, "--epochs", "2"]


def _args(tmp_path, *extra):
    return ["--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--storage-path", str(tmp_path / "ray"), *TINY, *extra]


@pytest.fixture
def state_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("IIC_STATE_DIR", str(tmp_path / "state"))


def _runs(tmp_path, experiment="iic-digits"):
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name(experiment)
    runs = client.search_runs([experiment.experiment_id])
    trials = [r for r in runs if r.data.tags.get(ROLE_TAG) == "trial"]
    parents = [r for r in runs if r.data.tags.get(ROLE_TAG) == "search"]
    return client, experiment, trials, parents


def _worker_pid(tmp_path, trial_id: str, experiment="iic-digits") -> int:
    """The process a trial trained in, from Tune's results."""
    [path] = (tmp_path / "ray" / experiment).glob(f"*{trial_id}*/result.json")
    [pid] = {json.loads(line)["pid"] for line in path.read_text().splitlines() if line.strip()}
    return pid


@pytest.mark.slow
def test_small_search_records_every_trial_in_mlflow(
    ray_session, tmp_path, state_dir, capsys, replay, small_digits_preset
):
    extra = [
        *small_digits_preset,
        "--num-samples",
        "3",
        "--max-concurrent",
        "2",
        "--seeds-per-trial",
        "2",
        "--confirm-top",
        "2",
        "--confirm-seeds",
        "2",
        "--seed",
        "5",
    ]
    assert main(_args(tmp_path, *extra)) == 0
    client, experiment, trials, parents = _runs(tmp_path)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert len(parents) == 1 and len(trials) == 3
    parent = parents[0]
    search_seeds = draw_seeds(5, 2)
    for run in trials:
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags[STATUS_TAG] in {"completed", "collapsed", "early_stopped"}
        assert run.data.tags[TRIAL_TAG] and "iic.chosen_subhead" in run.data.tags and run.data.tags["iic.code_version"]
        assert "iic.init_seed" not in run.data.tags  # only a screening run has one (tests/search/test_pbt.py)
        params = run.data.params
        assert params["dataset"] == "digits" and params["max_samples"] == "200" and float(params["lr"]) > 0
        assert params["seeds"] == str(search_seeds)  # every trial trains on the search's seeds, recorded
        assert "gate.overclustering" in params
        assert (params["gate.overclustering"] == "False") == (params["overcluster_k"] == "0")
        # per-epoch metrics with step = epoch; config values are params, never metrics
        history = client.get_metric_history(run.info.run_id, "cluster_accuracy")
        assert sorted(m.step for m in history) == list(range(1, len(history) + 1)) and len(history) >= 1
        for key in (
            "majority_accuracy",
            "nmi",
            "ari",
            "loss",
            "mutual_information",
            "largest_cluster_share",
            "cluster_accuracy_min",
            "cluster_accuracy_sd",
            "label_free_pick_accuracy",
            "cluster_accuracy/seed_1",
        ):
            assert key in run.data.metrics
        metrics = run.data.metrics
        assert metrics["cluster_accuracy"] == pytest.approx(
            (metrics["cluster_accuracy/seed_0"] + metrics["cluster_accuracy/seed_1"]) / 2
        )
        assert not any(key.startswith("config") or key in params for key in run.data.metrics)
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.yaml", "confusion_matrix.png", "cluster_gallery.png"} <= artifacts
    # The trials (two CPUs each: one at a time) took turns in one worker process, and a trial there
    # trains as in a new one: the last one's export retrains to its figures
    last = max(trials, key=lambda r: r.info.start_time)
    assert _worker_pid(tmp_path, last.data.tags[TRIAL_TAG]) in {
        _worker_pid(tmp_path, r.data.tags[TRIAL_TAG]) for r in trials if r is not last
    }
    exported = export_best(f"sqlite:///{tmp_path}/mlflow.db", "iic-digits", top=3, out=tmp_path / "best")
    [path] = [p for p in exported if p.stem.endswith(last.data.tags[TRIAL_TAG])]
    replayed = replay(path, search_seeds, threads=2, out=tmp_path / "replay")  # two CPUs: two threads
    assert replayed["cluster_accuracy"] == pytest.approx(last.data.metrics["cluster_accuracy"], abs=1e-6)
    assert replayed["loss"] == pytest.approx(last.data.metrics["loss"], abs=1e-5)
    # the confirmation stage: the two best distinct configs again, on two seeds the search never used
    runs = client.search_runs([experiment.experiment_id])
    confirms = [r for r in runs if r.data.tags.get(ROLE_TAG) == "confirm"]
    assert len(confirms) == 2
    confirm_seeds = confirmation_seeds(5, search_seeds, 2)
    assert not set(confirm_seeds) & set(search_seeds)
    trial_ids = {r.data.tags[TRIAL_TAG] for r in trials}
    for run in confirms:
        assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags[CONFIRMS_TAG] in trial_ids and run.data.params["seeds"] == str(confirm_seeds)
        assert "cluster_accuracy_sd" in run.data.metrics
    parent = client.get_run(parent.info.run_id)
    assert parent.info.status == "FINISHED"
    best_mean = max(r.data.metrics["cluster_accuracy"] for r in confirms)
    best_confirmed = {r.data.tags[CONFIRMS_TAG] for r in confirms if r.data.metrics["cluster_accuracy"] == best_mean}
    assert (
        parent.data.tags["iic.best_trial_id"] in best_confirmed
    )  # the best by the confirmed mean (ties: the search's order)
    assert parent.data.metrics["best_confirmed_cluster_accuracy"] == pytest.approx(best_mean)
    assert {"best_config.yaml", "trials.csv", "confirmed.csv", "optuna_history.png"} <= {
        a.path for a in client.list_artifacts(parent.info.run_id)
    }
    # 3 trials are too few for parameter importances to mean anything
    assert "optuna_importance.png" not in {a.path for a in client.list_artifacts(parent.info.run_id)}
    # the preset's own config trained first; a trial that beats it by less than two standard errors
    # (the seeds' sd from the median of the trials' sds over two seeds, 0.674 of it) is not the search's pick
    start = min(trials, key=lambda r: r.info.start_time)
    assert parent.data.tags["iic.start_trial_id"] == start.data.tags[TRIAL_TAG]
    best = max(r.data.metrics["cluster_accuracy"] for r in trials)
    seed_sd = sorted(r.data.metrics["cluster_accuracy_sd"] for r in trials)[1] / 0.6745
    start_value = start.data.metrics["cluster_accuracy"]
    picked = best if best > start_value + 2 * seed_sd else start_value
    assert parent.data.metrics["seed_sd"] == pytest.approx(seed_sd, rel=1e-3)
    assert parent.data.metrics["challenger_margin"] == pytest.approx(2 * seed_sd, rel=1e-3)
    assert parent.data.metrics["best_cluster_accuracy"] == pytest.approx(picked)
    assert -1 <= parent.data.metrics.get("mi_accuracy_spearman", 0) <= 1
    out = capsys.readouterr().out
    assert "Best 3 of 3 trials by cluster_accuracy" in out and "Confirmed on 2 fresh seeds" in out
    assert f"mlflow ui --backend-store-uri sqlite:///{tmp_path}/mlflow.db" in out
    link = (
        f"#/experiments/{experiment.experiment_id}/runs?searchFilter=tags.%60iic.role%60%20%3D%20%27trial%27"
        "&orderByKey=metrics.%60cluster_accuracy%60&orderByAsc=false&compareRunsMode=CHART"
    )
    assert link in out


@pytest.mark.slow
def test_a_trial_the_time_budget_stops_is_closed_with_its_status_and_artifacts(
    ray_session, tmp_path, state_dir, steady_preset
):
    # one long trial and a budget that ends the search while it trains
    args = _args(
        tmp_path,
        *steady_preset,
        "--num-samples",
        "1",
        "--epochs",
        "500",
        "--time-budget",
        "20",
        "--experiment",
        "budget",
    )
    assert main(args) == 0
    client, _, [trial], [parent] = _runs(tmp_path, "budget")
    assert trial.info.status == "FINISHED" and trial.data.tags[STATUS_TAG] == "stopped_by_budget"
    assert 1 <= len(client.get_metric_history(trial.info.run_id, "cluster_accuracy")) < 500
    assert {"config.yaml", "confusion_matrix.png", "cluster_gallery.png"} <= {
        a.path for a in client.list_artifacts(trial.info.run_id)
    }
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"


@pytest.mark.slow
def test_confirm_command_confirms_a_finished_search(ray_session, tmp_path, state_dir, capsys):
    assert main(_args(tmp_path, "--num-samples", "2", "--experiment", "later")) == 0
    args = [
        "--experiment",
        "later",
        "--top",
        "1",
        "--seeds",
        "2",
        "--tracking-uri",
        f"sqlite:///{tmp_path}/mlflow.db",
        "--storage-path",
        str(tmp_path / "ray"),
        "--cpus-per-trial",
        "1",
    ]
    assert confirm_main(args) == 0
    client, experiment, trials, [parent] = _runs(tmp_path, "later")
    [confirm] = [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get(ROLE_TAG) == "confirm"]
    ranked = sorted(trials, key=lambda r: -r.data.metrics["cluster_accuracy"])
    counted = [r for r in ranked if r.data.tags[STATUS_TAG] not in ("collapsed", "diverged", "error")]
    assert confirm.data.tags[CONFIRMS_TAG] == counted[0].data.tags[TRIAL_TAG]
    assert (
        len(eval(confirm.data.params["seeds"])) == 2
        and trials[0].data.params["seeds"] not in confirm.data.params["seeds"]
    )
    parent = client.get_run(parent.info.run_id)
    assert parent.data.metrics["best_confirmed_cluster_accuracy"] == pytest.approx(
        confirm.data.metrics["cluster_accuracy"]
    )
    assert "Confirmed on 2 fresh seeds" in capsys.readouterr().out
    assert confirm_main(args[:2] + ["--top", "0", "--seeds", "2"] + args[6:]) == 2


def test_warm_start_evaluates_the_given_configs_first_then_the_presets_own(
    ray_session, tmp_path, state_dir, small_digits_preset
):
    warm = tmp_path / "warm"
    IICConfig(lr=0.00567, batch_size=32, overcluster_k=0).to_yaml(warm / "rank01.yaml")
    args = _args(
        tmp_path, *small_digits_preset, "--num-samples", "2", "--warm-start", str(warm), "--experiment", "warm"
    )
    assert main(args) == 0
    client, _, trials, [parent] = _runs(tmp_path, "warm")
    # the summary is recorded though the warm-start config's lr lies outside the preset's range
    assert parent.info.status == "FINISHED"
    assert "trials.csv" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    trials.sort(key=lambda t: t.info.start_time)
    # the digits preset starts from its config (search.start_from_config): IICConfig's lr and the rest
    assert [float(t.data.params["lr"]) for t in trials] == [0.00567, IICConfig().lr]
    assert float(trials[1].data.params["lamb"]) == IICConfig().lamb and trials[1].data.params["repeats"] == str(
        IICConfig().repeats
    )
    assert all(t.data.params["gate.overclustering"] == "False" for t in trials)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--preset", "imagenet"], "unknown preset 'imagenet'"),
        (["--set", "lr=0.1"], "--set lr: searched by the preset"),
        (["--set", "num_clusters=1"], "num_clusters: must be at least 2"),
        (["--cpus-per-trial", "64"], "--cpus-per-trial 64.0: no node has that many CPUs"),
        (["--gpus-per-trial", "0.5"], "use --gpus-per-trial 0 on a machine without GPUs"),
        (["--num-samples", "0"], "--num-samples must be at least 1"),
        (["--seeds-per-trial", "3", "--set", "seed=4"], "seed is fixed .* but each trial trains on 3 seeds"),
        (["--tracking-uri", "http://127.0.0.1:9"], "the MLflow server does not answer"),
        (["--tracking-uri", "file:///tmp/mlruns"], "use sqlite:///FILE or http"),
        (["--resume"], "no search to resume"),
        (["--warm-start", "/no/such/folder"], "no \\*.yaml configs there"),
        (["--set", "dataset=har", "--set", "data_root=/no/har"], "/no/har"),
    ],
)
def test_bad_input_fails_fast_with_a_clear_message(ray_session, tmp_path, state_dir, capsys, extra, message):
    import re

    args = _args(tmp_path, *extra)
    if "--tracking-uri" in extra:  # the later flag wins; drop the default one
        args = args[2:]
    assert main(args) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "ray").exists()  # no trial started


def test_a_problem_of_the_fixed_config_is_reported_once_as_the_configs(tmp_path, state_dir, capsys):
    assert main(_args(tmp_path, "--set", "num_subheads=0")) == 2
    err = capsys.readouterr().err
    assert err.count("num_subheads: must be at least 1") == 1 and "invalid config:" in err
    assert "space." not in err  # no searched value is blamed for it
    assert not (tmp_path / "ray").exists()


def test_invalid_ranges_in_a_preset_file_are_refused(ray_session, tmp_path, state_dir, capsys):
    preset = tmp_path / "mine.yaml"
    preset.write_text(
        yaml.safe_dump({"config": {"dataset": "digits"}, "space": {"rotation_degrees": {"low": 0, "high": 270}}})
    )
    assert main(_args(tmp_path, "--config", str(preset))) == 2
    assert "space.rotation_degrees: value 270 is invalid" in capsys.readouterr().err


def test_existing_search_name_needs_resume_and_resume_continues_the_stored_search(
    ray_session, tmp_path, state_dir, capsys
):
    assert main(_args(tmp_path, "--num-samples", "1", "--experiment", "again", "--seed", "3")) == 0
    assert main(_args(tmp_path, "--num-samples", "1", "--experiment", "again")) == 2
    assert "continue it with --resume" in capsys.readouterr().err
    # A flag that would change the stored search is refused, naming the stored value ...
    assert main(_args(tmp_path, "--experiment", "again", "--resume", "--num-samples", "4", "--seed", "5")) == 2
    refused = capsys.readouterr().err
    assert (
        "--num-samples 4: the search was started with 1" in refused
        and "--seed 5: the search was started with 3" in refused
    )
    assert (
        main(
            [
                "--experiment",
                "again",
                "--resume",
                "--storage-path",
                str(tmp_path / "ray"),
                "--tracking-uri",
                "sqlite:///elsewhere.db",
            ]
        )
        == 2
    )
    assert (
        f"--tracking-uri 'sqlite:///elsewhere.db': the search was started with 'sqlite:///{tmp_path}/mlflow.db'"
        in capsys.readouterr().err
    )
    # ... and the same search, given only what names it (and what may change), continues as stored.
    assert main(["--experiment", "again", "--resume", "--storage-path", str(tmp_path / "ray"), "--top", "1"]) == 0
    _, _, trials, [parent] = _runs(tmp_path, "again")
    assert len(trials) == 1 and parent.info.status == "FINISHED"
    # A search stored by a version whose classes or settings have since changed is refused before
    # anything starts, saying what to do; its runs stay as they were.
    record = tmp_path / "ray" / "again" / SEARCH_RECORD_FILE
    stored = json.loads(record.read_text())
    stored["preset"]["search"]["consensus_restarts"] = 10
    record.write_text(json.dumps(stored))
    assert main(["--experiment", "again", "--resume", "--storage-path", str(tmp_path / "ray")]) == 2
    refused = capsys.readouterr().err
    assert "stored by another version of iic-search" in refused and "consensus_restarts" in refused
    assert "start a new search under another --name" in refused
    _, _, after, [parent_after] = _runs(tmp_path, "again")
    assert [r.info.run_id for r in after] == [r.info.run_id for r in trials] and parent_after.info.status == "FINISHED"


def test_a_search_that_fails_after_its_parent_run_opened_marks_it_failed(ray_session, tmp_path, state_dir, monkeypatch):
    def broken_summary(*args, **kwargs):
        raise OSError("No space left on device")  # the summary's artifacts cannot be written

    monkeypatch.setattr(search.pipeline, "summarise", broken_summary)
    with pytest.raises(OSError, match="No space left"):
        main(_args(tmp_path, "--num-samples", "1", "--experiment", "broken"))
    _, _, [trial], [parent] = _runs(tmp_path, "broken")
    assert parent.info.status == "FAILED" and parent.data.tags["iic.error"] == "OSError: No space left on device"
    assert trial.info.status == "FINISHED"  # what ran is recorded


def test_label_free_objective_ranks_by_mutual_information(ray_session, tmp_path, state_dir, capsys):
    assert main(_args(tmp_path, "--num-samples", "2", "--objective", "mutual_information", "--experiment", "mi")) == 0
    client, _, trials, parents = _runs(tmp_path, "mi")
    best = max(r.data.metrics["mutual_information"] for r in trials)
    assert client.get_run(parents[0].info.run_id).data.metrics["best_mutual_information"] == best
    assert all("cluster_accuracy" in r.data.metrics for r in trials)  # still recorded
    assert "trials by mutual_information" in capsys.readouterr().out


def test_relative_data_root_reaches_trials_that_run_in_their_own_folders(ray_session, tmp_path, state_dir, monkeypatch):
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for index in range(120):
        folder = tmp_path / "pngs" / str(digits.target[index])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((digits.images[index] * 15).astype("uint8")).save(folder / f"{index}.png")
    monkeypatch.chdir(tmp_path)
    args = ["--set", "dataset=image_folder", "--set", "data_root=pngs", "--num-samples", "1", "--experiment", "folder"]
    assert main(_args(tmp_path, *args)) == 0
    _, _, [trial], _ = _runs(tmp_path, "folder")
    assert trial.info.status == "FINISHED" and "cluster_accuracy" in trial.data.metrics
    assert trial.data.params["data_root"] == str(tmp_path / "pngs")


def test_ceiling_trains_the_supervised_ceiling_beside_the_search(ray_session, tmp_path, state_dir, capsys):
    assert main(_args(tmp_path, "--num-samples", "1", "--experiment", "ceiling", "--ceiling")) == 0
    client, experiment, trials, [parent] = _runs(tmp_path, "ceiling")
    [ceiling] = client.search_runs([experiment.experiment_id], f"tags.`{ROLE_TAG}` = 'ceiling'")
    assert (
        len(trials) == 1 and ceiling.info.status == "FINISHED" and ceiling.data.tags[PARENT_TAG] == parent.info.run_id
    )
    accuracy = ceiling.data.metrics["supervised_accuracy"]
    assert [m.step for m in client.get_metric_history(ceiling.info.run_id, "supervised_accuracy")] == [1, 2]
    parent = client.get_run(parent.info.run_id)
    assert parent.data.metrics["ceiling_accuracy"] == pytest.approx(accuracy)
    best = trials[0].data.metrics["cluster_accuracy"]
    assert parent.data.metrics["best_to_ceiling"] == pytest.approx(best / accuracy)
    printed = capsys.readouterr().out
    assert "Supervised ceiling (same backbone on the labels, held out: stratified 20% of train (seed " in printed
    assert f"{accuracy:.3f}; best IIC accuracy {best:.3f}" in printed
