"""The supervised ceiling of a search's config as a Ray Tune function trainable.

``train_ceiling`` takes the same trial config dict as an IIC trial (IICConfig fields plus the
search's keys, ``TRIAL_KEYS``), so the search driver can run it beside the search on the search's
base config. It trains ``iic.supervised``'s classifier on the first of the trial's seeds and, like
``train_iic``, reports every epoch (``supervised_accuracy``, ``loss``, ``epoch``, ...) with a
checkpoint, and resumes from the checkpoint Tune restores it from.
"""

from iic.supervised import SupervisedTrainer, train_supervised
from trainables.iic_trainable import placement, report_with_checkpoint, restored_state, trial_iic_config, trial_seeds


def train_ceiling(config: dict) -> None:
    """Ray Tune function trainable: ``tune.with_resources(train_ceiling, {...})``."""
    # The first seed, not the config's: the one every IIC trial of the search trains on first.
    # The max_samples subset stays the config's (config.seed), as in those trials.
    iic_config, seed = trial_iic_config(config), trial_seeds(config)[0]
    where = placement()

    def report(metrics: dict, trainer: SupervisedTrainer) -> None:
        report_with_checkpoint({**metrics, **where}, trainer)

    with restored_state() as state:
        train_supervised(iic_config, on_epoch=report, resume_from=state, seed=seed)
