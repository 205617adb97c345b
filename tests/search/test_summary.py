import math

import pandas as pd

from search.summary import print_summary


def test_the_printed_trials_table_leaves_out_figures_no_trial_has(capsys):
    # one seed per trial: no spread over seeds; everything else is printed, best first as given
    table = pd.DataFrame(
        [
            {
                "trial_id": "b",
                "cluster_accuracy": 0.91,
                "label_free_pick_accuracy": 0.91,
                "cluster_accuracy_sd": math.nan,
                "lr": 0.003,
            },
            {
                "trial_id": "a",
                "cluster_accuracy": 0.42,
                "label_free_pick_accuracy": 0.42,
                "cluster_accuracy_sd": math.nan,
                "lr": 0.01,
            },
        ]
    )
    print_summary(table, [], "cluster_accuracy", "digits", top=5, correlation=(math.nan, 0))
    out = capsys.readouterr().out
    assert "Best 2 of 2 trials by cluster_accuracy" in out
    header, first, second = out.strip().splitlines()[-3:]
    assert header.split() == ["trial_id", "cluster_accuracy", "label_free_pick_accuracy", "lr"]
    assert first.split()[:2] == ["b", "0.910"] and second.split()[:2] == ["a", "0.420"]
