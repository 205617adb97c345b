"""The epoch loop that the IIC trainer and the supervised ceiling share, and how a run ends."""

from pathlib import Path
from typing import Callable

from iic.status import RunStatus

# What an epoch callback may return to end the run: a status (e.g. RunStatus.COLLAPSED), or True
# for RunStatus.STOPPED; None or False carries on.
StopReason = RunStatus | bool | None
# on_epoch(metrics, trainer): called after every epoch (see ``run_epochs``).
EpochCallback = Callable[[dict, object], StopReason]


def mark_diverged(trainer, seconds: float) -> dict:
    """End ``trainer``'s run (an IIC or supervised trainer) as diverged: the epoch whose loss
    stopped being finite, recorded with a NaN loss."""
    trainer.status = RunStatus.DIVERGED
    trainer.epoch += 1
    metrics = {"epoch": trainer.epoch, "status": trainer.status, "loss": float("nan"), "epoch_seconds": seconds}
    trainer.history.append(metrics)
    return metrics


def run_epochs(trainer, on_epoch: EpochCallback | None, resume_from: str | Path | None):
    """The epoch loop that ``train`` and the supervised ceiling (``iic.supervised``) share, for a
    trainer with ``config``, ``epoch``, ``status``, ``run_epoch``, ``load_checkpoint`` and ``result``."""
    config = trainer.config
    if resume_from is not None:
        trainer.load_checkpoint(resume_from)
        if trainer.status != RunStatus.DIVERGED:  # a finished run given more epochs carries on
            trainer.status = RunStatus.RUNNING if trainer.epoch < config.epochs else RunStatus.COMPLETED
    while trainer.status == RunStatus.RUNNING and trainer.epoch < config.epochs:
        metrics = trainer.run_epoch()
        if trainer.status == RunStatus.RUNNING and trainer.epoch >= config.epochs:
            metrics["status"] = RunStatus.COMPLETED
        reason = on_epoch(metrics, trainer) if on_epoch is not None else None
        if trainer.status == RunStatus.RUNNING:
            trainer.status = RunStatus.STOPPED if reason is True else RunStatus(reason) if reason else metrics["status"]
            metrics["status"] = trainer.status
    return trainer.result()
