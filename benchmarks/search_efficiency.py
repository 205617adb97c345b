"""Does Optuna TPE + ASHA find good IIC settings with less compute than random search?

    python benchmarks/search_efficiency.py                        # digits preset, 3 seeds
    python benchmarks/search_efficiency.py --budget 300 --seeds 0 1 2 3

Both strategies search the same preset space on the same data with the same budget of
trial-epochs (every epoch any trial trains counts one); random search runs every trial to the end
(FIFO), TPE + ASHA stops weak trials at ASHA's rungs. Collapse stopping is off for both, so that
only the strategies differ. The table gives the best Hungarian accuracy
reached after each share of the budget, per seed and on average. No MLflow: this measures the
search strategy alone.
"""

import argparse
import dataclasses
import shlex
import sys
import time

import numpy as np
import optuna
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from search.space import Preset
from trainables.iic_trainable import TrialSettings, train_iic

SHARES = (0.25, 0.5, 0.75, 1.0)


class EpochBudget(tune.Stopper):
    """Ends the whole experiment once trials have trained ``budget`` epochs in total."""

    def __init__(self, budget: int):
        self.budget = budget
        self.spent = 0

    def __call__(self, trial_id, result):
        self.spent += 1
        return False

    def stop_all(self):
        return self.spent >= self.budget


def run_strategy(
    strategy: str, preset: Preset, budget: int, seed: int, concurrency: int, storage: str
) -> list[tuple[int, float]]:
    """(trial-epochs spent, accuracy) of every result, in the order they arrived."""
    epochs = preset.config["epochs"]
    if strategy == "tpe+asha":
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=5)
        scheduler = ASHAScheduler(
            time_attr="training_iteration", max_t=epochs, grace_period=max(1, epochs // 4), reduction_factor=3
        )
    else:
        sampler = optuna.samplers.RandomSampler(seed=seed)
        scheduler = FIFOScheduler()
    searcher = OptunaSearch(space=preset.space(seed=0), metric="cluster_accuracy", mode="max", sampler=sampler)
    tuner = tune.Tuner(
        tune.with_resources(
            tune.with_parameters(train_iic, settings=TrialSettings(collapse_share=1.1, collapse_information=0.0)),
            {"cpu": preset.search.cpus_per_trial},
        ),
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=concurrency),
            scheduler=scheduler,
            metric="cluster_accuracy",
            mode="max",
            num_samples=10_000,
        ),
        run_config=tune.RunConfig(
            name=f"{strategy}-seed{seed}-{int(time.time())}", storage_path=storage, stop=EpochBudget(budget), verbose=0
        ),
    )
    results = tuner.fit()
    events = []
    for result in results:
        frame = result.metrics_dataframe
        if frame is not None and len(frame):
            events += list(zip(frame["timestamp"], frame["time_total_s"], frame["cluster_accuracy"]))
    events.sort()  # by wall-clock arrival
    return [(spent + 1, accuracy) for spent, (_, _, accuracy) in enumerate(events)]


def best_at(curve: list[tuple[int, float]], spent: int) -> float:
    reached = [accuracy for epochs, accuracy in curve if epochs <= spent]
    return max(reached) if reached else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="digits")
    parser.add_argument("--budget", type=int, default=200, help="trial-epochs per search")
    parser.add_argument("--epochs", type=int, default=20, help="epochs of a full trial")
    parser.add_argument("--max-samples", type=int, default=600, help="images of the dataset used (speed)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--concurrency", type=int, help="trials at once (default: the preset's)")
    parser.add_argument("--storage", default="/tmp/iic-search-efficiency")
    args = parser.parse_args()

    preset = Preset.load(args.preset)
    preset = dataclasses.replace(
        preset, config={**preset.config, "epochs": args.epochs, "max_samples": args.max_samples}
    )
    ray.init(include_dashboard=False, log_to_driver=False)
    rows = {}
    started = time.perf_counter()
    for strategy in ("random", "tpe+asha"):
        for seed in args.seeds:
            curve = run_strategy(
                strategy, preset, args.budget, seed, args.concurrency or preset.search.max_concurrent, args.storage
            )
            rows[(strategy, seed)] = [best_at(curve, int(share * args.budget)) for share in SHARES]
            print(f"{strategy:<9} seed {seed}: " + "  ".join(f"{v:.3f}" for v in rows[(strategy, seed)]), flush=True)
    ray.shutdown()

    header = "  ".join(f"{int(share * args.budget):>5}" for share in SHARES)
    print(
        f"\nbest Hungarian accuracy after N trial-epochs ({args.preset}, {args.max_samples} images, {args.epochs}-epoch trials)"
    )
    print(f"{'strategy':<10} {'seed':>4}  {header}")
    for (strategy, seed), values in rows.items():
        print(f"{strategy:<10} {seed:>4}  " + "  ".join(f"{v:>5.3f}" for v in values))
    for strategy in ("random", "tpe+asha"):
        mean = np.nanmean([rows[(strategy, s)] for s in args.seeds], axis=0)
        print(f"{strategy:<10} {'mean':>4}  " + "  ".join(f"{v:>5.3f}" for v in mean))
    print(f"total {time.perf_counter() - started:.0f} s")
    print("command: python " + " ".join(shlex.quote(a) for a in sys.argv))


if __name__ == "__main__":
    main()
