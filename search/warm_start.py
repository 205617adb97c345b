"""Warm start: configs exported from earlier searches become the first trials of a new one."""

from pathlib import Path

from iic.config import ConfigError, IICConfig
from search.preset import Preset, PresetError
from search.space import search_space


def load_warm_start(folder: str | Path, preset: Preset) -> list[dict]:
    """Optuna points (``points_to_evaluate``) for every ``*.yaml`` config in ``folder``: each
    searched field at the config's value, gates set by what the config does."""
    folder = Path(folder)
    files = sorted(folder.glob("*.yaml")) if folder.is_dir() else []
    if not files:
        raise PresetError(
            f"--warm-start {folder}: no *.yaml configs there; point it at the --out folder of search/export.py"
        )
    space = search_space(preset)
    points = []
    for path in files:
        try:
            config = IICConfig.from_yaml(path).to_dict()
        except ConfigError as err:
            raise PresetError(f"--warm-start: {err}") from None
        points.append(space.point(config))
    return points
