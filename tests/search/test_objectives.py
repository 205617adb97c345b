"""Objectives: which a search may rank by, checked before anything starts, labels or none."""

import pytest
from PIL import Image

from search.driver import SearchError
from search.plan import new_plan
from search.preset import Preset, PresetError
from search.run import parse_args


def _plan(tmp_path, *flags):
    return new_plan(
        parse_args(["--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--storage-path", str(tmp_path), *flags])
    )


def _k_preset(space: dict, **search) -> Preset:
    return Preset.from_dict(
        "k",
        {"config": {"dataset": "digits"}, "space": {"num_clusters": {"low": 6, "high": 20}, **space}, "search": search},
    )


def test_a_searched_k_keeps_overcluster_k_above_every_k():
    with pytest.raises(
        PresetError, match=r"space.overcluster_k: value 20 is invalid \(overcluster_k: must exceed num_clusters=20"
    ):
        _k_preset({"overcluster_k": {"low": 20, "high": 60}}, objective="label_free")
    assert (
        _k_preset({"overcluster_k": {"low": 21, "high": 60}}, objective="label_free").search.objective == "label_free"
    )


@pytest.mark.parametrize(
    ("search", "problem"),
    [
        ({"objective": "mutual_information"}, "do not compare runs of different num_clusters"),
        ({"objective": "label_free", "seeds_per_trial": 1}, "needs --seeds-per-trial 2 or more"),
        ({"objective": "seed_agreement", "confirm_seeds": 1}, "needs --confirm-seeds 2 or more"),
        ({"objective": "generalization"}, "reported after a run's last epoch only"),
        ({"objective": "accuracy"}, "is not one of cluster_accuracy, label_free"),
    ],
)
def test_objectives_that_cannot_rank_the_search_are_refused_with_the_reason(search, problem):
    with pytest.raises(PresetError, match=problem):
        _k_preset({}, **search)


@pytest.fixture
def flat_folder(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(6):
        Image.new("RGB", (10, 10), (40 * i, 255 - 40 * i, 0)).save(folder / f"photo{i}.png")
    return folder


def test_on_images_without_labels_the_search_ranks_label_free_and_says_so(tmp_path, flat_folder):
    plan = _plan(tmp_path, "--set", "dataset=image_folder", "--set", f"data_root={flat_folder}")
    assert plan.preset.search.objective == "label_free"
    assert any(
        note.startswith("the images have no labels: the search ranks trials by label_free") for note in plan.notes
    )
    assert _plan(tmp_path, "--preset", "unlabelled", "--set", f"data_root={flat_folder}").preset.search.objective == (
        "label_free"
    )


def test_an_explicit_accuracy_objective_on_images_without_labels_is_refused(tmp_path, flat_folder):
    with pytest.raises(SearchError, match="no labels to score it with; choose a label-free objective: label_free"):
        _plan(
            tmp_path, "--preset", "unlabelled", "--set", f"data_root={flat_folder}", "--objective", "cluster_accuracy"
        )
