from benchmarks.readouts import READOUTS, readouts
from iic.train import Trainer, run_epochs


def test_the_picked_readout_is_the_runs_own_accuracy_and_no_subhead_choice_beats_the_oracle(tiny_config):
    trainer = Trainer(tiny_config.replace(epochs=2), None, [3, 4])
    found = {}

    def read_out(metrics, trainer):
        found[trainer.epoch] = readouts(trainer)

    run_epochs(trainer, read_out, None)
    assert sorted(found) == [1, 2]
    for epoch, rows in found.items():
        assert [row["seed"] for row in rows] == [3, 4]
        for row, history in zip(rows, trainer.seed_histories):
            assert row["picked"] == history[epoch - 1]["cluster_accuracy"]
            assert row["oracle"] >= max(row["picked"], row["MI"])
            assert all(0.0 < row[name] <= 1.0 for name in READOUTS)
