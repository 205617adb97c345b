import warnings

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from iic.consensus import CONSENSUS_ACCURACY, consensus_clusters, consensus_metrics


def _soft(clusters: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Confident soft assignments of ``clusters`` (a little noise, rows sum to 1)."""
    probabilities = np.eye(k)[clusters] * 0.9 + rng.uniform(0, 0.1 / k, (len(clusters), k))
    return probabilities / probabilities.sum(axis=1, keepdims=True)


def _three_seeds_that_err_differently():
    """Four true groups of 50 images; each seed merges a different pair of groups and splits
    another group in two, with its clusters numbered its own way."""
    truth = np.repeat(np.arange(4), 50)
    half = np.tile([0, 1], 100)  # splits a group into two halves
    rng = np.random.default_rng(0)
    seeds = []
    for merged, split, numbering in (((0, 1), 2, [3, 1, 0, 2]), ((1, 2), 3, [0, 2, 3, 1]), ((2, 3), 0, [2, 0, 1, 3])):
        clusters = truth.copy()
        clusters[truth == merged[1]] = merged[0]
        clusters[(truth == split) & (half == 1)] = merged[1]  # the freed cluster number takes half a group
        seeds.append(_soft(np.array(numbering)[clusters], 4, rng))
    return truth, seeds


def test_the_consensus_outvotes_each_seeds_own_mistake():
    truth, seeds = _three_seeds_that_err_differently()
    for probabilities in seeds:
        assert adjusted_rand_score(truth, probabilities.argmax(axis=1)) < 0.7
    assert adjusted_rand_score(truth, consensus_clusters(seeds, num_clusters=4)) == 1.0


def test_the_consensus_is_deterministic_and_ignores_how_each_seed_numbers_its_clusters():
    truth, seeds = _three_seeds_that_err_differently()
    first = consensus_clusters(seeds, num_clusters=4)
    assert np.array_equal(first, consensus_clusters(seeds, num_clusters=4))
    renumbered = [seeds[0][:, [2, 0, 3, 1]], seeds[1], seeds[2][:, ::-1]]
    assert adjusted_rand_score(first, consensus_clusters(renumbered, num_clusters=4)) == 1.0


def test_collapsed_seeds_give_one_cluster_without_warnings():
    collapsed = np.tile([1.0, 0.0, 0.0], (30, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clusters, metrics = consensus_metrics([collapsed, collapsed], np.repeat([0, 1, 2], 10), 3, 3)
    assert set(clusters) == {0}
    assert metrics["consensus_largest_cluster_share"] == 1.0 and metrics[CONSENSUS_ACCURACY] == pytest.approx(1 / 3)


def test_unlabelled_images_get_no_accuracy_and_are_left_out_of_it():
    truth, seeds = _three_seeds_that_err_differently()
    _, unlabelled = consensus_metrics(seeds, np.full(len(truth), -1), 4, 4)
    assert set(unlabelled) == {"consensus_largest_cluster_share"}
    labels = truth.copy()
    labels[:50] = -1
    _, partly = consensus_metrics(seeds, labels, 4, 4)
    assert partly[CONSENSUS_ACCURACY] == 1.0 and partly["consensus_nmi"] == pytest.approx(1.0)


def test_a_consensus_needs_two_clusterings_of_the_same_images():
    _, seeds = _three_seeds_that_err_differently()
    with pytest.raises(ValueError, match="two or more seeds"):
        consensus_clusters(seeds[:1], num_clusters=4)
    with pytest.raises(ValueError, match="same images"):
        consensus_clusters([seeds[0], seeds[1][:-1]], num_clusters=4)
