"""Clustering metrics: how well cluster assignments match labels, and how degenerate they are.

Labels are used here and nowhere in training. Samples labelled -1 (unlabelled splits) are left out
of the label-based metrics but counted in the degeneracy figures.
"""

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score


def confusion_matrix(clusters: np.ndarray, labels: np.ndarray, num_clusters: int, num_classes: int) -> np.ndarray:
    """(num_clusters, num_classes) counts: row = assigned cluster, column = true class."""
    matrix = np.zeros((num_clusters, num_classes), dtype=np.int64)
    np.add.at(matrix, (clusters, labels), 1)
    return matrix


def hungarian_accuracy(confusion: np.ndarray) -> float:
    """Accuracy under the best one-to-one mapping of clusters to classes (the IIC paper's metric)."""
    rows, cols = linear_sum_assignment(confusion, maximize=True)
    return float(confusion[rows, cols].sum() / max(confusion.sum(), 1))


def majority_accuracy(confusion: np.ndarray) -> float:
    """Accuracy when each cluster is mapped to its most frequent class (the seed study's metric);
    several clusters may map to one class, so it is never below the Hungarian accuracy."""
    return float(confusion.max(axis=1).sum() / max(confusion.sum(), 1))


def degeneracy(clusters: np.ndarray, num_clusters: int) -> dict[str, float]:
    """How close the clustering is to collapse: the largest cluster's share of the data, the number
    of empty clusters, and the entropy of cluster sizes normalised to [0, 1] (1 = perfectly even)."""
    sizes = np.bincount(clusters, minlength=num_clusters).astype(np.float64)
    shares = sizes / max(sizes.sum(), 1)
    nonzero = shares[shares > 0]
    entropy = float(-(nonzero * np.log(nonzero)).sum() / np.log(num_clusters))
    return {
        "largest_cluster_share": float(shares.max()),
        "empty_clusters": int((sizes == 0).sum()),
        "cluster_size_entropy": entropy,
    }


def clustering_metrics(
    clusters: np.ndarray, labels: np.ndarray, num_clusters: int, num_classes: int
) -> dict[str, float]:
    """All metrics of one clustering: Hungarian and majority accuracy, NMI, ARI and degeneracy."""
    clusters = np.asarray(clusters, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    labelled = labels >= 0
    metrics: dict[str, float] = dict(degeneracy(clusters, num_clusters))
    if labelled.any():
        confusion = confusion_matrix(clusters[labelled], labels[labelled], num_clusters, num_classes)
        metrics.update(
            cluster_accuracy=hungarian_accuracy(confusion),
            majority_accuracy=majority_accuracy(confusion),
            nmi=float(normalized_mutual_info_score(labels[labelled], clusters[labelled])),
            ari=float(adjusted_rand_score(labels[labelled], clusters[labelled])),
        )
    return metrics
