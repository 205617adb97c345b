"""A search on a real multi-node Ray (``ray.cluster_utils.Cluster``: one head and two worker nodes
on this machine, each worker with one fake GPU), driven by ``search/run.py --address`` exactly as on
a cluster, with its storage on a filesystem every node shares (``file://``).

Covers: a search started before any worker node exists (the autoscaler's case) whose trials of
0.5 GPU then run two per GPU across nodes, a multi-node cluster refusing a local storage path, a
trial worker killed mid-training, and a worker node lost mid-search.
"""

import collections
import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from search.tracking.runs import ROLE_TAG, TRIAL_TAG
from tests.search import flags

# Multi-process fault tests: real Ray clusters, servers and drivers killed on purpose.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
TINY = [*flags.TINY, "--cpus-per-trial", "1", "--gpus-per-trial", "0.5"]


@pytest.fixture(scope="module")
def cluster():
    import ray._private.utils
    from ray.cluster_utils import Cluster

    # The head, like cluster.yaml's, runs the driver and no trial; a lost node is noticed in ~3 s.
    # Worker nodes join in the tests (the first test plays the autoscaler). Every node's processes
    # import this checkout, as the drivers do, not an installed one.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", str(ROOT))
        cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": 0,
                "_system_config": {"health_check_period_ms": 1000, "health_check_failure_threshold": 3},
            },
        )
        yield cluster
        cluster.shutdown()
    # Cluster() registered itself as "the local Ray" for ray.init(); later tests start their own.
    Path(ray._private.utils.get_ray_address_file(None)).unlink(missing_ok=True)


def _ensure_workers(cluster, count: int = 2) -> None:
    """Single-GPU worker nodes (fake GPUs: Ray's bookkeeping only) until there are ``count``."""
    while len(cluster.worker_nodes) < count:
        cluster.add_node(num_cpus=2, num_gpus=1)
    cluster.wait_for_nodes()


def _record_autoscaler(cluster, max_gpu_workers: int | None) -> None:
    """Write (None: delete) the cluster config that Ray's autoscaler keeps in the GCS, listing the
    node types it may start; run.py reads it to accept trials no running node can hold yet."""
    import ray._raylet
    from ray.core.generated import autoscaler_pb2

    gcs = ray._raylet.GcsClient(address=cluster.address)
    key, namespace = (
        ray._raylet.GCS_AUTOSCALER_CLUSTER_CONFIG_KEY.encode(),
        ray._raylet.GCS_AUTOSCALER_STATE_NAMESPACE.encode(),
    )
    if max_gpu_workers is None:
        gcs.internal_kv_del(key, False, namespace)
        return
    config = autoscaler_pb2.ClusterConfig()
    group = config.node_group_configs.add(name="gpu_worker", max_count=max_gpu_workers)
    group.resources.update({"CPU": 2, "GPU": 1})
    gcs.internal_kv_put(key, config.SerializeToString(), True, namespace)


def _command(cluster, tmp_path, *extra):
    return [
        sys.executable,
        str(ROOT / "search" / "run.py"),
        "--address",
        cluster.address,
        "--tracking-uri",
        f"sqlite:///{tmp_path}/mlflow.db",
        "--storage-path",
        f"file://{tmp_path}/ray",
        *TINY,
        *extra,
    ]


