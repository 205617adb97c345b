import math

import pytest

from benchmarks.common import command, spread, spread_line, table


def test_spread_is_mean_min_sample_sd_and_standard_error():
    figures = spread([0.9, 0.8, 1.0])
    assert figures["mean"] == pytest.approx(0.9) and figures["min"] == pytest.approx(0.8)
    assert figures["sd"] == pytest.approx(0.1) and figures["se"] == pytest.approx(0.1 / math.sqrt(3))
    assert spread([0.7])["sd"] == 0.0  # one seed: no spread, not NaN
    assert math.isnan(spread([math.nan, math.nan])["mean"])  # e.g. no PBT population in the budget


def test_spread_line_is_the_one_format_every_tool_prints():
    assert spread_line("IIC accuracy", [0.9, 0.8, 1.0]) == "IIC accuracy over 3 seeds: mean 0.900  min 0.800  sd 0.100"


def test_table_aligns_columns_to_their_widest_cell():
    assert table(["name", "n"], [["a", 10], ["bbb", 2]]).splitlines() == ["name   n", "a     10", "bbb    2"]


def test_command_reruns_the_tool_with_its_arguments_quoted():
    assert command("step_profile", ["--set", "a=b c"]) == "python -m benchmarks.step_profile --set 'a=b c'"
