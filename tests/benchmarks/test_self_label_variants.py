import pytest
import torch

from benchmarks.self_label import parse_variant, variant_config
from iic.train import Trainer, run_epochs, train


def _weights(trainer):
    return torch.cat([p.detach().flatten() for p in trainer.model.parameters()])


def test_a_variant_continued_from_the_base_checkpoint_is_a_run_of_its_config_from_scratch(tiny_config, tmp_path):
    base = tiny_config.replace(epochs=2, self_label_threshold=0.5)
    config = variant_config(base, parse_variant("low lr:self_label_epochs=1,lr=0.0003")[1])
    assert (config.epochs, config.self_label_epochs, config.lr) == (3, 1, base.lr)
    assert config.schedule == [{"epoch": 3, "values": {"lr": 0.0003}}]  # the new lr with the self-labelled epoch

    def save_at_two(metrics, trainer):
        if trainer.epoch == 2:
            trainer.save_checkpoint(tmp_path / "base.pt")

    train(base, on_epoch=save_at_two)
    continued = Trainer(config)
    run_epochs(continued, None, tmp_path / "base.pt")
    scratch = Trainer(config)
    run_epochs(scratch, None, None)
    assert continued.epoch == scratch.epoch == 3
    assert torch.equal(_weights(continued), _weights(scratch))


def test_a_variant_without_self_labelling_is_refused():
    with pytest.raises(SystemExit, match="'name:self_label_epochs=N"):
        parse_variant("lr only:lr=0.0003")
