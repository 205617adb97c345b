import pytest

from benchmarks.screening import ConsensusAccuracy, Policy, main, probabilities_path, simulate, train_recording
from iic.consensus import consensus_metrics
from iic.seeds import screening_candidates
from iic.train import train


def test_a_simulated_policy_keeps_what_the_screening_run_keeps(tiny_config):
    policy = Policy.parse("3:2@1:1@2")
    config = policy.config(tiny_config.replace(epochs=3))
    assert (config.screen_inits, config.screen_cut_keep, config.screen_cut_epochs, config.screen_epochs) == (3, 2, 1, 2)
    screened = train(config, seeds=[7])
    [inits] = screening_candidates([7], 3)
    alone = train(config.replace(screen_inits=1, screen_cut_epochs=0), seeds=inits)
    histories = [run.history for run in alone.seeds]
    [kept] = policy.keep(histories)
    assert inits[kept] == screened.seeds[0].init_seed
    assert policy.model_epochs(3) == config.model_epochs() == 3 + 2 + 1
    figures = simulate(policy, histories)  # one subset: the three initialisations
    assert figures["subsets"] == 1
    assert figures["mean"] == screened.seeds[0].metrics["cluster_accuracy"] <= figures["oracle"]


def test_simulation_averages_every_subset_and_the_oracle_bounds_it():
    def history(mi_at_1, mi_at_2, accuracy):
        return [{"mutual_information": mi_at_1}, {"mutual_information": mi_at_2, "cluster_accuracy": accuracy}]

    histories = [history(1.0, 2.0, 0.9), history(2.0, 1.0, 0.5), history(1.5, 1.5, 0.7)]
    assert Policy.parse("2:1@2").keep(histories[:2]) == (0,)
    assert Policy.parse("3:2@1:1@2").keep(histories) == (
        2,
    )  # the first falls at the cut, then the third beats the second
    assert Policy.parse("3:2@1:c").keep(histories) == (1, 2)
    figures = simulate(Policy.parse("2:1@1"), histories)  # pairs (0,1) -> 1, (0,2) -> 2, (1,2) -> 1
    assert figures["subsets"] == 3 and figures["mean"] == pytest.approx((0.5 + 0.7 + 0.5) / 3) and figures["min"] == 0.5
    assert figures["oracle"] == pytest.approx((0.9 + 0.9 + 0.7) / 3)


@pytest.mark.parametrize(
    "text",
    [
        "6",
        "6:2@10",
        "6:2@10:1",
        "6:x@10:1@20",
        "3:3@10:1@20",
        "6:2@20:1@10",
        "6:1@10:2@20",
        "6:1@10:c",
        "6:c",
        "6:2@10:1@20:c",
        "6:c:2@10",
    ],
)
def test_a_malformed_policy_is_refused_with_its_form(text):
    with pytest.raises(ValueError, match="n:k@e"):
        Policy.parse(text)


def test_a_saved_run_simulates_again_to_the_same_tables_without_training(tiny_config, tmp_path, capsys):
    config, saved = tiny_config.to_yaml(tmp_path / "tiny.yaml"), tmp_path / "histories.json"
    policies = ["--policies", "2:1@1", "3:2@1:1@2", "3:2@1:c"]
    main(
        [
            "--config",
            str(config),
            "--seeds",
            "3",
            "4",
            "5",
            "--epochs",
            "3",
            "--report-epochs",
            "2",
            *policies,
            "--save",
            str(saved),
        ]
    )
    trained = capsys.readouterr().out
    main(["--load", str(saved), "--report-epochs", "2", *policies])
    loaded = capsys.readouterr().out

    def tables(out):
        return out[out.index("accuracy at epoch 2") : out.index(" s for all")].rsplit("\n", 1)[0]

    assert tables(loaded) == tables(trained)
    assert "model-epochs at 2" in tables(trained) and "3:2@1:1@2" in tables(trained).split("model-epochs at 3")[1]
    assert "3:2@1:c" in tables(trained).split("model-epochs at 2")[1]
    assert "read from" in loaded and probabilities_path(saved).exists()

    probabilities_path(saved).unlink()
    with pytest.raises(SystemExit):
        main(["--load", str(saved), *policies])
    assert "train again with a consensus policy and --save" in capsys.readouterr().err


def test_a_consensus_policy_scores_the_consensus_of_the_initialisations_it_keeps(tiny_config):
    config = tiny_config.replace(epochs=2)
    histories, recorded = train_recording(config, [3, 4, 5], {2})
    policy = Policy.parse("3:2@1:c")
    kept = policy.keep(histories)
    assert len(kept) == 2 and str(policy) == "3:2@1:c" and policy.model_epochs(2) == 3 + 2
    alone = train(config, seeds=[3, 4, 5])  # the soft assignments recorded are those the run ends with
    for i, run in enumerate(alone.seeds):
        assert recorded["epoch_2"][i] == pytest.approx(run.probabilities)
    consensus = ConsensusAccuracy(
        recorded["epoch_2"], recorded["labels"], config.num_clusters, int(recorded["num_classes"])
    )
    _, expected = consensus_metrics(
        [alone.seeds[i].probabilities for i in kept],
        recorded["labels"],
        config.num_clusters,
        int(recorded["num_classes"]),
    )
    figures = simulate(policy, histories, consensus)
    assert figures["subsets"] == 1 and figures["mean"] == pytest.approx(expected["consensus_accuracy"])
    with pytest.raises(ValueError, match="soft assignments"):
        simulate(policy, histories)
