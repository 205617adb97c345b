"""One IIC training run as a Ray Tune function trainable.

Every epoch it reports the run's metrics together with a checkpoint, so that Tune's scheduler can
stop it, a crashed worker can be retried from its last epoch, and an interrupted search can be
resumed. The checkpoint folder holds the trainer state (``checkpoint.pt``) and a small summary of
the clustering (``clusters.npz``: confusion matrix, cluster sizes, sample images per cluster) from
which the search's driver draws the trial's figures, wherever the trial ran.

A trial trains its config on the seeds listed under ``seeds`` in its config (all at once, as one
stacked model) and reports their mean as each metric, with the spread (see ``iic.seeds``).

Under population-based training Tune restarts a trial from another trial's checkpoint with new
values of the schedulable fields (``IICConfig.SCHEDULABLE_FIELDS``); anything else that differs is
refused. A trial whose config says ``pbt`` (or holds a schedule) reports every epoch the values in
force as ``schedule.<field>`` and its complete schedule from epoch 1 (``schedule``: the donors'
epochs, then its own); its first result after taking over another trial's checkpoint says whose
(``exploited_from``) and after which epoch (``exploit_epoch``). A PBT trial does not stop itself
when it collapses: PBT replaces it with a better trial's state (synchronous PBT would wait for ever
for a trial that ended early); it is labelled collapsed if it still is at its last epoch.
``trial_finished`` is the stopper PBT needs: a trial whose result says it ended ends there, rather
than being paused at a perturbation point and restarted.
"""

import json
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import ray
from ray import tune

from iic.checkpoint import CHECKPOINT_FILE
from iic.config import IICConfig
from iic.loop import StopReason
from iic.plots import cluster_samples
from iic.seeds import COLLAPSED_METRIC, COLLAPSED_SEEDS, per_seed_values
from iic.status import RunStatus
from iic.trainer import Trainer, train
from trainables.collapse import TrialSettings, collapse_ending

SUMMARY_FILE = "clusters.npz"
WRITER_FILE = "writer.json"  # which trial wrote the checkpoint, after which epoch
# Trial-config keys apart from IICConfig fields: the search's gates (e.g. overclustering on/off),
# the seeds the trial trains its config on, (for a confirmation) the trial it confirms, and whether
# it is a member of a population-based training.
GATE_KEY = "gate"
SEEDS_KEY = "seeds"
SOURCE_KEY = "confirms"
PBT_KEY = "pbt"
TRIAL_KEYS = (GATE_KEY, SEEDS_KEY, SOURCE_KEY, PBT_KEY)
# Result keys of a scheduled trial: the values in force (schedule.lr, ...), its complete schedule
# (JSON text, as in a trial config: Tune's loggers take scalars and text), and after an exploit whose
# checkpoint it took.
SCHEDULE_METRIC_PREFIX = "schedule."
SCHEDULE_KEY = "schedule"  # also IICConfig's field
EXPLOITED_FROM_KEY = "exploited_from"
EXPLOIT_EPOCH_KEY = "exploit_epoch"


def trial_iic_config(trial_config: dict, result: dict | None = None) -> IICConfig:
    """The IICConfig of a trial: its config without the search's own keys (TRIAL_KEYS), following
    the complete schedule its ``result`` reports, if any (under PBT, Tune's config of a trial holds
    only the values of its latest exploit)."""
    values = {key: value for key, value in trial_config.items() if key not in TRIAL_KEYS}
    if isinstance(values.get(SCHEDULE_KEY), str):
        values[SCHEDULE_KEY] = json.loads(values[SCHEDULE_KEY])
    config = IICConfig.from_dict(values)
    schedule = (result or {}).get(SCHEDULE_KEY)
    return config.with_schedule(json.loads(schedule)) if schedule else config


def trial_config_values(config: IICConfig) -> dict:
    """An IICConfig as the fields of a trial config: a schedule as JSON text, since Tune's variant
    generator walks into lists and cannot fill in points whose lists differ."""
    values = config.to_dict()
    if config.schedule is not None:
        values[SCHEDULE_KEY] = json.dumps(config.schedule)
    return values


def trial_seeds(trial_config: dict) -> list[int]:
    """The seeds a trial trains on: its ``seeds``, else its config's one seed."""
    return list(trial_config.get(SEEDS_KEY) or [trial_iic_config(trial_config).seed])


