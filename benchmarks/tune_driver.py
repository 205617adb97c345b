"""How many results a second a search's driver takes, and what the MLflow logger costs of it.

    python -m benchmarks.tune_driver                                   # 4 and 16 trials, 1 MB checkpoints
    python -m benchmarks.tune_driver --trials 8 --checkpoint-kb 45000  # ResNet18-sized checkpoints
    python -m benchmarks.tune_driver --tracking-uri http://127.0.0.1:5000   # the logger against a server

Trials here do no training: each reports ``--reports`` results as fast as it can, with a checkpoint of
``--checkpoint-kb`` and the metrics (and, last, the clusters summary) a real trial reports. Tune waits
until the driver has taken a result before the trial goes on, so results arrive at the driver's rate.
Each trial count runs without and with the logger, which is timed per event. Trials share the CPUs
with the driver here: the figures are a lower bound for a head node whose CPUs trials do not use.
"""

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler

from benchmarks.common import command, table
from iic.config import IICConfig
from iic.trainer import train
from search.driver import experiment_dir
from search.preset import Preset
from search.tracking.logger import MLflowTrialLogger
from search.tracking.runs import SearchRecord, open_search_run, prepare_experiment
from trainables.iic_trainable import SUMMARY_FILE, write_cluster_summary

METRICS = (  # what a real trial reports each epoch
    "cluster_accuracy majority_accuracy nmi ari loss loss_overcluster mutual_information largest_cluster_share "
    "empty_clusters cluster_size_entropy diagnostic_best_subhead_accuracy epoch_seconds"
).split()
EVENTS = ("on_trial_start", "on_trial_result", "on_trial_complete", "on_experiment_end")


def reporting_trial(config: dict, reports: int, checkpoint_kb: int, summary: bytes) -> None:
    """A trial that only reports: every result with a fresh checkpoint, the last with a clusters summary."""
    payload = os.urandom(checkpoint_kb * 1024)
    for epoch in range(1, reports + 1):
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / "checkpoint.pt").write_bytes(payload)
            if epoch == reports:
                (Path(folder) / SUMMARY_FILE).write_bytes(summary)
            metrics = {key: 0.5 for key in METRICS}
            status = "completed" if epoch == reports else "running"
            tune.report(
                {**metrics, "epoch": epoch, "status": status, "chosen_subhead": 1, "sent": time.time()},
                checkpoint=tune.Checkpoint.from_directory(folder),
            )


def clusters_summary(folder: Path) -> bytes:
    """The clusters summary a trial's checkpoint holds, from a tiny real run."""
    config = IICConfig(max_samples=240, backbone_width=4, num_subheads=2, epochs=1, device="cpu")
    train(config, on_epoch=lambda metrics, trainer: write_cluster_summary(trainer, folder / SUMMARY_FILE, 8))
    return (folder / SUMMARY_FILE).read_bytes()


class Arrivals(tune.Callback):
    """When each result reached the driver's callbacks, and how long after the trial sent it."""

    def __init__(self):
        self.times: list[float] = []
        self.delays: list[float] = []

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.times.append(time.time())
        self.delays.append(self.times[-1] - result["sent"])


def timed(logger: MLflowTrialLogger, seconds: dict[str, list[float]]) -> MLflowTrialLogger:
    """The logger, with the seconds each of its event handlers takes recorded in ``seconds``."""
    for event in EVENTS:
        handle = getattr(logger, event)

        def handler(*args, _handle=handle, _event=event, **kwargs):
            began = time.perf_counter()
            try:
                return _handle(*args, **kwargs)
            finally:
                seconds.setdefault(_event, []).append(time.perf_counter() - began)

        setattr(logger, event, handler)
    return logger


def run_name(trials: int, tracking_uri: str | None) -> str:
    return f"driver-{trials}-{tracking_uri is not None}"


