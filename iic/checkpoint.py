"""Checkpoints: written whole or not at all, read back on the CPU, and refused for another config."""

from pathlib import Path
from typing import Sequence

import torch

from iic.config import ConfigError, IICConfig

CHECKPOINT_FILE = "checkpoint.pt"  # in the CLI's --out folder, and in a Tune trial's checkpoints


def save_state(state: dict, path: str | Path) -> Path:
    """Write a checkpoint's state, never leaving a half-written file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, temporary)
    temporary.replace(path)
    return path


def load_state(path: str | Path, kind: str) -> dict:
    """A checkpoint's state, on the CPU (generator states must be CPU tensors whatever the device;
    models and optimisers copy their tensors to the device on load). ``kind`` is the run it must
    come from: ``iic`` (checkpoints without a kind are IIC's) or ``supervised``."""
    state = torch.load(Path(path), map_location="cpu", weights_only=False)
    found = state.get("kind", "iic")
    if found != kind:
        raise ConfigError(
            f"checkpoint {path} is from a {found!r} run, not a {kind!r} one (--supervised makes 'supervised' runs); "
            "resume it as the run it is, or write to another --out"
        )
    return state


def check_resumable(
    path: str | Path, saved_config: dict, config: IICConfig, other_changes: Sequence[str] = (), scheduled: bool = False
) -> None:
    """Refuse to continue a checkpoint trained with another config (beyond RESUMABLE_CHANGES, and
    with ``scheduled`` the SCHEDULABLE_FIELDS, which then change from the restored epoch on)."""
    saved = IICConfig.from_dict(saved_config)
    may_change = (*IICConfig.RESUMABLE_CHANGES, *((*IICConfig.SCHEDULABLE_FIELDS, "schedule") if scheduled else ()))
    changed = [
        name for name in config.to_dict() if name not in may_change and getattr(saved, name) != getattr(config, name)
    ]
    changed += other_changes
    if changed:
        allowed = f"only {', '.join(IICConfig.RESUMABLE_CHANGES)} may change" + (
            f", and {', '.join(IICConfig.SCHEDULABLE_FIELDS)}, which then change from the restored epoch on"
            if scheduled
            else ""
        )
        raise ConfigError(
            f"checkpoint {path} was trained with a different config ({', '.join(changed)} differ); "
            f"resume with the same config and seeds ({allowed}) or start a new run"
        )
