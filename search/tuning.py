"""The search stage as Ray Tune runs it: Optuna's TPE proposing and ASHA stopping weak trials, or
population-based training of a population drawn from the space."""

import random
import sys
import time

import optuna
from ray import tune
from ray.tune.schedulers import ASHAScheduler, PopulationBasedTraining
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.basic_variant import BasicVariantGenerator

from iic.config import IICConfig
from search.driver import make_trainable, progress_reporter, space_of, trial_dirname
from search.objectives import OBJECTIVES
from search.plan import SearchPlan
from search.preset import Preset
from search.resumable import ResumableSearch, TrialAwareOptunaSearch
from search.space import clip_to_ranges, mutations, population, search_space
from search.tracking.logger import MLflowTrialLogger
from trainables.iic_trainable import trial_finished


def build_tuner(plan: SearchPlan, logger: MLflowTrialLogger) -> tune.Tuner:
    """The Tuner of a new search's trials, logged by ``logger`` (whose deadline, if any, may end them)."""
    preset, seed, trial_seeds = plan.preset, plan.search_seed, plan.trial_seeds
    if preset.search.scheduler == "pbt":
        tune_config, param_space, run_options = population_based_training(preset, seed, trial_seeds)
    else:
        tune_config, param_space, run_options = tpe_with_asha(preset, seed, plan.warm_points, trial_seeds)
    callbacks = [logger, *run_options.pop("callbacks", [])]
    if logger.deadline is not None:
        run_options["stop"] = tune.stopper.CombinedStopper(*filter(None, [run_options.get("stop"), logger.deadline]))
    return tune.Tuner(
        make_trainable(preset),
        param_space=param_space,
        tune_config=tune_config,
        run_config=tune.RunConfig(
            name=plan.name,
            storage_path=plan.storage_path,
            callbacks=callbacks,
            progress_reporter=progress_reporter(preset),
            failure_config=tune.FailureConfig(max_failures=preset.search.max_failures),
            verbose=1,
            **run_options,
        ),
    )


def tpe_with_asha(
    preset: Preset, seed: int, warm_points: list[dict], trial_seeds: list[int]
) -> tuple[tune.TuneConfig, None, dict]:
    """Tune's config, param space (none: the searcher's) and run options of a TPE + ASHA search."""
    search = preset.search
    epochs = IICConfig.from_dict(preset.config).epochs
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(3, search.num_samples // 3)))
    searcher = TrialAwareOptunaSearch(
        space=search_space(preset, trial_seeds),
        metric=search.objective,
        mode=OBJECTIVES[search.objective],
        points_to_evaluate=warm_points or None,
        sampler=sampler,
    )
    scheduler = ASHAScheduler(
        time_attr="training_iteration",
        metric=search.objective,
        mode=OBJECTIVES[search.objective],
        max_t=epochs,
        grace_period=min(search.grace_period, epochs),
        reduction_factor=search.reduction_factor,
    )
    tune_config = tune.TuneConfig(
        search_alg=ResumableSearch(ConcurrencyLimiter(searcher, max_concurrent=search.max_concurrent)),
        scheduler=scheduler,
        num_samples=search.num_samples,
        time_budget_s=search.time_budget_s,
        trial_dirname_creator=trial_dirname,
        # The next trial starts in the process the last one ended in, not a new one that imports torch again.
        reuse_actors=True,
    )
    return tune_config, None, {"checkpoint_config": tune.CheckpointConfig(num_to_keep=2)}


def population_based_training(preset: Preset, seed: int, trial_seeds: list[int]) -> tuple[tune.TuneConfig, dict, dict]:
    """Tune's config, param space and run options of a PBT search. The population, drawn from the
    space, starts through Tune's variant generator (no searcher: PBT refuses one, and every member
    must exist at once, so no concurrency limit either: the trials take turns on the resources).

    Synchronous PBT: every trial trains to the same epoch before any exploit, so scores are compared
    at equal epochs, a trial continues from a checkpoint of its own epoch (its records never step
    back), and trials that take turns on the resources all get them (asynchronous PBT may keep giving
    the turn to the weak trials that took over paused ones). It waits for every live trial at each
    perturbation point, so PBT trials do not stop themselves when they collapse, and
    ``StalledPopulation`` ends the search should one end early otherwise (diverged, failed)."""
    search, pbt = preset.search, preset.pbt
    random.seed(seed)  # PBT draws its exploits and perturbations from Python's random
    members = population(preset, trial_seeds, seed)
    scheduler = PopulationBasedTraining(
        time_attr="training_iteration",
        metric=search.objective,
        mode=OBJECTIVES[search.objective],
        perturbation_interval=pbt.perturbation_interval,
        quantile_fraction=pbt.quantile_fraction,
        resample_probability=pbt.resample_probability,
        hyperparam_mutations=mutations(preset),
        custom_explore_fn=clip_to_ranges(preset),
        synch=True,
    )
    tune_config = tune.TuneConfig(
        search_alg=BasicVariantGenerator(points_to_evaluate=members),
        scheduler=scheduler,
        num_samples=len(members),
        time_budget_s=search.time_budget_s,
        trial_dirname_creator=trial_dirname,
        # A trial paused at a perturbation point continues in a waiting process instead of a new one.
        reuse_actors=True,
    )
    stalled = StalledPopulation()
    run_options = {
        "stop": stalled,
        "callbacks": [stalled],
        # Every checkpoint is kept: a trial may take over another's after that one has trained on.
        "checkpoint_config": tune.CheckpointConfig(num_to_keep=None),
    }
    return tune_config, space_of(members), run_options


class StalledPopulation(tune.Callback, tune.Stopper):
    """Stops a trial whose result says it ended (``trial_finished``: not paused and restarted by
    PBT), and the whole search when every live trial has been paused for ``patience_s``: synchronous
    PBT then waits for a trial that ended before the perturbation point, and would wait for ever."""

    def __init__(self, patience_s: float = 60.0):
        self.patience_s = patience_s
        self._stalled_since: float | None = None

    def __getstate__(self):
        return {**self.__dict__, "_stalled_since": None}  # pickled with the experiment

    def __call__(self, trial_id: str, result: dict) -> bool:
        return trial_finished(trial_id, result)

    def on_step_end(self, iteration, trials, **info):
        live = [trial for trial in trials if not trial.is_finished()]
        if live and all(trial.status == trial.PAUSED for trial in live):
            if self._stalled_since is None:
                self._stalled_since = time.monotonic()
        else:
            self._stalled_since = None

    def stop_all(self) -> bool:
        if self._stalled_since is None or time.monotonic() - self._stalled_since < self.patience_s:
            return False
        print(
            f"error: every trial of the population has waited {self.patience_s:.0f} s for one that ended early "
            "(diverged or failed); the search ends here",
            file=sys.stderr,
            flush=True,
        )
        return True
