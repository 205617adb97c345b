"""The plan of a search: what the command line and the preset settle before anything starts."""

import pytest

from search.plan import new_plan
from search.run import parse_args
from search.space import start_point


def _plan(tmp_path, *flags):
    return new_plan(
        parse_args(["--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--storage-path", str(tmp_path), *flags])
    )


def test_the_digits_preset_starts_from_its_own_config_on_its_own_data(tmp_path):
    plan = _plan(tmp_path, "--set", "batch_size=64")  # not a setting of the data
    assert plan.preset.search.start_from_config and plan.warm_points == [start_point(plan.preset)]
    assert plan.notes == []


@pytest.mark.parametrize("change", ["max_samples=500", "split=all", "class_map={0: a, 1: a, 2: b}"])
def test_on_other_data_the_search_starts_without_the_presets_incumbent_and_says_why(tmp_path, change):
    field = change.partition("=")[0]
    plan = _plan(tmp_path, "--set", change)
    assert not plan.preset.search.start_from_config and plan.warm_points == []
    [note] = plan.notes
    assert note.startswith(f"--set {field}:") and "without it as the incumbent" in note
    assert plan.record()["preset"]["search"]["start_from_config"] is False  # --resume continues it so
