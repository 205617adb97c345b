"""How many results a second the search's driver takes: Ray Tune's own work per result, with and
without the MLflow logger on top.

    python benchmarks/tune_driver.py                                  # 4 and 16 trials, 1 MB checkpoints
    python benchmarks/tune_driver.py --trials 8 --checkpoint-kb 45000  # ResNet18-sized checkpoints
    python benchmarks/tune_driver.py --tracking-uri http://127.0.0.1:5077  # the logger against a server
    # (started with: MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow server --backend-store-uri
    #  sqlite:////tmp/srv/server.db --artifacts-destination /tmp/srv/artifacts --port 5077 --workers 1)

A search's driver handles every trial's every epoch: Tune registers the result and its checkpoint
(the trial has already written it to storage), the scheduler (ASHA) and searcher (Optuna) see it,
the callbacks run, and Tune snapshots the experiment now and then. ``benchmarks/mlflow_logging.py``
times the MLflow logger alone; this times the whole loop. Trials here do no training: each reports
``--reports`` results as fast as it can, each with a checkpoint of ``--checkpoint-kb`` and the
metrics a real trial reports. Tune's function trainable waits until the driver has taken a result
before the trial goes on, so the rate at which results arrive is the driver's rate.

On a small machine the trials' processes share the CPUs with the driver, so the figures are a lower
bound for a head node whose CPUs the trials do not use (cluster.yaml's head has 0 CPUs for Ray).
"""

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler

from search.mlflow_runs import SearchRecord, open_search_run, prepare_experiment
from search.tracking import MLflowTrialLogger
from search.space import Preset

METRICS = (
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


def reporting_trial(config: dict) -> None:
    """A trial that only reports: every result with a fresh checkpoint of the given size."""
    payload = os.urandom(config["checkpoint_kb"] * 1024)
    for epoch in range(1, config["reports"] + 1):
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / "checkpoint.pt").write_bytes(payload)
            metrics = {key: 0.5 for key in METRICS}
            tune.report(
                {**metrics, "epoch": epoch, "status": "running", "sent": time.time()},
                checkpoint=tune.Checkpoint.from_directory(folder),
            )


class Arrivals(tune.Callback):
    """When each result reached the driver's callbacks, and how long after the trial sent it."""

    def __init__(self):
        self.times: list[float] = []
        self.delays: list[float] = []

    def on_trial_result(self, iteration, trials, trial, result, **info):
        now = time.time()
        self.times.append(now)
        self.delays.append(now - result["sent"])


def run(trials: int, reports: int, checkpoint_kb: int, storage: Path, tracking_uri: str | None) -> dict:
    arrivals = Arrivals()
    callbacks = [arrivals]
    if tracking_uri:
        experiment_id = prepare_experiment(tracking_uri, f"bench-driver-{time.time_ns()}")
        parent = open_search_run(tracking_uri, experiment_id, "bench", Preset.load("digits"), {})
        callbacks.append(
            MLflowTrialLogger(
                SearchRecord(tracking_uri, experiment_id, "bench", parent, "bench"), storage / "report.json", quiet=True
            )
        )
    tuner = tune.Tuner(
        tune.with_resources(reporting_trial, {"cpu": 1 / trials}),
        param_space={"checkpoint_kb": checkpoint_kb, "reports": reports},
        tune_config=tune.TuneConfig(
            num_samples=trials,
            max_concurrent_trials=trials,
            # The search's scheduler, with a grace period no trial reaches: it judges every result.
            scheduler=ASHAScheduler(metric="cluster_accuracy", mode="max", max_t=reports + 1, grace_period=reports + 1),
        ),
        run_config=tune.RunConfig(
            storage_path=str(storage),
            name=f"driver-{trials}-{tracking_uri is not None}",
            callbacks=callbacks,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            verbose=0,
        ),
    )
    results = tuner.fit()
    assert not results.errors, results.errors
    assert len(arrivals.times) == trials * reports, len(arrivals.times)
    # Steady state: from the moment every trial is reporting (each has sent a tenth of its results)
    # to the first trial's end.
    steady = sorted(arrivals.times)[trials * max(1, reports // 10) : trials * (reports - 1)]
    return {
        "results_per_second": (len(steady) - 1) / (steady[-1] - steady[0]),
        "delay_p50": statistics.median(arrivals.delays),
        "delay_p95": sorted(arrivals.delays)[int(0.95 * len(arrivals.delays))],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, nargs="+", default=[4, 16], help="concurrent trials (one run each)")
    parser.add_argument("--reports", type=int, default=60, help="results per trial")
    parser.add_argument(
        "--checkpoint-kb", type=int, default=1000, help="checkpoint size (the digits ClusterNet's is ~1 MB)"
    )
    parser.add_argument("--tracking-uri", help="the MLflow logger's store (default: a fresh SQLite file)")
    parser.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs of the local Ray")
    args = parser.parse_args(argv)

    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    rows = []
    try:
        for trials in args.trials:
            for with_mlflow in (False, True):
                with tempfile.TemporaryDirectory() as scratch:
                    scratch = Path(scratch)
                    uri = (args.tracking_uri or f"sqlite:///{scratch}/mlflow.db") if with_mlflow else None
                    rows.append((trials, with_mlflow, run(trials, args.reports, args.checkpoint_kb, scratch, uri)))
    finally:
        ray.shutdown()

    print(
        f"Tune driver throughput: {args.reports} results a trial, {args.checkpoint_kb} KB checkpoint each, "
        f"local storage, ASHA, {args.cpus} CPUs shared by the driver and the trials"
    )
    on = "on: " + (args.tracking_uri or "SQLite file")
    print(f"  {'trials':>6}  {'MLflow logger':<{len(on)}}  {'results/s':>9}  {'delay p50':>9}  {'delay p95':>9}")
    for trials, with_mlflow, figures in rows:
        print(
            f"  {trials:>6}  {on if with_mlflow else 'off':<{len(on)}}  {figures['results_per_second']:>9.1f}  "
            f"{figures['delay_p50'] * 1000:>7.0f} ms  {figures['delay_p95'] * 1000:>7.0f} ms"
        )
    print("  (delay: from the trial's report to the driver's callbacks)")
    print(
        f"\ncommand: python {shlex.join(['benchmarks/tune_driver.py', *(argv if argv is not None else sys.argv[1:])])}"
    )


if __name__ == "__main__":
    main()
