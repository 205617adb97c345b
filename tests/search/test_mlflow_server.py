"""A search logging to a real ``mlflow server`` over http: every run, metric and artifact arrives
through the server (artifacts proxied to its artifact store); a server that goes away mid-search
stops no trial, and what it missed is either logged when it answers again or reported, epoch by
epoch, at the end."""

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

import search.summary
import search.tracking.reconcile
from search.reconcile import main as reconcile_main
from search.run import main
from search.tracking.runs import END_WAIT_VARIABLE, ROLE_TAG, TRIAL_TAG
from tests.search import flags

# Multi-process fault tests: real Ray clusters, servers and drivers killed on purpose.
pytestmark = pytest.mark.slow

EPOCHS = 4
TINY = [*flags.TINY, "--epochs", str(EPOCHS), "--cpus-per-trial", "1"]


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 with a SQLite store and proxied artifacts, restartable on the
    same port and store."""

    def __init__(self, folder: Path):
        self.folder = folder
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.uri = f"http://127.0.0.1:{self.port}"
        self.db = folder / "server.db"
        self.process = None

    def start(self):
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--backend-store-uri",
                f"sqlite:///{self.db}",
                "--artifacts-destination",
                str(self.folder / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            # Tracking only: without the job runner (and its queue workers) the server starts in seconds.
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2):
                    return
            except OSError:
                assert self.process.poll() is None, "mlflow server exited at start"
                assert time.time() < deadline, "mlflow server did not answer within 90 s"
                time.sleep(0.5)

    def stop(self):
        os.killpg(self.process.pid, signal.SIGKILL)  # the server and its uvicorn workers, no goodbye
        self.process.wait()

    def logged_epochs(self) -> int:
        try:
            with sqlite3.connect(self.db) as connection:
                return connection.execute("select count(*) from metrics where key = 'loss'").fetchone()[0]
        except sqlite3.Error:
            return 0


class Relay:
    """A TCP relay in front of the server that the test can cut and mend: the network path to the
    server goes away (connections refused or dropped) while the server itself keeps its state."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.uri = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.cut = threading.Event()
        self.refused = 0  # connections turned away while cut
        self.open_sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            client, _ = self.listener.accept()
            if self.cut.is_set():
                client.close()
                self.refused += 1
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self.open_sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source, sink):
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            _hang_up(source, sink)

    def disconnect(self):
        self.cut.set()
        _hang_up(*self.open_sockets)  # kept-alive client connections break too
        self.open_sockets = []

    def reconnect(self):
        self.cut.clear()


def _hang_up(*sockets):
    for end in sockets:
        try:
            end.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


@pytest.fixture
def server(tmp_path):
    server = MlflowServer(tmp_path)
    server.start()
    yield server
    if server.process.poll() is None:
        server.stop()


