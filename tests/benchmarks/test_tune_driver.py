import re
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_driver_takes_real_trials_results_with_and_without_the_mlflow_logger():
    """Its own Ray and a fresh SQLite store, two trials of five results each: both runs finish, the
    logger records every trial without a failure (the tool asserts it), and each event is timed."""
    finished = subprocess.run(
        [sys.executable, "-m", "benchmarks.tune_driver", "--trials", "2", "--reports", "5", "--checkpoint-kb", "4"]
        + ["--cpus", "2"],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    rows = [line.split() for line in finished.stdout.splitlines() if line.split()[:1] == ["2"]]
    assert [row[1] for row in rows] == ["off", "on"] and all(float(row[2]) > 0 for row in rows)
    timings = re.search(r"trial_start ([\d.]+)  trial_result ([\d.]+)  trial_complete ([\d.]+)", finished.stdout)
    assert timings and float(timings[2]) > 0  # a result's cost on the driver (MLflow writes it there)
    assert "keeps up with" in finished.stdout
