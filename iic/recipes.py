"""Each dataset's tuned recipe: what ``python -m iic.train --dataset NAME`` trains.

A recipe is a config file under ``configs/``; a dataset without one trains IICConfig's defaults.
Their figures, with seeds and commands, are in docs/results.md.
"""

from pathlib import Path

from iic.config import IICConfig

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"
RECIPES = {"digits": "digits.yaml", "mnist5k": "mnist5k.yaml", "har": "har_full.yaml"}


def recipe_path(dataset: str) -> Path | None:
    """The recipe file of ``dataset``, or None where it has none."""
    return CONFIGS_DIR / RECIPES[dataset] if dataset in RECIPES else None


def recipe(dataset: str) -> IICConfig:
    """The config ``dataset`` trains by default: its recipe, else IICConfig's defaults on it."""
    path = recipe_path(dataset)
    return IICConfig.from_yaml(path) if path else IICConfig(dataset=dataset)
