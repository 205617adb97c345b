"""The label-free scores, on clusterings and features made here."""

import numpy as np
import pytest

from iic.label_free import generalization, label_free_score, seed_agreement


def test_seed_agreement_is_mean_pairwise_ari_blind_to_cluster_names():
    clusters = np.repeat(np.arange(4), 25)
    renamed = (clusters + 1) % 4  # the same partition under other names
    shuffled = np.random.default_rng(0).permutation(clusters)
    assert seed_agreement([clusters, renamed]) == pytest.approx(1.0)
    three = seed_agreement([clusters, renamed, shuffled])  # pairs: 1, ~0, ~0
    assert 0.25 < three < 0.4
    assert seed_agreement([clusters]) is None


def test_generalization_is_high_for_clusters_the_features_separate_and_zero_for_one_cluster():
    rng = np.random.default_rng(0)
    clusters = np.repeat(np.arange(3), 40)
    features = rng.normal(size=(120, 8)) + 6 * np.eye(8)[clusters]
    assert generalization(features, clusters) > 0.95
    assert generalization(features, rng.permutation(clusters)) < 0.6  # clusters the features do not carry
    assert generalization(features, np.zeros(120, dtype=int)) == 0.0


def test_label_free_is_agreement_times_balance_so_a_shared_collapse_scores_nothing():
    assert label_free_score(1.0, 0.0) == 0.0  # two seeds that put everything in one cluster agree perfectly
    assert label_free_score(0.8, 0.9) == pytest.approx(0.72)
    assert label_free_score(-0.1, 1.0) == 0.0
    assert label_free_score(None, 1.0) is None
