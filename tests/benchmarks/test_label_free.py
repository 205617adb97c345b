"""benchmarks.label_free's report, on recorded searches written here."""

import json

import numpy as np

from benchmarks.label_free import main, search_figures


def _trial(index: int, accuracy: float, agreement_noise: float, confirmed: float, k: int = 10) -> dict:
    """A trial whose two search seeds agree less the larger ``agreement_noise`` is."""
    rng = np.random.default_rng(index)
    clusters = np.repeat(np.arange(4), 10)
    other = np.where(rng.random(40) < agreement_noise, rng.integers(0, 4, 40), clusters)
    search = {"cluster_accuracy": accuracy, "nmi": accuracy, "mutual_information": accuracy, "loss": -accuracy}
    search.update(cluster_size_entropy=0.9 + accuracy / 10, generalization=accuracy)
    runs = [
        {"seed": 1, "role": "search", "collapsed": False, **search, "clusters": clusters.tolist()},
        {"seed": 2, "role": "search", "collapsed": False, **search, "clusters": other.tolist()},
        {"seed": 3, "role": "confirm", "collapsed": False, **search, "cluster_accuracy": confirmed, "clusters": []},
    ]
    return {"index": index, "search_seed": 5, "num_clusters": k, "runs": runs}


def test_scores_rank_as_accuracy_and_the_picks_are_scored_on_the_confirmation_seeds(tmp_path, capsys):
    trials = [_trial(i, 0.2 + 0.1 * i, 0.8 - 0.2 * i, confirmed=0.5 + 0.01 * i) for i in range(4)]
    figures = search_figures(trials)
    assert figures["seed_agreement"]["uncollapsed"] == 1.0 and figures["label_free"]["all"] == 1.0
    assert figures["labelled_pick"] == figures["label_free"]["pick"] == 0.53
    path = tmp_path / "digits_5.jsonl"
    path.write_text("".join(json.dumps(trial) + "\n" for trial in trials))
    assert main(["report", str(path), "--choosing-seeds", "5"]) == 0
    out = capsys.readouterr().out
    assert "digits_5" in out and "choosing" in out and "0.530 (K 10)" in out
