import numpy as np
import pytest

from iic.metrics import clustering_metrics, confusion_matrix, degeneracy, hungarian_accuracy, majority_accuracy


def test_permuted_perfect_clustering_scores_one():
    labels = np.repeat(np.arange(4), 5)
    clusters = (labels + 1) % 4  # right grouping, wrong names
    metrics = clustering_metrics(clusters, labels, num_clusters=4, num_classes=4)
    assert metrics["cluster_accuracy"] == 1.0
    assert metrics["majority_accuracy"] == 1.0
    assert metrics["nmi"] == pytest.approx(1.0)
    assert metrics["ari"] == pytest.approx(1.0)


def test_hungarian_is_one_to_one_but_majority_is_not():
    labels = np.array([0, 0, 1, 1, 2, 2])
    clusters = np.array([0, 0, 1, 1, 1, 1])  # clusters 1 holds two classes, cluster 2 empty
    confusion = confusion_matrix(clusters, labels, 3, 3)
    assert confusion.tolist() == [[2, 0, 0], [0, 2, 2], [0, 0, 0]]
    assert hungarian_accuracy(confusion) == pytest.approx(4 / 6)
    assert majority_accuracy(confusion) == pytest.approx(4 / 6)
    # two clusters both dominated by class 0: majority counts both, Hungarian only one
    confusion = confusion_matrix(np.array([0, 0, 1, 1, 2]), np.array([0, 0, 0, 0, 1]), 3, 2)
    assert majority_accuracy(confusion) == 1.0
    assert hungarian_accuracy(confusion) == pytest.approx(3 / 5)


def test_collapse_is_measured():
    clusters = np.zeros(100, dtype=int)
    clusters[:10] = 1
    result = degeneracy(clusters, num_clusters=5)
    assert result["largest_cluster_share"] == pytest.approx(0.9)
    assert result["empty_clusters"] == 3
    assert 0 < result["cluster_size_entropy"] < 0.3
    assert degeneracy(np.arange(50) % 5, 5)["cluster_size_entropy"] == pytest.approx(1.0)


def test_unlabelled_samples_are_left_out_of_label_metrics():
    labels = np.array([0, 0, 1, 1, -1, -1])
    clusters = np.array([1, 1, 0, 0, 0, 1])
    metrics = clustering_metrics(clusters, labels, 2, 2)
    assert metrics["cluster_accuracy"] == 1.0
    assert metrics["largest_cluster_share"] == 0.5  # all six counted
    assert "cluster_accuracy" not in clustering_metrics(clusters, np.full(6, -1), 2, 2)
