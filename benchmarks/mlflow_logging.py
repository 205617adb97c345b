"""How many trials one MLflow tracking server can follow: throughput of the search's MLflow logger.

    python benchmarks/mlflow_logging.py                       # a local `mlflow server` (SQLite) over http
    python benchmarks/mlflow_logging.py --tracking-uri sqlite:///bench.db   # the store without a server

Tune calls the logger (``search.tracking.MLflowTrialLogger``) on its driver, one event at a time,
so its speed is the speed of a sequential loop of those calls. This drives the real logger, with
the real MLflow client, against a real server, through a trial's three kinds of events: its start
(run created, 37 params), each epoch (12 metrics and 4 tags in one batch), and its end (config,
confusion matrix and cluster gallery drawn from a real checkpoint summary and uploaded, status,
run closed). The trial objects stand in for Tune's ``Trial`` with the attributes the logger reads.

From the per-epoch rate it prints the number of concurrently running trials the logger keeps up
with for a given epoch length, and the share of the driver's time it takes at that load.
"""

import argparse
import os
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from types import SimpleNamespace
from pathlib import Path

import pyarrow.fs
from ray import tune

from iic.config import IICConfig
from iic.train import Trainer
from search.mlflow_runs import SearchRecord, open_search_run, prepare_experiment
from search.tracking import MLflowTrialLogger
from search.space import Preset
from trainables.iic_trainable import SUMMARY_FILE, write_cluster_summary


@dataclass
class StandInTrial:
    """What MLflowTrialLogger (and the reconciliation at the end) reads of a Tune trial; its
    result.json is absent, so the reconciliation finds nothing to add."""

    trial_id: str
    config: dict
    checkpoint: tune.Checkpoint | None = None
    last_result: dict = field(default_factory=dict)
    path: str = "/nonexistent"
    status: str = "RUNNING"
    storage: object = field(default_factory=lambda: SimpleNamespace(storage_filesystem=pyarrow.fs.LocalFileSystem()))
    TERMINATED, ERROR = "TERMINATED", "ERROR"

    def __str__(self) -> str:
        return f"train_iic_{self.trial_id}"


def start_server(folder: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{folder}/server.db",
            "--artifacts-destination",
            str(folder / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2):
                return server, uri
        except OSError:
            if server.poll() is not None or time.time() > deadline:
                raise SystemExit("mlflow server did not start")
            time.sleep(0.5)


def checkpoint_with_summary(folder: Path) -> tune.Checkpoint:
    """A checkpoint folder holding what a trial leaves: the clusters summary of a (tiny) real run."""
    trainer = Trainer(IICConfig(max_samples=240, backbone_width=4, num_subheads=2, epochs=1, device="cpu"))
    trainer.run_epoch()
    write_cluster_summary(trainer, folder / SUMMARY_FILE, per_cluster=8)
    return tune.Checkpoint.from_directory(folder)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracking-uri", help="log here instead of a fresh local `mlflow server`")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=30, help="epochs per trial")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        server, uri = (None, args.tracking_uri) if args.tracking_uri else start_server(scratch)
        try:
            preset = Preset.load("digits")
            experiment_id = prepare_experiment(uri, f"bench-logging-{int(time.time())}")
            parent = open_search_run(uri, experiment_id, "bench", preset, {})
            logger = MLflowTrialLogger(
                SearchRecord(uri, experiment_id, "bench", parent, "bench"), scratch / "report.json", quiet=True
            )
            (scratch / "checkpoint").mkdir()
            checkpoint = checkpoint_with_summary(scratch / "checkpoint")
            config = {
                **preset.config,
                **IICConfig.from_dict(preset.config).to_dict(),
                "gate": {"overclustering": False},
            }
            trials = [StandInTrial(f"{index:05d}", config, checkpoint) for index in range(args.trials)]
            result = {
                "epoch": 0,
                "status": "running",
                "chosen_subhead": 1,
                "node_id": "f" * 56,
                "gpu_ids": "0",
                **{
                    key: 0.5
                    for key in (
                        "cluster_accuracy",
                        "majority_accuracy",
                        "nmi",
                        "ari",
                        "loss",
                        "loss_overcluster",
                        "mutual_information",
                        "largest_cluster_share",
                        "empty_clusters",
                        "cluster_size_entropy",
                        "diagnostic_best_subhead_accuracy",
                        "epoch_seconds",
                    )
                },
            }

            started = time.perf_counter()
            for trial in trials:
                logger.on_trial_start(0, trials, trial)
            start_seconds = (time.perf_counter() - started) / len(trials)

            epoch_seconds = []
            for epoch in range(1, args.epochs + 1):  # trials report in turn, as concurrent trials do
                for trial in trials:
                    began = time.perf_counter()
                    logger.on_trial_result(0, trials, trial, {**result, "epoch": epoch})
                    epoch_seconds.append(time.perf_counter() - began)

            started = time.perf_counter()
            for trial in trials:
                trial.last_result, trial.status = {**result, "status": "completed"}, trial.TERMINATED
                logger.on_trial_complete(0, trials, trial)
            logger.on_experiment_end(trials)  # waits for the endings, drawn on the logger's own thread
            end_seconds = (time.perf_counter() - started) / len(trials)
            assert not logger.failures, logger.failures
        finally:
            if server is not None:
                server.terminate()
                server.wait()

    per_epoch = statistics.mean(epoch_seconds)
    p95 = sorted(epoch_seconds)[int(0.95 * len(epoch_seconds))]
    store = "local `mlflow server` (SQLite) over http" if server is not None else uri
    print(f"MLflow logger throughput against {store}; {args.trials} trials x {args.epochs} epochs")
    print(f"  trial start (run + params):       {start_seconds * 1000:7.1f} ms")
    print(
        f"  one epoch (12 metrics + 4 tags):  {per_epoch * 1000:7.1f} ms  (p95 {p95 * 1000:.1f} ms)  -> {1 / per_epoch:.0f} epochs/s"
    )
    print(
        f"  trial end (3 artifacts, status):  {end_seconds * 1000:7.1f} ms  (drawing the two figures included; off Tune's event loop)"
    )
    print("  concurrent trials the logger keeps up with (at 50% of the driver's time):")
    for epoch_length in (2, 10, 60):
        print(f"    epochs of {epoch_length:>2} s: {0.5 * epoch_length / per_epoch:7.0f} trials")
    print(
        f"\ncommand: python {shlex.join(['benchmarks/mlflow_logging.py', *(argv if argv is not None else sys.argv[1:])])}"
    )


if __name__ == "__main__":
    main()
