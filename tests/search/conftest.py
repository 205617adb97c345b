from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def steady_preset(tmp_path) -> list[str]:
    """Command-line flags for the digits preset with its trials never stopping early (no collapse
    stop, no ASHA rung before the last epoch): a fault injected, or a budget running out, at an
    early epoch then always meets a running trial."""
    preset = yaml.safe_load((ROOT / "search" / "presets" / "digits.yaml").read_text())
    preset["search"].update(collapse_patience=1000, grace_period=1000)
    path = tmp_path / "digits.yaml"  # same stem: the experiment stays iic-digits
    path.write_text(yaml.safe_dump(preset))
    return ["--config", str(path)]
