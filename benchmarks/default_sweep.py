"""Sweep candidate defaults over many seeds at once: each candidate trains all its seeds as one
stacked model, several candidates run side by side in worker processes.

    python benchmarks/default_sweep.py --seeds 100 101 102 103 104 105 106 107 108 109 --jobs 6 \
        --candidate base --candidate oc50:overcluster_k=50 --candidate bs32:batch_size=32,lr=0.002

A candidate is ``NAME`` or ``NAME:key=value,key=value`` (IICConfig fields, values parsed as YAML)
over ``--config`` (default: IICConfig's defaults). Prints, per candidate, the Hungarian accuracy
over the seeds (mean, min, sd), the mean accuracy a user gets by training 3 seeds and keeping the
one with the highest held-out mutual information (seeds taken three at a time, in order; 'every 3':
over every triple of the seeds), and the seconds it took; ``--out FILE`` also writes every seed's
figures as JSON.

This is the tool that chooses defaults, so its seeds are tuning seeds: report a chosen default
with ``benchmarks/digits_quality.py`` on other seeds.
"""

import argparse
import json
import multiprocessing
import shlex
import sys
import time

import numpy as np
import torch

from iic.config import IICConfig
from iic.seeds import label_free_best_of, label_free_best_of_every
from iic.train import train


def parse_candidate(text: str) -> tuple[str, list[str]]:
    name, _, assignments = text.partition(":")
    return name, [a for a in assignments.split(",") if a]


def run_candidate(job: tuple[str, dict, list[int], list[int]]) -> dict:
    name, config_dict, seeds, report_epochs = job
    # Full fp32 convolutions on a GPU (cuDNN would use TF32), closer to the CPU runs a default is reported on.
    torch.backends.cudnn.allow_tf32 = False
    started = time.perf_counter()
    result = train(IICConfig.from_dict(config_dict), seeds=seeds)
    at_epoch = {
        epoch: float(np.mean([run.history[epoch - 1]["cluster_accuracy"] for run in result.seeds]))
        for epoch in report_epochs
        if all(len(run.history) >= epoch for run in result.seeds)
    }
    per_seed = [
        {
            "seed": run.seed,
            **{
                k: run.metrics.get(k)
                for k in ("cluster_accuracy", "mutual_information", "nmi", "largest_cluster_share")
            },
        }
        for run in result.seeds
    ]
    accuracy = np.array([m["cluster_accuracy"] for m in per_seed], dtype=float)
    return {
        "name": name,
        "status": str(result.status),
        "per_seed": per_seed,
        "mean": float(accuracy.mean()),
        "min": float(accuracy.min()),
        "sd": float(accuracy.std(ddof=1)) if len(accuracy) > 1 else 0.0,
        "best_of_3": label_free_best_of(per_seed),
        "best_of_3_every_triple": label_free_best_of_every(per_seed),
        "seconds": time.perf_counter() - started,
        "mean_at_epoch": at_epoch,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config the candidates override (default: IICConfig defaults)")
    parser.add_argument("--candidate", action="append", required=True, help="NAME or NAME:key=value,... (repeatable)")
    parser.add_argument(
        "--seeds", type=int, nargs="+", required=True, help="tuning seeds (never the seeds a default is reported on)"
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="applied to every candidate"
    )
    parser.add_argument("--jobs", type=int, default=1, help="candidates trained at once, each in its own process")
    parser.add_argument("--out", help="write every result as JSON here")
    parser.add_argument(
        "--report-epochs", type=int, nargs="*", default=[], help="also print the mean accuracy at these epochs"
    )
    args = parser.parse_args()

    base = (IICConfig.from_yaml(args.config) if args.config else IICConfig()).with_overrides(args.overrides)
    jobs = []
    for text in args.candidate:
        name, assignments = parse_candidate(text)
        jobs.append((name, base.with_overrides(assignments).validate().to_dict(), args.seeds, args.report_epochs))
    print(
        f"{len(jobs)} candidates x seeds {' '.join(map(str, args.seeds))}; torch {torch.__version__}"
        + (
            f", {torch.cuda.get_device_name()}"
            if torch.cuda.is_available()
            else f", CPU ({torch.get_num_threads()} threads)"
        ),
        flush=True,
    )
    at = "".join(f" {'@' + str(e):>6}" for e in args.report_epochs)
    print(
        f"{'candidate':<28} {'mean':>6} {'min':>6} {'sd':>6} {'best of 3':>9} {'every 3':>7}{at} {'seconds':>7}  status",
        flush=True,
    )
    results = []
    context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
    with context.Pool(args.jobs) if args.jobs > 1 else _InProcess() as pool:
        for r in pool.imap_unordered(run_candidate, jobs):
            results.append(r)
            at = "".join(f" {r['mean_at_epoch'].get(e, float('nan')):>6.3f}" for e in args.report_epochs)
            print(
                f"{r['name']:<28} {r['mean']:>6.3f} {r['min']:>6.3f} {r['sd']:>6.3f} {r['best_of_3']:>9.3f} {r['best_of_3_every_triple']:>7.3f}{at} {r['seconds']:>7.0f}  {r['status']}",
                flush=True,
            )
            if args.out:  # after every candidate: a run cut short keeps what it measured
                with open(args.out, "w") as handle:
                    json.dump({"command": sys.argv, "seeds": args.seeds, "results": results}, handle, indent=1)
    print("command: python " + " ".join(shlex.quote(a) for a in sys.argv))


class _InProcess:
    """A pool of one: the candidates in this process, one after another."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def imap_unordered(self, function, jobs):
        return map(function, jobs)


if __name__ == "__main__":
    main()
