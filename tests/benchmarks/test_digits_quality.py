import re

from benchmarks.digits_quality import main

TINY = """\
dataset: digits
max_samples: 240
backbone_width: 4
num_subheads: 2
batch_size: 32
repeats: 2
epochs: 1
device: cpu
"""


def test_quality_over_seeds_with_kmeans_and_the_ceiling_beside_it(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    main(["--config", str(config), "--seeds", "0", "5", "--ceiling"])
    out = capsys.readouterr().out
    assert "warning: seeds [0] were used to choose the defaults" in out  # a tuning seed flatters a config
    rows = [row for row in map(str.split, out.splitlines()) if len(row) == 6 and row[0] in ("0", "5")]
    assert len(rows) == 2 and all(0.0 < float(row[1]) <= 1.0 and row[5] in ("yes", "no") for row in rows)
    mean = re.search(r"IIC accuracy over 2 seeds: mean ([\d.]+)  min ([\d.]+)  sd ([\d.]+)", out)
    accuracies = sorted(float(row[1]) for row in rows)
    assert mean and float(mean[2]) == accuracies[0] and abs(float(mean[1]) - sum(accuracies) / 2) < 0.001
    assert re.search(r"k-means on raw pixels: accuracy 0\.\d{3}", out)
    assert re.search(r"supervised ceiling over 2 seeds: mean [01]\.\d{3}  min", out)
    assert out.rstrip().endswith(
        f"command: python -m benchmarks.digits_quality --config {config} --seeds 0 5 --ceiling"
    )
