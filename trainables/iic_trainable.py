"""One IIC training run as a Ray Tune function trainable.

Every epoch it reports the run's metrics together with a checkpoint, so that Tune's scheduler can
stop it, a crashed worker can be retried from its last epoch, and an interrupted search can be
resumed. The checkpoint folder holds the trainer state (``checkpoint.pt``) and a small summary of
the clustering (``clusters.npz``: confusion matrix, cluster sizes, sample images per cluster) from
which the search's driver draws the trial's figures, wherever the trial ran.
"""

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray
from ray import tune

from iic.config import IICConfig
from iic.plots import cluster_samples
from iic.train import Trainer, train

CHECKPOINT_FILE = "checkpoint.pt"
SUMMARY_FILE = "clusters.npz"
# Trial-config key of the search's gates (e.g. overclustering on/off), apart from IICConfig fields.
GATE_KEY = "gate"


@dataclass(frozen=True)
class TrialSettings:
    """Search-level policy for each trial (not part of the model's config)."""

    collapse_share: float = 0.6  # a cluster holding at least this share of the data ...
    collapse_patience: int = 5  # ... for this many epochs in a row: the trial has collapsed
    collapse_information: float = 0.01  # so has one whose held-out mutual information (nats) stays below this
    # (the information test starts after 2 x collapse_patience epochs)
    gallery_per_cluster: int = 8


def trial_iic_config(trial_config: dict) -> IICConfig:
    """The IICConfig of a trial: its config without the search's gates."""
    return IICConfig.from_dict({key: value for key, value in trial_config.items() if key != GATE_KEY})


def has_collapsed(history: list[dict], share: float, patience: int, information: float = 0.0) -> bool:
    """For the last ``patience`` epochs, either one cluster has held ``share`` or more of the data
    (the seed study's failure: a single cluster taking most images), or the assignments have carried
    less than ``information`` nats about the image (every image given the same soft, near-uniform
    prediction: a degenerate optimum that λ > 1 rewards). Neither tends to recover."""
    recent = history[-patience:]
    if len(recent) < patience:
        return False
    if all(m.get("largest_cluster_share", 0.0) >= share for m in recent):
        return True
    # Information starts near zero while the heads are still soft: judge it only after a warm-up.
    return len(history) >= 2 * patience and all(m.get("mutual_information", float("inf")) < information for m in recent)


def write_cluster_summary(trainer: Trainer, path: Path, per_cluster: int) -> None:
    result = trainer.result()
    samples = cluster_samples(trainer.data.images, result.clusters, trainer.config.num_clusters, per_cluster, seed=trainer.config.seed)
    confusion = result.confusion if result.confusion is not None else np.zeros((0, 0), dtype=np.int64)
    np.savez_compressed(path, confusion=confusion, class_names=np.array(result.class_names), **samples)


def train_iic(config: dict, settings: TrialSettings = TrialSettings()) -> None:
    """Ray Tune function trainable: ``tune.with_parameters(train_iic, settings=...)``."""
    iic_config = trial_iic_config(config)
    # Where the trial runs, for the records (a retried trial may land on another node).
    placement = {"node_id": ray.get_runtime_context().get_node_id(), "gpu_ids": ",".join(map(str, ray.get_gpu_ids()))}

    def report(metrics: dict, trainer: Trainer) -> bool:
        if trainer.status == "running" and has_collapsed(
            trainer.history, settings.collapse_share, settings.collapse_patience, settings.collapse_information
        ):
            trainer.status = metrics["status"] = "collapsed"
        with tempfile.TemporaryDirectory() as folder:
            trainer.save_checkpoint(Path(folder) / CHECKPOINT_FILE)
            write_cluster_summary(trainer, Path(folder) / SUMMARY_FILE, settings.gallery_per_cluster)
            tune.report({**metrics, **placement}, checkpoint=tune.Checkpoint.from_directory(folder))
        return trainer.status != "running"

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        train(iic_config, on_epoch=report)
        return
    with tempfile.TemporaryDirectory() as scratch:
        # Copy the state out of the (possibly temporary, possibly remote) checkpoint folder.
        state = Path(scratch) / CHECKPOINT_FILE
        with checkpoint.as_directory() as folder:
            shutil.copyfile(Path(folder) / CHECKPOINT_FILE, state)
        train(iic_config, on_epoch=report, resume_from=state)