@pytest.fixture
def state_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("IIC_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


def _search(tracking_uri, tmp_path, *extra):
    return main(["--tracking-uri", tracking_uri, "--storage-path", str(tmp_path / "ray"), *TINY, *extra])


def _tune_epochs(tmp_path) -> dict[str, list[int]]:
    """Every epoch each trial trained, from Tune's own records."""
    epochs = {}
    for path in (tmp_path / "ray" / "iic-digits").glob("*/result.json"):
        results = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        epochs[results[0]["trial_id"]] = sorted({r["epoch"] for r in results})
    return epochs


def _server_epochs(db: Path) -> dict[str, list[int]]:
    """Epochs the server stored per trial, read from its database (the server may be gone)."""
    with sqlite3.connect(db) as connection:
        rows = connection.execute(
            "select tags.value, metrics.step from metrics join tags on tags.run_uuid = metrics.run_uuid "
            f"where metrics.key = 'loss' and tags.key = '{TRIAL_TAG}'"
        ).fetchall()
    epochs = {}
    for trial_id, step in rows:
        epochs.setdefault(trial_id, []).append(step)
    return {trial_id: sorted(steps) for trial_id, steps in epochs.items()}


def _when_logged(server, epochs: int, action) -> threading.Thread:
    """Run ``action`` (in a thread) once the server holds ``epochs`` epochs."""

    def watch():
        deadline = time.time() + 300
        while server.logged_epochs() < epochs and time.time() < deadline:
            time.sleep(0.1)
        action()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_server_gone_for_good_trials_finish_the_report_lists_every_missing_epoch_and_reconcile_sends_them_later(
    ray_session, server, tmp_path, state_dir, capsys, monkeypatch
):
    monkeypatch.setenv(END_WAIT_VARIABLE, "1")  # the end of each stage waits 1 s for the server, in vain
    watcher = _when_logged(server, 2, server.stop)
    assert _search(server.uri, tmp_path, "--num-samples", "2", "--max-concurrent", "1") == 0
    watcher.join(timeout=10)
    assert server.process.poll() is not None, "the server was still up when the search ended"

    tune_epochs = _tune_epochs(tmp_path)
    assert len(tune_epochs) == 2 and all(
        epochs == list(range(1, EPOCHS + 1)) for epochs in tune_epochs.values()
    )  # trained on
    report = json.loads((state_dir / "iic-digits" / "mlflow_report.json").read_text())
    stored = _server_epochs(server.db)
    for trial_id, epochs in tune_epochs.items():
        entry = report["unlogged"].get(trial_id, {})
        details = (trial_id, stored.get(trial_id), entry, tune_epochs)
        # every epoch stored or reported, never neither (an epoch whose reply was lost may be both:
        # sending it again is harmless)
        assert sorted(set(stored.get(trial_id, [])) | set(entry.get("epochs", []))) == epochs, details
        assert entry["ending"], details  # and the run's end is reported as not recorded
    assert sum(len(entry["epochs"]) for entry in report["unlogged"].values()) >= EPOCHS  # the second trial's at least
    printed = capsys.readouterr().out
    assert "does not answer" in printed and "not logged: epochs" in printed and "result.json" in printed
    assert "python search/reconcile.py --name iic-digits" in printed

    # The driver is gone; the server comes back (same store); the reconcile command sends the rest.
    server.start()
    assert (
        reconcile_main(["--name", "iic-digits", "--storage-path", str(tmp_path / "ray"), "--tracking-uri", server.uri])
        == 0
    )
    assert _server_epochs(server.db) == tune_epochs  # every epoch, once
    client = MlflowClient(server.uri)
    for run in client.search_runs(
        [client.get_experiment_by_name("iic-digits").experiment_id], f"tags.`{ROLE_TAG}` = 'trial'"
    ):
        assert run.info.status == "FINISHED" and run.data.tags["iic.status"] in (
            "completed",
            "collapsed",
            "early_stopped",
        )
        assert {"config.yaml", "cluster_gallery.png"} <= {a.path for a in client.list_artifacts(run.info.run_id)}


def test_server_unreachable_mid_search_gets_every_run_metric_and_artifact_once_back(
    ray_session, server, tmp_path, state_dir, capsys, monkeypatch
):
    relay = Relay(server.port)

    def reconnect_after(refusals: int):
        # at least one write fails for good (its 3 tries and a health check turned away), however
        # slowly a loaded machine goes on
        deadline = time.time() + 120
        while relay.refused < refusals and time.time() < deadline:
            time.sleep(0.1)
        relay.reconnect()

    def outage():
        relay.disconnect()
        time.sleep(4)  # epochs go by unlogged
        reconnect_after(4)

    def cut_at_first_call(module, name: str) -> threading.Event:
        """An outage from the first call of ``module.name`` on, until a write failed for good."""
        function, cut = getattr(module, name), threading.Event()

        def cut_then_call(*args):
            if not cut.is_set():
                cut.set()
                relay.disconnect()
                threading.Thread(target=reconnect_after, args=(relay.refused + 3,), daemon=True).start()
            return function(*args)

        monkeypatch.setattr(module, name, cut_then_call)
        return cut

    # More outages as the search ends: in the middle of the stage's reconciliation (its first trial)
    # and of the summary (after its first metric was recorded).
    reconcile_cut = cut_at_first_call(search.tracking.reconcile, "_reconcile_trial")
    summary_cut = cut_at_first_call(search.summary, "record_best")
    watcher = _when_logged(server, 2, outage)
    assert _search(relay.uri, tmp_path, "--num-samples", "2", "--max-concurrent", "1", "--epochs", "8") == 0
    watcher.join(timeout=10)
    printed = capsys.readouterr().out
    assert reconcile_cut.is_set() and summary_cut.is_set()
    assert "could not reconcile" not in printed and "could not record the summary" not in printed, printed[-3000:]
    assert not relay.cut.is_set() and "does not answer" in printed

    client = MlflowClient(server.uri)  # MLflow's REST client
    experiment = client.get_experiment_by_name("iic-digits")
    runs = client.search_runs([experiment.experiment_id])
    trials = [r for r in runs if r.data.tags[ROLE_TAG] == "trial"]
    [parent] = [r for r in runs if r.data.tags[ROLE_TAG] == "search"]
    assert len(trials) == 2 and parent.info.status == "FINISHED"
    tune_epochs = _tune_epochs(tmp_path)
    for run in trials:
        assert run.info.status == "FINISHED"
        for key in ("loss", "cluster_accuracy", "nmi", "largest_cluster_share"):
            # the epochs it missed arrived, once each
            assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == tune_epochs[
                run.data.tags[TRIAL_TAG]
            ]
        assert {"config.yaml", "confusion_matrix.png", "cluster_gallery.png"} <= {
            a.path for a in client.list_artifacts(run.info.run_id)
        }
        config = yaml.safe_load(
            Path(client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))).read_text()
        )
        assert config["lr"] == pytest.approx(float(run.data.params["lr"]))
    assert {"best_config.yaml", "trials.csv"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    for key in ("best_cluster_accuracy", "trials", "completed_trials"):  # recorded again, stored once
        assert len(client.get_metric_history(parent.info.run_id, key)) == 1, key
    # uploaded through the server into its artifact store, not written by the client
    assert len(list((tmp_path / "artifacts").rglob("cluster_gallery.png"))) == 2
    report = json.loads((state_dir / "iic-digits" / "mlflow_report.json").read_text())
    assert report["unlogged"] == {} and report["failures"] == []


def test_a_server_restarted_as_a_stage_ends_gets_everything_without_reconcile(
    ray_session, server, tmp_path, state_dir, capsys
):
    # down from the last epoch of the last trial for 20 s: over the trials' ends, the stage's
    # reconciliation and the summary, which wait for it
    def restart_later():
        server.stop()
        threading.Timer(20, server.start).start()

    watcher = _when_logged(server, EPOCHS, restart_later)
    assert _search(server.uri, tmp_path, "--num-samples", "1") == 0
    watcher.join(timeout=10)
    printed = capsys.readouterr().out
    assert "waiting up to" in printed and "search/reconcile.py" not in printed, printed[-3000:]
    assert _server_epochs(server.db) == _tune_epochs(tmp_path)
    client = MlflowClient(server.uri)
    runs = client.search_runs([client.get_experiment_by_name("iic-digits").experiment_id])
    assert len(runs) == 2 and all(run.info.status == "FINISHED" for run in runs), [r.info for r in runs]