def _env(tmp_path):
    # PYTHONPATH: the drivers import this checkout's search/, as the tests do, not an installed one
    return {**os.environ, "IIC_STATE_DIR": str(tmp_path / "state"), "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}


def _token_outside(home: Path) -> dict:
    """Where a driver with another HOME finds the cluster's auth token: Ray keeps it in
    ~/.ray/auth_token, and an earlier ray.init in this process may have switched token auth on."""
    token = Path.home() / ".ray" / "auth_token"
    return (
        {"RAY_AUTH_TOKEN_PATH": str(token)} if token.is_file() and not (home / ".ray" / "auth_token").is_file() else {}
    )


def _start(cluster, tmp_path, *extra):
    return subprocess.Popen(
        _command(cluster, tmp_path, *extra),
        env=_env(tmp_path),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(driver, timeout=400):
    output, _ = driver.communicate(timeout=timeout)
    assert driver.returncode == 0, output[-4000:]
    return output


def _query(db: Path, sql: str) -> list:
    try:
        with sqlite3.connect(db) as connection:
            return connection.execute(sql).fetchall()
    except sqlite3.Error:  # not created yet, or busy
        return []


def _wait_for(condition, driver, what, timeout=240):
    deadline = time.time() + timeout
    while not condition():
        assert driver.poll() is None, f"the search ended before {what}: " + driver.stdout.read()[-3000:]
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _trial_runs(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("iic-digits")
    runs = [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags[ROLE_TAG] == "trial"]
    return client, runs


def _assert_every_epoch_once(client, run):
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
    assert sorted(steps) == list(range(1, len(steps) + 1)), steps


def _tune_results(tmp_path, trial_id) -> list[dict]:
    [path] = (tmp_path / "ray" / "iic-digits").glob(f"*{trial_id}*/result.json")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _preset_without_early_stopping(tmp_path: Path, epochs: int) -> Path:
    """The digits preset whose trials all train ``epochs`` epochs (ASHA's grace period): long enough
    (a few seconds) to see two of them train on one GPU at once."""
    preset = yaml.safe_load((ROOT / "search" / "presets" / "digits.yaml").read_text())
    preset["extends"] = str((ROOT / "search" / "presets" / preset["extends"]).resolve())
    preset["search"]["grace_period"] = epochs
    path = tmp_path / "preset" / "digits.yaml"  # named as the bundled one: the same experiment, iic-digits
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(preset))
    return path


def test_search_from_zero_workers_waits_for_nodes_then_packs_two_half_gpu_trials_per_gpu(cluster, tmp_path):
    assert not cluster.worker_nodes  # a head without CPUs or GPUs: no trial fits yet
    # The driver runs on the head, where `ray up` leaves the launcher's config: cluster.yaml, with
    # the worker type shrunk to this machine.
    home = tmp_path / "home"
    home.mkdir()
    launcher = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    launcher["available_node_types"]["gpu_worker"].update(resources={"CPU": 2, "GPU": 1}, max_workers=2)
    (home / "ray_bootstrap_config.yaml").write_text(json.dumps(launcher))
    driver = subprocess.Popen(
        _command(
            cluster,
            tmp_path,
            "--config",
            str(_preset_without_early_stopping(tmp_path, epochs=20)),
            "--num-samples",
            "4",
            "--max-concurrent",
            "4",
            "--epochs",
            "20",
        ),
        env={**_env(tmp_path), "HOME": str(home), **_token_outside(home)},
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    _wait_for(lambda: (tmp_path / "ray" / "iic-digits").is_dir(), driver, "the search to start")  # accepted
    time.sleep(2)
    assert _query(tmp_path / "mlflow.db", "select count(*) from metrics") in ([], [(0,)])  # waiting for nodes
    _ensure_workers(cluster, 2)  # what the autoscaler does: two single-GPU nodes join
    _finish(driver)

    client, runs = _trial_runs(tmp_path)
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)
    for run in runs:
        _assert_every_epoch_once(client, run)
    seconds = collections.defaultdict(
        list
    )  # node -> the seconds (Tune's timestamps) each of its trials logged epochs in
    for run in runs:
        seconds[run.data.tags["iic.node_id"]].append(
            {m.timestamp // 1000 for m in client.get_metric_history(run.info.run_id, "loss")}
        )
    assert set(seconds) == {node.node_id for node in cluster.worker_nodes}, (
        seconds
    )  # both nodes that joined trained trials
    # Two half-GPU trials trained on one node's one GPU at once: trials one after another share at most
    # the second in which one ends and the next starts. (Not necessarily two on each node: the node that
    # joins first may run a third before the other is up.)
    assert any(
        len(first & second) >= 2
        for node_seconds in seconds.values()
        for first, second in itertools.combinations(node_seconds, 2)
    ), seconds
    assert {r.data.tags["iic.gpu_ids"] for r in runs} == {"0"}


@pytest.mark.parametrize("autoscaling", [False, True])
def test_multi_node_cluster_refuses_local_storage(cluster, tmp_path, autoscaling):
    _ensure_workers(cluster, 2)
    _record_autoscaler(cluster, 2 if autoscaling else None)
    command = _command(cluster, tmp_path, "--num-samples", "1")
    command[command.index("--storage-path") + 1] = str(tmp_path / "ray")
    try:
        refused = subprocess.run(command, env=_env(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=120)
    finally:
        _record_autoscaler(cluster, None)
    assert refused.returncode == 2
    assert "3 nodes" in refused.stderr and "s3://" in refused.stderr and "file:///" in refused.stderr
    assert ("autoscaler" in refused.stderr) == autoscaling
    assert not (tmp_path / "ray").exists()  # refused before any trial


def _trial_worker_pids(cluster) -> list[int]:
    """Processes running a Tune function trainable (Ray names them after the actor) on the
    cluster's worker nodes (their raylet's pid is in their environment)."""
    from ray._private import ray_constants

    raylets = {
        f"RAY_RAYLET_PID={info.process.pid}".encode()
        for node in cluster.worker_nodes
        for info in node.all_processes[ray_constants.PROCESS_TYPE_RAYLET]
    }
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if (
                entry.name.isdigit()
                and (entry / "cmdline").read_bytes().startswith(b"ray::ImplicitFunc")
                and raylets & set((entry / "environ").read_bytes().split(b"\0"))
            ):
                pids.append(int(entry.name))
        except OSError:  # the process ended meanwhile
            continue
    return pids


def test_killed_trial_worker_continues_from_its_checkpoint(cluster, tmp_path, steady_preset):
    _ensure_workers(cluster, 2)
    driver = _start(cluster, tmp_path, *steady_preset, "--num-samples", "1", "--max-concurrent", "1", "--epochs", "12")
    db = tmp_path / "mlflow.db"
    _wait_for(lambda: _query(db, "select count(*) from metrics where key = 'loss'") >= [(2,)], driver, "epoch 2")
    [pid] = _trial_worker_pids(cluster)
    os.kill(pid, signal.SIGKILL)
    output = _finish(driver)

    client, [run] = _trial_runs(tmp_path)
    assert run.info.status == "FINISHED"
    _assert_every_epoch_once(client, run)
    results = _tune_results(tmp_path, run.data.tags[TRIAL_TAG])
    restored_at = next(
        (i for i, r in enumerate(results) if r["iterations_since_restore"] < r["training_iteration"]), None
    )
    assert restored_at, output[-3000:]
    before, after = [r["epoch"] for r in results[:restored_at]], [r["epoch"] for r in results[restored_at:]]
    # Continued after a checkpoint (not from zero) in a new worker process. Tune logs a result
    # before it registers the checkpoint sent with it, so a kill in between resumes from the epoch
    # before and trains the newest epoch again: Tune's result.json then holds it twice
    # (1, 2, 2, 3, ...), and the MLflow logger skips the replay. (Its copy in the shared storage can
    # also lack the line written just before the kill: 1, 2, 4, 5, ...; MLflow has every epoch.)
    assert results[restored_at]["iterations_since_restore"] == 1 and after[0] >= 2, (before, after)
    assert after == list(range(after[0], 13)), (before, after)
    assert {r["pid"] for r in results[:restored_at]}.isdisjoint(r["pid"] for r in results[restored_at:])
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 12  # MLflow: every epoch, once


def _running_trials(db: Path) -> dict[str, tuple[str, int]]:
    """{trial id: (node id, newest logged epoch)} of the trials whose MLflow run is RUNNING."""
    rows = _query(
        db,
        """
        select runs.name, tags.value, max(metrics.step) from runs
        join tags on tags.run_uuid = runs.run_uuid and tags.key = 'iic.node_id'
        join metrics on metrics.run_uuid = runs.run_uuid and metrics.key = 'loss'
        where runs.status = 'RUNNING' group by runs.run_uuid""",
    )
    return {name.removeprefix("train_iic_"): (node, epoch) for name, node, epoch in rows}


def _fewest_logged_epochs(db: Path, trials: int = 4) -> int:
    """The fewest epochs any of ``trials`` running trials has logged (0 until all of them run)."""
    epochs = [epoch for _, epoch in _running_trials(db).values()]
    return min(epochs) if len(epochs) == trials else 0


def test_lost_node_trials_are_rescheduled(cluster, tmp_path, steady_preset):
    _ensure_workers(cluster, 2)
    driver = _start(cluster, tmp_path, *steady_preset, "--num-samples", "4", "--max-concurrent", "4", "--epochs", "20")
    db = tmp_path / "mlflow.db"
    # Each trial runs all 20 epochs (an epoch takes ~0.4-1 s here): lose the node whose trials are
    # furthest from their end, while each has several epochs left (trials start seconds apart on a
    # loaded machine, so one may be at epoch 13 when the last reaches 2). Tune logs a result before it
    # registers the checkpoint sent with it: a trial lost after logging only epoch 1 may have no
    # checkpoint yet and start again from zero. Once epoch 2 is logged, epoch 1's checkpoint is registered.
    _wait_for(lambda: _fewest_logged_epochs(db) >= 2, driver, "all four trials to report two epochs")
    running = _running_trials(db)
    furthest = {}  # node id -> the most epochs any of its trials has logged
    for node, epoch in running.values():
        furthest[node] = max(furthest.get(node, 0), epoch)
    lost_id = min(furthest, key=furthest.get)
    on_lost = {trial_id for trial_id, (node, epoch) in running.items() if node == lost_id}
    assert furthest[lost_id] <= 15, running
    cluster.remove_node(next(node for node in cluster.worker_nodes if node.node_id == lost_id))
    output = _finish(driver)

    client, runs = _trial_runs(tmp_path)
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs), output[-3000:]
    for trial_id in on_lost:  # the lost node's trials went on elsewhere, from their checkpoints
        results = _tune_results(tmp_path, trial_id)
        progress = [
            (r["training_iteration"], r["iterations_since_restore"], r["epoch"], r["node_id"][:8]) for r in results
        ]
        assert any(r["iterations_since_restore"] < r["training_iteration"] for r in results), (
            trial_id,
            lost_id[:8],
            running,
            progress,
            output[-3000:],
        )
        assert results[-1]["node_id"] != lost_id and results[-1]["epoch"] == 20
    for run in runs:
        _assert_every_epoch_once(client, run)
        assert run.data.tags["iic.status"] == "completed"
        assert len(client.get_metric_history(run.info.run_id, "loss")) == 20
