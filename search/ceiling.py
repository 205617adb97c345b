"""The supervised ceiling of a search: the same backbone trained on the labels, once, as a Ray
trial, so that the search's best clustering accuracy can be read against what the images allow.

A clustering accuracy far below what a supervised model reaches on the same images says the
clustering failed, rather than the data being hard. ``run_ceiling`` trains
``trainables.ceiling_trainable.train_ceiling`` on the search's base config (the preset's fixed
settings, IICConfig's defaults for what the search varies) and first seed, as its own Tune
experiment ``<search>-ceiling`` logged as an MLflow child run tagged ``iic.role=ceiling``.
"""

import math
from dataclasses import dataclass

from mlflow.tracking import MlflowClient
from ray import tune

from iic.config import IICConfig
from iic.supervised import ACCURACY
from search.driver import experiment_dir, trial_dirname, trial_resources
from search.preset import Preset
from search.tracking.logger import MLflowTrialLogger
from trainables.ceiling_trainable import train_ceiling
from trainables.iic_trainable import SEEDS_KEY


@dataclass(frozen=True)
class Ceiling:
    accuracy: float  # on the held-out split
    held_out_split: str
    trial_id: str

    def ratio(self, best: float | None) -> float | None:
        """The best IIC accuracy as a share of the ceiling."""
        return best / self.accuracy if best is not None and math.isfinite(best) and self.accuracy > 0 else None


def run_ceiling(
    preset: Preset, seeds: list[int], name: str, storage_path: str, logger: MLflowTrialLogger, resume: bool = False
) -> Ceiling | None:
    """Train the supervised ceiling of ``preset``'s base config on ``seeds[0]``; None if it failed."""
    folder = experiment_dir(storage_path, name)
    trainable = tune.with_resources(train_ceiling, trial_resources(preset))
    if resume and tune.Tuner.can_restore(folder):
        results = tune.Tuner.restore(folder, trainable=trainable, resume_unfinished=True, resume_errored=True).fit()
    else:
        config = {**IICConfig.from_dict(preset.config).to_dict(), SEEDS_KEY: list(seeds)}
        results = tune.Tuner(
            trainable,
            param_space=config,
            tune_config=tune.TuneConfig(num_samples=1, trial_dirname_creator=trial_dirname),
            run_config=tune.RunConfig(
                name=name,
                storage_path=storage_path,
                callbacks=[logger],
                failure_config=tune.FailureConfig(max_failures=preset.search.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                verbose=0,
            ),
        ).fit()
    [result] = list(results)
    metrics = result.metrics or {}
    if result.error is not None or ACCURACY not in metrics:
        return None
    return Ceiling(float(metrics[ACCURACY]), str(metrics.get("held_out_split", "")), str(metrics.get("trial_id", "")))


def record_ceiling(client: MlflowClient, run_id: str, ceiling: Ceiling, best: float | None) -> None:
    """The parent run's ``ceiling_accuracy`` and ``best_to_ceiling`` (the best IIC accuracy's share of it)."""
    client.log_metric(run_id, "ceiling_accuracy", ceiling.accuracy)
    client.set_tag(run_id, "iic.ceiling_held_out_split", ceiling.held_out_split)
    if ceiling.ratio(best) is not None:
        client.log_metric(run_id, "best_to_ceiling", ceiling.ratio(best))


def ceiling_line(ceiling: Ceiling, best: float | None, best_label: str) -> str:
    ratio = ceiling.ratio(best)
    against = f"; best IIC accuracy {best:.3f} ({best_label}) is {ratio:.0%} of it" if ratio is not None else ""
    held_out = f"same backbone on the labels, held out: {ceiling.held_out_split}"
    return f"Supervised ceiling ({held_out}): {ceiling.accuracy:.3f}{against}"