def trial_finished(trial_id: str, result: dict) -> bool:
    """Tune stopper: a result whose status is final (completed, collapsed, diverged) ends the trial."""
    return result.get("status", RunStatus.RUNNING) != RunStatus.RUNNING


def write_cluster_summary(trainer: Trainer, path: Path, per_cluster: int) -> None:
    result = trainer.result()
    samples = cluster_samples(
        trainer.data.images, result.clusters, trainer.config.num_clusters, per_cluster, seed=trainer.config.seed
    )
    confusion = result.confusion if result.confusion is not None else np.zeros((0, 0), dtype=np.int64)
    np.savez_compressed(path, confusion=confusion, class_names=np.array(result.class_names), **samples)


def placement() -> dict:
    """Where the trial runs, for the records (a retried trial may land on another node)."""
    return {"node_id": ray.get_runtime_context().get_node_id(), "gpu_ids": ",".join(map(str, ray.get_gpu_ids()))}


def schedule_report(config: IICConfig, epoch: int) -> dict:
    """What a scheduled trial reports after ``epoch``: the values in force, its complete schedule."""
    in_force = {f"{SCHEDULE_METRIC_PREFIX}{name}": value for name, value in config.values_at(epoch).items()}
    return {**in_force, SCHEDULE_KEY: json.dumps(config.full_schedule())}


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
    """The trainer state of the checkpoint Tune restores this trial from, as a local file (with the
    checkpoint's WRITER_FILE beside it, if it has one), or None for a trial that starts afresh."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        yield None
        return
    with tempfile.TemporaryDirectory() as scratch:
        # Copy the state out of the (possibly temporary, possibly remote) checkpoint folder.
        state = Path(scratch) / CHECKPOINT_FILE
        with checkpoint.as_directory() as folder:
            shutil.copyfile(Path(folder) / CHECKPOINT_FILE, state)
            if (Path(folder) / WRITER_FILE).is_file():
                shutil.copyfile(Path(folder) / WRITER_FILE, Path(scratch) / WRITER_FILE)
        yield state


def train_iic(config: dict, settings: TrialSettings = TrialSettings()) -> None:  # noqa: B008 - frozen, immutable
    """Ray Tune function trainable: ``tune.with_parameters(train_iic, settings=...)``."""
    iic_config, seeds = trial_iic_config(config), trial_seeds(config)
    trial_id = tune.get_context().get_trial_id()
    in_population = bool(config.get(PBT_KEY))
    scheduled = in_population or iic_config.schedule is not None
    where = placement()
    exploit = {}  # whose checkpoint this trial took over: said once, in its next result

    def write_extra(folder: Path, trainer: Trainer) -> None:
        write_cluster_summary(trainer, folder / SUMMARY_FILE, settings.gallery_per_cluster)
        (folder / WRITER_FILE).write_text(json.dumps({"trial_id": trial_id, "epoch": trainer.epoch}))

    def report(metrics: dict, trainer: Trainer) -> StopReason:
        flags = settings.seeds_collapsed(
            trainer.seed_histories, trainer.seed_of_model, trainer.seeds, trainer.config.num_clusters
        )
        reason = collapse_ending(flags, metrics["status"], in_population)
        extra = {**(schedule_report(trainer.config, trainer.epoch) if scheduled else {}), **exploit}
        exploit.clear()
        collapsed = {COLLAPSED_SEEDS: sum(flags), **per_seed_values(COLLAPSED_METRIC, [float(f) for f in flags])}
        report_with_checkpoint(
            {**metrics, **collapsed, "status": reason or metrics["status"], **where, **extra},
            trainer,
            lambda folder: write_extra(folder, trainer),
        )
        return reason

    with restored_state() as state:
        writer = state.with_name(WRITER_FILE) if state is not None else None
        writer = json.loads(writer.read_text()) if writer is not None and writer.is_file() else {}
        if (
            writer.get("trial_id", trial_id) != trial_id
        ):  # PBT's exploit: another trial's state, this trial's (new) config
            exploit.update({EXPLOITED_FROM_KEY: writer["trial_id"], EXPLOIT_EPOCH_KEY: writer["epoch"]})
        train(iic_config, on_epoch=report, resume_from=state, seeds=seeds)
