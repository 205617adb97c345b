"""The seed study's comparison end to end on a small folder in the Kaggle HAR layout that the test
writes (Training_set.csv + train/*.jpg): the har preset's search, pretrained and from scratch, beside
the supervised ceiling, on a real local Ray and SQLite MLflow."""

import numpy as np
import pytest
import torch
import torchvision
from mlflow.tracking import MlflowClient
from PIL import Image

from search.run import main
from search.tracking.runs import ROLE_TAG

# Multi-trial end-to-end search with ResNet18 trials: a minute or more on 2 cores.
pytestmark = pytest.mark.slow

ACTIONS = [
    "calling",
    "clapping",
    "cycling",
    "dancing",
    "drinking",
    "eating",
    "fighting",
    "hugging",
    "laughing",
    "listening_to_music",
    "running",
    "sitting",
    "sleeping",
    "texting",
    "using_laptop",
]


def _har_folder(root, per_class: int = 6):
    """Fifteen actions as JPEGs in the Kaggle layout, each class its own colour and stripe."""
    rng = np.random.default_rng(0)
    (root / "train").mkdir(parents=True)
    rows = ["filename,label"]
    for index, action in enumerate(ACTIONS):
        for copy in range(per_class):
            image = np.full((48, 64, 3), (index * 17 % 256, index * 53 % 256, index * 89 % 256), dtype=np.uint8)
            image[index * 3 : index * 3 + 4] = 255
            image = np.clip(image + rng.integers(0, 20, image.shape), 0, 255).astype(np.uint8)
            name = f"Image_{index * per_class + copy + 1}.jpg"
            Image.fromarray(image).save(root / "train" / name, quality=90)
            rows.append(f"{name},{action}")
    (root / "Training_set.csv").write_text("\n".join(rows) + "\n")


def test_har_search_with_the_ceiling_on_a_small_kaggle_layout_folder(ray_session, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IIC_STATE_DIR", str(tmp_path / "state"))
    _har_folder(tmp_path / "har")
    weights = tmp_path / "resnet18.pt"  # stands in for ImageNet's (nothing downloads in tests)
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    args = [
        "--preset",
        "har",
        "--set",
        f"data_root={tmp_path / 'har'}",
        "--set",
        f"backbone_weights={weights}",
        "--set",
        "batch_size=16",
        "--set",
        "eval_batch_size=64",
        "--epochs",
        "2",
        "--num-samples",
        "1",
        "--max-concurrent",
        "1",
        "--cpus-per-trial",
        "1",
        "--gpus-per-trial",
        "0",
        "--seeds-per-trial",
        "1",
        "--confirm-top",
        "0",
        "--ceiling",
        "--tracking-uri",
        f"sqlite:///{tmp_path}/mlflow.db",
        "--storage-path",
        str(tmp_path / "ray"),
    ]
    assert main(args) == 0

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("iic-har")
    runs = client.search_runs([experiment.experiment_id])
    roles = sorted(run.data.tags[ROLE_TAG] for run in runs)
    assert roles == [
        "ceiling",
        "search",
        "trial",
    ]  # one trial: this test checks the preset and the ceiling, not the search (CI time)
    assert all(run.info.status == "FINISHED" for run in runs)
    trials = [run for run in runs if run.data.tags[ROLE_TAG] == "trial"]
    assert all(run.data.params["dataset"] == "har" and run.data.params["num_clusters"] == "15" for run in trials)
    assert all("cluster_accuracy" in run.data.metrics for run in trials)
    [parent] = [run for run in runs if run.data.tags[ROLE_TAG] == "search"]
    assert 0 <= parent.data.metrics["ceiling_accuracy"] <= 1 and "best_to_ceiling" in parent.data.metrics
    assert (
        "Supervised ceiling (same backbone on the labels, held out: stratified 20% of train" in capsys.readouterr().out
    )
