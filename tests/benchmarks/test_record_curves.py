import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.record_curves import CURVE_METRICS, main, read_table, sample_configs
from iic.config import IICConfig
from iic.trainer import train

REPOSITORY = Path(__file__).resolve().parents[2]

# A preset small enough that a config trains in about a second on one core: 96 images, a 4-wide
# ClusterNet, one sub-head, one twin per image; two searched fields, one of them on a log range.
TINY_PRESET = """\
config:
  dataset: digits
  max_samples: 96
  backbone_width: 4
  num_subheads: 1
  batch_size: 48
  repeats: 1
space:
  lr: {low: 1.0e-3, high: 1.0e-2, log: true}
  lamb: {low: 1.0, high: 1.5}
"""


@pytest.fixture(scope="module")
def smoke_table(tmp_path_factory) -> tuple[Path, Path]:
    """One --smoke recording of the tiny preset (3 configs x 2 seeds x 2 epochs at 8 px)."""
    folder = tmp_path_factory.mktemp("curves")
    preset = folder / "tiny.yaml"
    preset.write_text(TINY_PRESET)
    out = folder / "curves.jsonl"
    assert main(["--smoke", "--preset", str(preset), "--workers", "1", "--out", str(out)]) == 0
    return preset, out


def test_smoke_mode_writes_a_valid_table_of_real_training(smoke_table):
    preset, out = smoke_table
    table, runs, configs = read_table(out)
    assert table["seeds"] == [0, 1] and table["epochs"] == 2 and table["config"]["input_size"] == 8
    assert table["space"]["lr"] == {"low": 1.0e-3, "high": 1.0e-2, "log": True}
    assert (
        len(runs) == 1 and runs[0]["device"].startswith("cpu") and runs[0]["torch"] and "--smoke" in runs[0]["command"]
    )
    assert sorted(c["index"] for c in configs) == [0, 1, 2]
    for config in configs:
        assert config["status"] == "completed" and len(config["epoch_seconds"]) == 2
        assert 1e-3 <= config["values"]["lr"] <= 1e-2 and 1.0 <= config["values"]["lamb"] <= 1.5
        for metric in CURVE_METRICS:
            assert [len(curve) for curve in config["curves"][metric]] == [2, 2]  # seeds x epochs
        assert all(0.0 < a <= 1.0 for curve in config["curves"]["cluster_accuracy"] for a in curve)
    assert len({c["values"]["lr"] for c in configs}) == 3  # three different configs

    # Seed 1 of config 0, trained alone with the recorded values, gives the recorded curve (stacked
    # seeds train as runs of their own, up to floating-point noise).
    first = next(c for c in configs if c["index"] == 0)
    alone = train(IICConfig.from_dict(table["config"]).replace(**first["values"]), seeds=[1])
    assert [epoch["loss"] for epoch in alone.history] == pytest.approx(first["curves"]["loss"][1], rel=1e-3)
    assert [epoch["cluster_accuracy"] for epoch in alone.history] == pytest.approx(
        first["curves"]["cluster_accuracy"][1], abs=0.02
    )


def test_a_rerun_resumes_without_redoing_finished_configs(smoke_table, tmp_path, capsys):
    preset, recorded = smoke_table
    out = tmp_path / "curves.jsonl"
    finished = recorded.read_text()
    out.write_text(finished + '{"kind": "config", "index": 2, "values": {"lr": 0.00')  # a line cut short by a kill
    assert main(["--smoke", "--preset", str(preset), "--workers", "1", "--configs", "4", "--out", str(out)]) == 0
    assert "3 of 4 configs already" in capsys.readouterr().out
    text = out.read_text()
    assert text.startswith(finished)  # what was there is kept as it was, the cut line dropped
    table, runs, configs = read_table(out)
    assert [c["index"] for c in configs] == [0, 1, 2, 3] and len(runs) == 2
    # Config 3 is the fourth draw of the same sequence: extending a table keeps its configs.
    space_configs = sample_configs(table["space"], IICConfig.from_dict(table["config"]), 4, table["sample_seed"])
    assert [c["values"] for c in sorted(configs, key=lambda c: c["index"])] == [values for values, _ in space_configs]

    # A different table (other epochs) is refused, and the file left alone.
    assert main(["--smoke", "--preset", str(preset), "--workers", "1", "--epochs", "3", "--out", str(out)]) == 2
    assert "holds another table (config, epochs differ)" in capsys.readouterr().err
    assert out.read_text() == text


def test_a_table_recorded_before_iicconfig_gained_or_dropped_a_field_is_still_extended(smoke_table, tmp_path, capsys):
    preset, recorded = smoke_table
    lines = [json.loads(line) for line in recorded.read_text().splitlines()]
    table = lines[0]
    del table["config"]["compile_mode"]  # recorded before IICConfig had this field: its default is meant
    table["config"]["retired_field"] = 1  # a field IICConfig has dropped since
    out = tmp_path / "curves.jsonl"
    out.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert main(["--smoke", "--preset", str(preset), "--workers", "1", "--configs", "3", "--out", str(out)]) == 0
    assert "3 of 3 configs already" in capsys.readouterr().out


def test_the_time_budget_stops_new_configs_and_lets_the_running_one_finish(smoke_table, tmp_path, capsys):
    preset, _ = smoke_table
    out = tmp_path / "curves.jsonl"
    # The first config starts at once; when it ends (after more than 0.5 s) no other may start.
    assert main(["--smoke", "--preset", str(preset), "--workers", "1", "--time-budget", "0.5", "--out", str(out)]) == 0
    _, runs, configs = read_table(out)
    assert [c["index"] for c in configs] == [0] and configs[0]["status"] == "completed"
    assert runs[0]["time_budget"] == 0.5
    assert "2 not started: time budget" in capsys.readouterr().out


def test_the_recorder_imports_no_ray_optuna_or_mlflow():
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, benchmarks.record_curves; "
            "print(sorted({'ray', 'optuna', 'mlflow'} & {m.split('.')[0] for m in sys.modules}))",
        ],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        check=True,
    )
    assert loaded.stdout.strip() == "[]"
