"""A search of a folder of images without labels, end to end: real local Ray, real MLflow (SQLite)."""

from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from search.run import main
from search.tracking.runs import ROLE_TAG


@pytest.mark.slow
def test_the_unlabelled_preset_searches_a_flat_folder_and_shows_the_best_clusters(
    ray_session, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("IIC_STATE_DIR", str(tmp_path / "state"))
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(30):  # three kinds of picture: red, green or blue blobs on noise
        pixels = rng.integers(0, 60, (12, 12, 3), dtype=np.uint8)
        pixels[3:9, 3:9, i % 3] = 255
        Image.fromarray(pixels).save(folder / f"photo{i:02d}.png")
    database = f"sqlite:///{tmp_path}/mlflow.db"
    flags = ["--preset", "unlabelled", "--set", f"data_root={folder}", "--tracking-uri", database]
    flags += ["--storage-path", str(tmp_path / "ray"), "--set", "input_size=8", "--set", "backbone_width=4"]
    flags += ["--epochs", "2", "--num-samples", "2", "--confirm-seeds", "2"]
    assert main(flags) == 0
    out = capsys.readouterr().out
    assert "objective label_free" in out
    [gallery] = [
        line.split(": ", 1)[1] for line in out.splitlines() if "the confirmed best's images per cluster" in line
    ]
    assert Path(gallery).is_file() and Path(gallery).stat().st_size > 0
    client = MlflowClient(database)
    runs = client.search_runs([client.get_experiment_by_name("iic-unlabelled").experiment_id])
    trials = [run for run in runs if run.data.tags.get(ROLE_TAG) in ("trial", "confirm")]
    assert len(trials) == 3
    for run in trials:  # label-free scores; no figure that needs labels, not even as 0 or -1
        assert {"label_free", "seed_agreement", "cluster_size_entropy"} <= set(run.data.metrics)
        assert not {"cluster_accuracy", "nmi", "ari", "label_free_pick_accuracy"} & set(run.data.metrics)
    [parent] = [run for run in runs if run.data.tags.get(ROLE_TAG) == "search"]
    assert "best_confirmed_label_free" in parent.data.metrics
    assert "best_cluster_gallery.png" in [a.path for a in client.list_artifacts(parent.info.run_id)]
