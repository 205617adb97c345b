import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.gpu_packing import (
    aggregate,
    flops_per_image,
    images_in_window,
    parse_args,
    peak_tflops,
    workload_config,
)
from iic.models import IICModel, build_backbone

REPOSITORY = Path(__file__).resolve().parents[2]


def epoch(ended: float, seconds: float, images: int = 100) -> dict:
    return {"ended": ended, "epoch_seconds": seconds, "images": images}


def test_images_in_window_counts_the_part_of_each_epoch_inside():
    # Epochs [0, 2], [2.5, 4.5], [5, 7]; window [1, 6]: half, all, half of an epoch; 0.5 s between epochs idle.
    records = [epoch(2, 2), epoch(4.5, 2), epoch(7, 2)]
    images, busy = images_in_window(records, 1.0, 6.0)
    assert images == pytest.approx(50 + 100 + 50)
    assert busy == pytest.approx(1 + 2 + 1)


def test_aggregate_sums_trials_over_the_window():
    steady = [epoch(t, 1.0) for t in range(1, 11)]  # 100 images/s, never idle
    half_speed = [epoch(t, 2.0) for t in range(2, 12, 2)]  # 50 images/s
    result = aggregate([steady, half_speed], 2.0, 8.0)
    assert result["aggregate_images_per_second"] == pytest.approx(150)
    assert result["per_trial_images_per_second"] == pytest.approx(75)
    assert result["coverage"] == pytest.approx(1.0)
    assert result["window_seconds"] == pytest.approx(6.0)


def test_peak_tflops_by_device_name_or_flag():
    assert peak_tflops("NVIDIA H100 80GB HBM3", None) == 989
    assert peak_tflops("NVIDIA H100 PCIe", None) == 756
    assert peak_tflops("NVIDIA H200", None) == 989
    assert peak_tflops("NVIDIA A10G", None) == 125
    assert peak_tflops("cpu (no CUDA GPU)", None) is None
    assert peak_tflops("NVIDIA L4", 121.0) == 121.0


def test_flops_per_image_is_a_train_step_of_all_views_plus_two_evaluation_forwards():
    config = workload_config("resnet18-32px", parse_args([]))
    model = IICModel(build_backbone("resnet18", 2, 32), config.num_clusters, 0, config.num_subheads).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as forward:
        model(torch.rand(1, 2, 32, 32))
    one_forward = forward.get_total_flops()
    assert one_forward == pytest.approx(1.1e9, rel=0.1)  # ResNet18 at 32 px with a stride-1 stem: ~0.56 G multiply-adds
    # A backward costs about two forwards (a little less: the first conv needs no input gradient).
    expected = 3 * (1 + config.repeats) * one_forward + 2 * one_forward
    assert flops_per_image(config, channels=2) == pytest.approx(expected, rel=0.05)


@pytest.mark.slow
def test_smoke_run_packs_two_real_trials_onto_one_fake_gpu(tmp_path):
    """The CPU smoke version end to end: its own Ray with one fake GPU, real Tune trials training
    digits, N = 1 and 2."""
    out = tmp_path / "packing.json"
    env = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
    finished = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_packing", "--smoke", "--seconds-per-setting", "1.5", "--out", str(out)],
        cwd=REPOSITORY,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["command"].startswith("python -m benchmarks.gpu_packing --smoke")
    rows = {row["trials_per_gpu"]: row for row in report["rows"]}
    assert sorted(rows) == [1, 2]
    for trials, row in rows.items():
        assert not row["errors"] and "error" not in row, row
        assert row["trials_reported"] == trials
        assert row["gpu_per_trial"] == 1 / trials
        assert row["aggregate_images_per_second"] > 0
        assert row["window_seconds"] == pytest.approx(1.5)
        assert row["gpu_utilisation"] is None and row["fraction_of_bf16_peak"] is None  # no GPU here: n/a
        # Each trial trained through more than half the window, so the two trained at the same time.
        assert row["coverage"] > 0.5, row
    assert rows[2]["epochs_in_window"] >= 2
    assert rows[1]["speedup_over_1"] == 1.0 and rows[2]["speedup_over_1"] > 0
    table = finished.stdout[finished.stdout.index("Many trials per GPU") :]
    assert "agg img/s" in table and "n/a" in table
