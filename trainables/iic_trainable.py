"""One IIC training run as a Ray Tune function trainable.

Every epoch it reports the run's metrics together with a checkpoint, so that Tune's scheduler can
stop it, a crashed worker can be retried from its last epoch, and an interrupted search can be
resumed. The checkpoint folder holds the trainer state (``checkpoint.pt``) and a small summary of
the clustering (``clusters.npz``: confusion matrix, cluster sizes, sample images per cluster) from
which the search's driver draws the trial's figures, wherever the trial ran.

A trial trains its config on the seeds listed under ``seeds`` in its config (all at once, as one
stacked model) and reports their mean as each metric, with the spread (see ``iic.seeds``).
"""

import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray
from ray import tune

from iic.config import IICConfig
from iic.plots import cluster_samples
from iic.status import RunStatus
from iic.train import CHECKPOINT_FILE, StopReason, Trainer, train

SUMMARY_FILE = "clusters.npz"
# Trial-config keys apart from IICConfig fields: the search's gates (e.g. overclustering on/off),
# the seeds the trial trains its config on, and (for a confirmation) the trial it confirms.
GATE_KEY = "gate"
SEEDS_KEY = "seeds"
SOURCE_KEY = "confirms"
TRIAL_KEYS = (GATE_KEY, SEEDS_KEY, SOURCE_KEY)


@dataclass(frozen=True)
class TrialSettings:
    """Search-level policy for each trial (not part of the model's config)."""

    collapse_share: float = 0.6  # a cluster holding at least this share of the data ...
    collapse_patience: int = 5  # ... for this many epochs in a row: the trial has collapsed
    collapse_information: float = 0.01  # so has one whose held-out mutual information (nats) stays below this
    collapse_warmup: int = 10  # ... for collapse_patience epochs after these first epochs
    gallery_per_cluster: int = 8

    def collapsed(self, history: list[dict]) -> bool:
        return has_collapsed(history, self.collapse_share, self.collapse_patience, self.collapse_information, self.collapse_warmup)


def trial_iic_config(trial_config: dict) -> IICConfig:
    """The IICConfig of a trial: its config without the search's own keys (TRIAL_KEYS)."""
    return IICConfig.from_dict({key: value for key, value in trial_config.items() if key not in TRIAL_KEYS})


def trial_seeds(trial_config: dict) -> list[int]:
    """The seeds a trial trains on: its ``seeds``, else its config's one seed."""
    return list(trial_config.get(SEEDS_KEY) or [trial_iic_config(trial_config).seed])


def has_collapsed(history: list[dict], share: float, patience: int, information: float = 0.0, warmup: int = 0) -> bool:
    """For the last ``patience`` epochs, either one cluster has held ``share`` or more of the data
    (the seed study's failure: a single cluster taking most images), or — judged only on epochs
    after the first ``warmup``, while the heads are still soft — the assignments have carried less
    than ``information`` nats about the image (every image given the same soft, near-uniform
    prediction: a degenerate optimum that λ > 1 rewards). Neither tends to recover."""
    recent = history[-patience:]
    if len(recent) < patience:
        return False
    if all(m.get("largest_cluster_share", 0.0) >= share for m in recent):
        return True
    return len(history) >= warmup + patience and all(m.get("mutual_information", float("inf")) < information for m in recent)


def write_cluster_summary(trainer: Trainer, path: Path, per_cluster: int) -> None:
    result = trainer.result()
    samples = cluster_samples(trainer.data.images, result.clusters, trainer.config.num_clusters, per_cluster, seed=trainer.config.seed)
    confusion = result.confusion if result.confusion is not None else np.zeros((0, 0), dtype=np.int64)
    np.savez_compressed(path, confusion=confusion, class_names=np.array(result.class_names), **samples)


def placement() -> dict:
    """Where the trial runs, for the records (a retried trial may land on another node)."""
    return {"node_id": ray.get_runtime_context().get_node_id(), "gpu_ids": ",".join(map(str, ray.get_gpu_ids()))}


def report_with_checkpoint(metrics: dict, trainer, write_extra: Callable[[Path], None] | None = None) -> None:
    """Report an epoch's metrics to Tune with a checkpoint of ``trainer`` (anything with
    ``save_checkpoint``) and whatever ``write_extra(folder)`` adds to it."""
    # Ray Train would log "Checkpoint successfully created at: ..." for every epoch of every trial.
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as folder:
        trainer.save_checkpoint(Path(folder) / CHECKPOINT_FILE)
        if write_extra is not None:
            write_extra(Path(folder))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


@contextmanager
def restored_state() -> Iterator[Path | None]:
    """The trainer state of the checkpoint Tune restores this trial from, as a local file, or None
    for a trial that starts afresh."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        yield None
        return
    with tempfile.TemporaryDirectory() as scratch:
        # Copy the state out of the (possibly temporary, possibly remote) checkpoint folder.
        state = Path(scratch) / CHECKPOINT_FILE
        with checkpoint.as_directory() as folder:
            shutil.copyfile(Path(folder) / CHECKPOINT_FILE, state)
        yield state


def train_iic(config: dict, settings: TrialSettings = TrialSettings()) -> None:
    """Ray Tune function trainable: ``tune.with_parameters(train_iic, settings=...)``."""
    iic_config, seeds = trial_iic_config(config), trial_seeds(config)
    where = placement()

    def report(metrics: dict, trainer: Trainer) -> StopReason:
        # Collapsed once every seed has: until then the collapsed seeds pull the mean down.
        collapsed = metrics["status"] != RunStatus.DIVERGED and all(settings.collapsed(h) for h in trainer.seed_histories)
        reason = RunStatus.COLLAPSED if collapsed else None
        report_with_checkpoint(
            {**metrics, "status": reason or metrics["status"], **where}, trainer,
            lambda folder: write_cluster_summary(trainer, folder / SUMMARY_FILE, settings.gallery_per_cluster),
        )
        return reason

    with restored_state() as state:
        train(iic_config, on_epoch=report, resume_from=state, seeds=seeds)