def run(args, trials: int, summary: bytes, storage: Path, tracking_uri: str | None) -> dict:
    arrivals, seconds = Arrivals(), {}
    callbacks, logger = [arrivals], None
    preset = Preset.load("digits")
    if tracking_uri:
        experiment_id = prepare_experiment(tracking_uri, f"bench-driver-{time.time_ns()}")
        parent = open_search_run(tracking_uri, experiment_id, "bench", preset, {})
        record = SearchRecord(tracking_uri, experiment_id, "bench", parent, "bench")
        folder = experiment_dir(str(storage), run_name(trials, tracking_uri))
        logger = timed(MLflowTrialLogger(record, storage / "report.json", folder, quiet=True), seconds)
        callbacks.append(logger)
    trainable = tune.with_parameters(
        reporting_trial, reports=args.reports, checkpoint_kb=args.checkpoint_kb, summary=summary
    )
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1 / trials}),
        param_space={**IICConfig.from_dict(preset.config).to_dict(), "gate": {"overclustering": False}},
        tune_config=tune.TuneConfig(
            num_samples=trials,
            max_concurrent_trials=trials,
            # The search's scheduler, with a grace period no trial reaches: it judges every result.
            scheduler=ASHAScheduler(
                metric="cluster_accuracy", mode="max", max_t=args.reports + 1, grace_period=args.reports + 1
            ),
        ),
        run_config=tune.RunConfig(
            storage_path=str(storage),
            name=run_name(trials, tracking_uri),
            callbacks=callbacks,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            verbose=0,
        ),
    )
    results = tuner.fit()
    assert not results.errors, results.errors
    assert len(arrivals.times) == trials * args.reports, len(arrivals.times)
    assert logger is None or not logger.failures, logger.failures
    # Steady state: from when every trial is reporting (each has sent a tenth of its results) to the first one's end.
    steady = sorted(arrivals.times)[trials * max(1, args.reports // 10) : trials * (args.reports - 1)]
    return {
        "results_per_second": (len(steady) - 1) / (steady[-1] - steady[0]),
        "delay_p50": statistics.median(arrivals.delays),
        "delay_p95": sorted(arrivals.delays)[int(0.95 * len(arrivals.delays))],
        "logger": {event: statistics.mean(values) for event, values in seconds.items()},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, nargs="+", default=[4, 16], help="concurrent trials (one run each)")
    parser.add_argument("--reports", type=int, default=60, help="results per trial")
    parser.add_argument("--checkpoint-kb", type=int, default=1000, help="checkpoint size (digits' ClusterNet: ~1 MB)")
    parser.add_argument("--tracking-uri", help="the logger's store (default: a fresh SQLite file)")
    parser.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs of the local Ray")
    args = parser.parse_args(argv)

    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        summary = clusters_summary(scratch)
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        try:
            for trials in args.trials:
                for with_logger in (False, True):
                    folder = Path(tempfile.mkdtemp(dir=scratch))
                    logged_to = (args.tracking_uri or f"sqlite:///{folder}/mlflow.db") if with_logger else None
                    rows.append((trials, with_logger, run(args, trials, summary, folder, logged_to)))
        finally:
            ray.shutdown()

    store = args.tracking_uri or "a SQLite file"
    print(
        f"Tune driver throughput: {args.reports} results a trial, {args.checkpoint_kb} KB checkpoint each, "
        f"local storage, ASHA, {args.cpus} CPUs shared by the driver and the trials; the logger on {store}"
    )
    header = ["trials", "logger", "results/s", "delay p50 ms", "delay p95 ms"]
    cells = (
        [f"{f['results_per_second']:.1f}", f"{f['delay_p50'] * 1e3:.0f}", f"{f['delay_p95'] * 1e3:.0f}"]
        for *_, f in rows
    )
    print(table(header, [[n, "on" if on else "off", *c] for (n, on, _), c in zip(rows, cells, strict=True)]))
    print("  (delay: from the trial's report to the driver's callbacks)")
    logger = rows[-1][2]["logger"]
    print(f"MLflow logger, mean ms an event on the driver ({rows[-1][0]} trials):")
    print("  " + "  ".join(f"{event.removeprefix('on_')} {logger[event] * 1000:.1f}" for event in EVENTS))
    print("  (a trial's figures, status and end are written on the logger's own thread; experiment_end waits for them)")
    for epoch_length in (2, 10, 60):
        keeps_up = 0.5 * epoch_length / logger["on_trial_result"]
        print(f"  epochs of {epoch_length:>2} s: it keeps up with {keeps_up:.0f} trials at half the driver's time")
    print("\ncommand: " + command("tune_driver", argv))


if __name__ == "__main__":
    main()
