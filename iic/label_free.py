"""Scores of a clustering that need no label: how a user without labels ranks configs and seeds.

- held-out mutual information (``iic.loss.mutual_information``, every epoch): what the IIC head
  reaches between the images and held-out augmented views of them. It grows with the number of
  clusters, so it does not compare runs of different K.
- seed agreement (every epoch): the mean adjusted Rand index over every pair of a run's seeds
  (stability, Lange et al. 2004; Ben-Hur et al. 2002). Adjusted for chance, so it compares K.
- generalization (end of run only, it fits a classifier): k-fold accuracy of a linear classifier
  that predicts each image's cluster from the backbone's features (TURTLE, Gadetsky et al. 2024).
  Fewer clusters are easier to predict, so it does not compare K.
- balance (every epoch): the cluster sizes' entropy over its maximum, ``cluster_size_entropy`` of
  ``iic.metrics.degeneracy``.

``label_free`` is the objective made of them: seed agreement times balance. Agreement alone rewards
seeds that collapse the same way (two one-cluster runs agree perfectly); balance takes that away.
Both are reported every epoch, so ASHA and PBT can read it, and both are chance-corrected or
normalised, so it compares runs of different K.
"""

import itertools
import math

import numpy as np
from sklearn.linear_model import RidgeClassifier
from sklearn.metrics import adjusted_rand_score
from sklearn.model_selection import KFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

SEED_AGREEMENT = "seed_agreement"
GENERALIZATION = "generalization"
BALANCE = "cluster_size_entropy"
LABEL_FREE = "label_free"
# Scores a run reports after every epoch (ASHA and PBT may act on them) and those it reports after
# its last epoch only (they rank finished trials and confirmations, and cannot drive a scheduler).
PER_EPOCH_SCORES = ("mutual_information", SEED_AGREEMENT, BALANCE, LABEL_FREE)
END_OF_RUN_SCORES = (GENERALIZATION,)
# Scores whose values mean the same whatever the number of clusters: the only ones that may rank
# trials of a search whose num_clusters varies.
ACROSS_K_SCORES = (SEED_AGREEMENT, LABEL_FREE)
LABEL_FREE_METRICS = (SEED_AGREEMENT, LABEL_FREE, GENERALIZATION)  # what runs report besides MI and balance
PROBE_FOLDS = 5
PROBE_MAX_IMAGES = 5000  # a probe on more images says the same and costs more


def seed_agreement(clusterings: list[np.ndarray]) -> float | None:
    """Mean adjusted Rand index over every pair of the seeds' clusterings of the same images; None
    with fewer than two seeds."""
    pairs = list(itertools.combinations(clusterings, 2))
    if not pairs:
        return None
    return float(np.mean([adjusted_rand_score(a, b) for a, b in pairs]))


def generalization(features: np.ndarray, clusters: np.ndarray, folds: int = PROBE_FOLDS, seed: int = 0) -> float:
    """Mean held-out accuracy, over ``folds`` shuffled folds, of a standardised linear classifier
    (ridge: closed form, no iterations to tune) that predicts ``clusters`` (N,) from ``features``
    (N, F), on at most PROBE_MAX_IMAGES images drawn with ``seed``. A run whose images all fall in
    one cluster has nothing to predict and scores 0: it found no structure."""
    clusters = np.asarray(clusters)
    if len(np.unique(clusters)) < 2:
        return 0.0
    if len(clusters) > PROBE_MAX_IMAGES:
        keep = np.random.default_rng(seed).choice(len(clusters), PROBE_MAX_IMAGES, replace=False)
        features, clusters = features[keep], clusters[keep]
    probe = make_pipeline(StandardScaler(), RidgeClassifier())
    split = KFold(n_splits=min(folds, len(clusters)), shuffle=True, random_state=seed)
    return float(cross_val_score(probe, np.asarray(features, dtype=np.float64), clusters, cv=split).mean())


def label_free_score(agreement: float | None, balance: float) -> float | None:
    """The ``label_free`` objective: seed agreement times balance; None without two seeds."""
    if agreement is None or not math.isfinite(agreement):
        return None
    return float(max(agreement, 0.0) * balance)
