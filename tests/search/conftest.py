import json
from pathlib import Path

import pytest
import torch
import yaml

from iic.train import main as train_main

ROOT = Path(__file__).resolve().parents[2]


def edited_digits_preset(tmp_path, edit) -> list[str]:
    """Command-line flags for a copy of the digits preset that ``edit`` (a function of the preset's
    dict) changed; the copy extends the same config file."""
    source = ROOT / "search" / "presets" / "digits.yaml"
    preset = yaml.safe_load(source.read_text())
    preset["extends"] = str((source.parent / preset["extends"]).resolve())
    edit(preset)
    path = tmp_path / "digits.yaml"  # same stem: the experiment stays iic-digits
    path.write_text(yaml.safe_dump(preset))
    return ["--config", str(path)]


@pytest.fixture
def small_digits_preset(tmp_path) -> list[str]:
    """The digits preset with the 200 images the tests train on as its own data: its config stays the
    search's incumbent (start_from_config), which other data given with --set would switch off."""
    return edited_digits_preset(tmp_path, lambda preset: preset["config"].update(max_samples=200))


@pytest.fixture
def steady_preset(tmp_path) -> list[str]:
    """The digits preset with its trials never stopping early (no collapse stop, no ASHA rung
    before the last epoch): a fault injected, or a budget running out, at an early epoch then
    always meets a running trial."""
    return edited_digits_preset(
        tmp_path, lambda preset: preset["search"].update(collapse_patience=1000, grace_period=1000)
    )


@pytest.fixture
def eager_preset(tmp_path) -> list[str]:
    """The digits preset with a perturbation point after every epoch and no time budget or deadline:
    synchronous PBT then gives the weakest of the four trials the best one's checkpoint after
    epochs 1 and 2."""

    def edit(preset):
        preset["pbt"]["perturbation_interval"] = 1
        preset["search"]["time_budget_s"] = preset["search"]["deadline_s"] = None

    return edited_digits_preset(tmp_path, edit)


@pytest.fixture
def replay():
    """``replay(config, seeds, threads, out)``: an exported config retrained, as a trial trained it."""
    return replayed_metrics


def replayed_metrics(config: Path, seeds: list[int], threads: int, out: Path) -> dict:
    """The metrics of ``python -m iic.train --config config --seeds ...``, with torch at the
    ``threads`` its trial trained with (Ray gives a trial one per CPU): the same sums in the same order."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert train_main(["--config", str(config), "--seeds", *map(str, seeds), "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(before)
    return json.loads((out / "metrics.json").read_text())
