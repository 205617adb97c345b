import math

import numpy as np
import pytest

from iic.seeds import (
    LABEL_FREE_PICK,
    combine_seeds,
    draw_seeds,
    label_free_pick,
    label_free_ranking,
)


def test_seeds_are_reproducible_distinct_and_search_and_confirmation_never_share_one():
    assert draw_seeds(0, 5) == draw_seeds(0, 5) != draw_seeds(1, 5)
    assert len(set(draw_seeds(3, 50))) == 50
    search, confirm = draw_seeds(7, 3), draw_seeds(7, 5, skip=3)
    assert not set(search) & set(confirm)
    assert draw_seeds(7, 8) == search + confirm


def test_combined_metrics_are_means_with_their_spread_and_the_label_free_pick():
    per_seed = [
        {
            "seed": 10,
            "cluster_accuracy": 0.9,
            "mutual_information": 2.0,
            "nmi": 0.8,
            "largest_cluster_share": 0.1,
            "chosen_subhead": 1,
            "loss": -2.0,
        },
        {
            "seed": 11,
            "cluster_accuracy": 0.7,
            "mutual_information": 2.2,
            "nmi": 0.6,
            "largest_cluster_share": 0.2,
            "chosen_subhead": 0,
            "loss": -2.1,
        },
        {
            "seed": 12,
            "cluster_accuracy": 0.8,
            "mutual_information": 1.5,
            "nmi": 0.7,
            "largest_cluster_share": 0.3,
            "chosen_subhead": 4,
            "loss": -1.9,
        },
    ]
    combined = combine_seeds(per_seed)
    assert combined["cluster_accuracy"] == pytest.approx(0.8) and combined["loss"] == pytest.approx(-2.0)
    assert combined["cluster_accuracy_min"] == 0.7 and combined["cluster_accuracy_max"] == 0.9
    assert combined["cluster_accuracy_sd"] == pytest.approx(np.std([0.9, 0.7, 0.8], ddof=1))
    assert combined["largest_cluster_share_max"] == 0.3
    assert [combined[f"cluster_accuracy/seed_{i}"] for i in range(3)] == [0.9, 0.7, 0.8]
    # the seed with the highest held-out mutual information, whatever its accuracy
    assert (
        label_free_pick(per_seed) == 1 and combined["label_free_pick_seed"] == 11 and combined[LABEL_FREE_PICK] == 0.7
    )
    assert combined["chosen_subhead"] == [1, 0, 4] and combined["num_seeds"] == 3
    assert "seed" not in combined and "init_seed" not in combined


def test_a_screening_runs_initialisations_are_listed_not_averaged():
    per_seed = [
        {"seed": 10, "init_seed": 10, "cluster_accuracy": 0.9, "mutual_information": 2.0},
        {"seed": 11, "init_seed": 7731, "cluster_accuracy": 0.7, "mutual_information": 2.2},
    ]
    combined = combine_seeds(per_seed)
    assert combined["init_seed"] == [10, 7731] and combined["label_free_pick_seed"] == 11


def test_one_seed_has_no_spread_and_a_lost_score_is_never_picked():
    assert (
        combine_seeds([{"seed": 1, "cluster_accuracy": 0.5, "mutual_information": 1.0}])["cluster_accuracy_sd"] == 0.0
    )
    assert label_free_pick([{"mutual_information": math.nan}, {"mutual_information": 0.1}]) == 1


def test_the_label_free_ranking_orders_by_held_out_mi_with_ties_in_order_and_lost_scores_last():
    per_seed = [
        {"mutual_information": 2.0},
        {"mutual_information": math.nan},
        {"mutual_information": 2.1},
        {},
        {"mutual_information": 2.0},
    ]
    assert label_free_ranking(per_seed) == [2, 0, 4, 1, 3]
    assert label_free_pick(per_seed) == 2
