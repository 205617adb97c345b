import json
import math

import numpy as np
import pytest
import torch
import torchvision

from iic.config import ConfigError, IICConfig
from iic.consensus import consensus_metrics
from iic.data import load_dataset
from iic.metrics import clustering_metrics
from iic.neighbours import nearest_neighbours, pair_candidates
from iic.self_label import SELF_LABEL_SHARE
from iic.status import RunStatus
from iic.train import Trainer, main, train


def _weights(trainer):
    return torch.cat([p.detach().flatten() for p in trainer.model.parameters()])


def test_a_run_reports_every_epoch_with_the_metrics(tiny_config):
    seen = []
    result = train(tiny_config.replace(epochs=3), on_epoch=lambda metrics, trainer: seen.append(dict(metrics)))
    assert [m["epoch"] for m in seen] == [1, 2, 3]
    assert result.status == "completed" and seen[-1]["status"] == "completed"
    for key in (
        "loss",
        "cluster_accuracy",
        "majority_accuracy",
        "nmi",
        "ari",
        "largest_cluster_share",
        "empty_clusters",
        "cluster_size_entropy",
        "mutual_information",
        "chosen_subhead",
        "diagnostic_best_subhead_accuracy",
    ):
        assert key in result.metrics, key
    assert result.metrics["majority_accuracy"] >= result.metrics["cluster_accuracy"]
    assert result.confusion.sum() == 240 and result.clusters.shape == (240,)
    assert seen[-1]["loss"] < seen[0]["loss"]  # it learns something


def test_same_config_and_seed_give_the_same_run(tiny_config):
    first, second = train(tiny_config), train(tiny_config)
    assert first.history[-1]["cluster_accuracy"] == second.history[-1]["cluster_accuracy"]
    assert first.history[-1]["loss"] == second.history[-1]["loss"]
    assert np.array_equal(first.clusters, second.clusters)
    other_seed = train(tiny_config.replace(seed=1))
    assert other_seed.history[-1]["loss"] != first.history[-1]["loss"]


def test_resume_continues_exactly(tiny_config, tmp_path):
    # twin neighbours draw from the shuffling streams: those must be restored too (the other resume tests run without)
    config = tiny_config.replace(epochs=3, overcluster_k=20, twin_neighbours=3)
    straight = Trainer(config)
    for _ in range(3):
        straight.run_epoch()

    def save_after_two(metrics, trainer):
        if metrics["epoch"] == 2:
            trainer.save_checkpoint(tmp_path / "checkpoint.pt")
            return True  # stop, as if the machine went away

    stopped = train(config, on_epoch=save_after_two)
    assert stopped.status == "stopped" and len(stopped.history) == 2
    resumed = Trainer(config)
    resumed.load_checkpoint(tmp_path / "checkpoint.pt")
    assert resumed.epoch == 2
    resumed.run_epoch()
    assert torch.equal(_weights(resumed), _weights(straight))
    assert resumed.history[-1]["loss"] == straight.history[-1]["loss"]
    assert [m["epoch"] for m in resumed.history] == [1, 2, 3]


def test_resume_refuses_a_different_config(tiny_config, tmp_path):
    trainer = Trainer(tiny_config)
    trainer.save_checkpoint(tmp_path / "checkpoint.pt")
    with pytest.raises(
        ConfigError,
        match=r"num_subheads, batch_size differ\); resume with the same config and seeds \(only epochs, .* may change, and crop_min_scale, .*, lr, lamb, which then change from the restored epoch on\)",
    ):
        Trainer(tiny_config.replace(batch_size=16, num_subheads=3, lr=0.01)).load_checkpoint(tmp_path / "checkpoint.pt")
    longer = Trainer(tiny_config.replace(epochs=5))  # more epochs is a legitimate continuation
    longer.load_checkpoint(tmp_path / "checkpoint.pt")
    assert longer.config == tiny_config.replace(epochs=5)


# Every schedulable kind at once: an augmentation strength switched on and one changed, lr, lamb.
CHANGES = {"lr": 1e-3, "brightness": 0.0, "rotation_degrees": 30.0, "hflip_prob": 0.5, "lamb": 1.0}


def test_a_schedule_equals_a_run_stopped_and_resumed_with_the_new_values(tiny_config, tmp_path):
    scheduled = tiny_config.replace(schedule=[{"epoch": 2, "values": CHANGES}])  # 2 epochs, the change at the second
    straight = train(scheduled)
    plain = Trainer(tiny_config)
    plain.run_epoch()
    plain.save_checkpoint(tmp_path / "checkpoint.pt")
    plain.run_epoch()
    resumed = train(tiny_config.replace(**CHANGES), resume_from=tmp_path / "checkpoint.pt")
    assert resumed.status == "completed" and [m["epoch"] for m in resumed.history] == [1, 2]
    for mine, its in zip(resumed.history, straight.history):
        for key in ("loss", "mutual_information", "cluster_accuracy"):
            assert mine[key] == pytest.approx(its[key], abs=1e-6), key
    # the resumed run's config is the scheduled one: it replays the run from epoch 1
    assert resumed.config == scheduled
    # and the change took effect: without it the second epoch ends elsewhere
    assert plain.history[-1]["loss"] != pytest.approx(straight.history[-1]["loss"], abs=1e-4)


def test_a_scheduled_lr_keeps_the_optimiser_state(tiny_config):
    trainer = Trainer(tiny_config.replace(epochs=2, schedule=[{"epoch": 2, "values": {"lr": 1e-4}}]))
    steps_per_epoch = math.ceil(240 / tiny_config.batch_size)
    trainer.run_epoch()
    assert trainer.optimiser.param_groups[0]["lr"] == tiny_config.lr
    first = next(iter(trainer.optimiser.state.values()))
    moment = first["exp_avg_sq"].clone()
    trainer.run_epoch()
    state = next(iter(trainer.optimiser.state.values()))
    assert trainer.optimiser.param_groups[0]["lr"] == 1e-4
    assert int(state["step"]) == 2 * steps_per_epoch  # Adam's step count and moments carried on, not restarted
    assert not torch.equal(state["exp_avg_sq"], moment) and torch.all(
        state["exp_avg_sq"] >= 0.999**steps_per_epoch * moment
    )


def test_overclustering_head_trains_alongside(tiny_config):
    result = train(tiny_config.replace(overcluster_k=30, epochs=1))
    assert math.isfinite(result.metrics["loss_overcluster"])
    assert result.metrics["loss_overcluster"] < 0


def test_sobel_and_both_view_augmentation_run(tiny_config):
    result = train(tiny_config.replace(sobel=True, sobel_keep_input=True, augment_both_views=True, epochs=1))
    assert result.status == "completed" and result.metrics["cluster_accuracy"] > 0


def test_divergence_ends_the_run_with_a_status(tiny_config):
    result = train(tiny_config.replace(lr=1e30, epochs=4))
    assert result.status == "diverged"
    assert len(result.history) < 4 and math.isnan(result.history[-1]["loss"])


def test_callback_can_stop_the_run(tiny_config):
    result = train(tiny_config.replace(epochs=5), on_epoch=lambda metrics, trainer: metrics["epoch"] >= 2)
    assert result.status == "stopped" and len(result.history) == 2


def test_cli_writes_metrics_config_checkpoint_and_plot(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "--dataset",
            "digits",
            "--epochs",
            "2",
            "--seed",
            "3",
            "--out",
            str(out),
            "--set",
            "max_samples=200",
            "--set",
            "backbone_width=4",
            "--set",
            "num_subheads=1",
            "--set",
            "device=cpu",
        ]
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("cluster_accuracy", "majority_accuracy", "nmi", "ari", "largest_cluster_share", "epochs", "status"):
        assert key in metrics
    assert metrics["epochs"] == 2 and metrics["status"] == "completed"
    assert "seed: 3" in (out / "config.yaml").read_text()
    assert (out / "checkpoint.pt").stat().st_size > 0
    assert (out / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    assert "epoch   2/2" in capsys.readouterr().out
    # continuing to more epochs picks up at epoch 3
    assert main(["--config", str(out / "config.yaml"), "--epochs", "3", "--out", str(out), "--resume"]) == 0
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 3


def test_cli_replays_a_schedule_and_records_a_resume_with_new_values(tiny_config, tmp_path):
    scheduled = tiny_config.replace(schedule=[{"epoch": 2, "values": CHANGES}])
    assert (
        main(["--config", str(scheduled.to_yaml(tmp_path / "scheduled.yaml")), "--out", str(tmp_path / "replay")]) == 0
    )
    # one epoch, then resumed with the new values: the run's config.yaml records them as its schedule
    out = str(tmp_path / "resumed")
    assert main(["--config", str(tiny_config.replace(epochs=1).to_yaml(tmp_path / "plain.yaml")), "--out", out]) == 0
    assert (
        main(
            [
                "--config",
                str(tiny_config.replace(**CHANGES).to_yaml(tmp_path / "changed.yaml")),
                "--out",
                out,
                "--resume",
            ]
        )
        == 0
    )
    assert IICConfig.from_yaml(tmp_path / "resumed" / "config.yaml") == scheduled
    replayed, resumed = (json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("replay", "resumed"))
    assert resumed["epochs"] == replayed["epochs"] == 2
    assert resumed["loss"] == pytest.approx(replayed["loss"], abs=1e-6)
    assert resumed["cluster_accuracy"] == pytest.approx(replayed["cluster_accuracy"], abs=1e-6)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "lr=-1"], "lr: must be positive"),
        (
            ["--set", "epochs=2", "--set", "schedule=[{epoch: 3, values: {lr: 0.1}}]"],
            r"schedule[0]: epoch must be a whole number in 1..epochs=2",
        ),
        (["--dataset", "cifar100"], "unknown dataset 'cifar100'"),
        (["--set", "num_clusters=1"], "num_clusters"),
        (["--config", "/no/such.yaml"], "does not exist"),
        (["--resume"], "no checkpoint"),
        (["--set", "dataset=har", "--set", "data_root=/no/har"], "/no/har"),
    ],
)
def test_cli_bad_input_exits_nonzero_with_the_message(tmp_path, capsys, args, message):
    assert main(args + ["--out", str(tmp_path / "run")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_seeds_trained_at_once_equal_each_seed_trained_alone(tiny_config):
    # with twin neighbours, whose draws must come from each seed's own stream (without them, twins are the images)
    config = tiny_config.replace(overcluster_k=20, augment_both_views=True, epochs=2, twin_neighbours=3)
    data = load_dataset("digits", None, max_samples=240, input_size=config.input_size, seed=config.seed)
    seeds = [3, 5, 7]
    together = Trainer(config, data, seeds=seeds)
    alone = [Trainer(config, data, seeds=[seed]) for seed in seeds]
    # the same initial weights and the same first views (shuffling and augmentation per seed)
    for index, trainer in enumerate(alone):
        first = trainer.model.backbone.features[0].weight
        assert torch.equal(together.model.backbone.features[0].weight.view(3, *first.shape)[index], first)
    batches = torch.stack([torch.randperm(240, generator=torch.Generator().manual_seed(s))[:32] for s in seeds])
    sources = together.twin_sources(batches)
    base, twins = together.make_views(together.images[batches], together.images[sources])
    for index, trainer in enumerate(alone):
        its_sources = trainer.twin_sources(batches[index : index + 1])
        its_base, its_twins = trainer.make_views(
            trainer.images[batches[index : index + 1]], trainer.images[its_sources]
        )
        assert torch.equal(sources[index], its_sources[0])
        assert torch.equal(base[index], its_base[0]) and torch.equal(twins[index], its_twins[0])
    # whole epochs: equal up to floating-point noise (grouped convolutions sum in another order)
    for _ in range(2):
        together.run_epoch()
    for index, trainer in enumerate(alone):
        for _ in range(2):
            trainer.run_epoch()
        mine, its = together.seed_histories[index][-1], trainer.seed_histories[0][-1]
        assert mine["seed"] == its["seed"] == seeds[index]
        assert mine["loss"] == pytest.approx(its["loss"], abs=1e-4)
        assert mine["loss_overcluster"] == pytest.approx(its["loss_overcluster"], abs=1e-4)
        assert mine["mutual_information"] == pytest.approx(its["mutual_information"], abs=1e-3)
    assert together.history[-1]["loss"] == pytest.approx(np.mean([h[-1]["loss"] for h in together.seed_histories]))


def test_twins_are_views_of_the_image_or_of_its_pixel_neighbours(tiny_config):
    batches = torch.arange(32).view(1, 32)
    itself = Trainer(tiny_config)
    assert itself.twin_candidates is None
    assert torch.equal(itself.twin_sources(batches), batches.repeat(1, tiny_config.repeats))
    trainer = Trainer(tiny_config.replace(twin_neighbours=3))
    assert torch.equal(trainer.twin_candidates, pair_candidates(nearest_neighbours(trainer.images, 3)))
    drawn = torch.cat(
        [trainer.twin_sources(batches)[0].view(tiny_config.repeats, 32) for _ in range(50)]
    )  # (draws, image)
    for image in range(32):
        # every candidate is drawn (uniformly: 100 draws of 4, each expected 25 times), and nothing else
        assert set(drawn[:, image].tolist()) == set(trainer.twin_candidates[image].tolist())
    assert (trainer.labels[trainer.twin_candidates[:, 1:]] == trainer.labels[:, None]).mean() > 0.9


def test_twin_neighbours_are_checked_before_training(tiny_config, tmp_path):
    with pytest.raises(ConfigError, match="twin_neighbours: must be 0"):
        Trainer(tiny_config.replace(twin_neighbours=-1))
    with pytest.raises(ConfigError, match=r"twin_neighbours: 240 is not below the 240 images .* at most 239"):
        Trainer(tiny_config.replace(twin_neighbours=240))
    trained = Trainer(tiny_config.replace(epochs=1))
    trained.run_epoch()
    trained.save_checkpoint(tmp_path / "checkpoint.pt")
    with pytest.raises(ConfigError, match="twin_neighbours"):  # the pairs shape what was learnt
        Trainer(tiny_config.replace(twin_neighbours=3)).load_checkpoint(tmp_path / "checkpoint.pt")


def test_several_seeds_report_their_consensus_every_epoch_and_keep_it_across_a_resume(tiny_config, tmp_path):
    config = tiny_config.replace(epochs=2)
    trainer = Trainer(config, seeds=[3, 5, 7])
    trainer.run_epoch()
    trainer.save_checkpoint(tmp_path / "checkpoint.pt")
    after_one = trainer.last_consensus.copy()
    metrics = trainer.run_epoch()
    result = trainer.result()
    clusters, expected = consensus_metrics([run.probabilities for run in result.seeds], trainer.labels, 10, 10)
    assert np.array_equal(result.consensus_clusters, clusters)
    assert metrics["consensus_accuracy"] == expected["consensus_accuracy"] and "consensus_nmi" in metrics
    for run in result.seeds:  # each seed's probabilities are those of its clusters
        assert run.probabilities.shape == (240, 10) and np.array_equal(run.probabilities.argmax(axis=1), run.clusters)
    resumed = Trainer(config, seeds=[3, 5, 7])
    resumed.load_checkpoint(tmp_path / "checkpoint.pt")
    assert np.array_equal(resumed.result().consensus_clusters, after_one)
    assert resumed.run_epoch()["consensus_accuracy"] == metrics["consensus_accuracy"]
    one_seed = Trainer(config)
    assert "consensus_accuracy" not in one_seed.run_epoch() and one_seed.result().consensus_clusters is None


def _head_weights(trainer, head):
    return torch.cat([p.detach().flatten() for p in trainer.model.heads[head].parameters()])


def test_self_labelling_trains_the_main_head_in_the_last_epochs_only(tiny_config):
    plain = Trainer(tiny_config.replace(epochs=4, overcluster_k=20), seeds=[3, 5])
    labelling = Trainer(
        tiny_config.replace(epochs=4, overcluster_k=20, self_label_epochs=2, self_label_threshold=0.5), seeds=[3, 5]
    )
    for _ in range(2):  # IIC's epochs: the same training
        plain.run_epoch(), labelling.run_epoch()
    assert torch.equal(_weights(plain), _weights(labelling))
    overcluster_head = _head_weights(labelling, "overcluster")
    for _ in range(2):
        plain.run_epoch(), labelling.run_epoch()
    assert not torch.equal(_head_weights(plain, "main"), _head_weights(labelling, "main"))
    assert torch.equal(_head_weights(labelling, "overcluster"), overcluster_head)  # skipped while self-labelling
    assert ["loss_overcluster" in m for m in labelling.seed_histories[0]] == [True, True, False, False]
    for metrics in labelling.history:  # the share of images confident enough to be pseudo-labels
        assert 0 <= metrics[SELF_LABEL_SHARE] <= 1 and math.isfinite(metrics["loss"])
    assert SELF_LABEL_SHARE not in plain.history[-1]


def test_a_run_stopped_while_self_labelling_resumes_exactly_and_refuses_to_move_the_window(tiny_config, tmp_path):
    config = tiny_config.replace(epochs=4, self_label_epochs=2, self_label_threshold=0.5)
    straight = Trainer(config)
    for epoch in range(1, 5):
        straight.run_epoch()
        if epoch in (2, 3):
            straight.save_checkpoint(tmp_path / f"epoch{epoch}.pt")
    resumed = Trainer(config)
    resumed.load_checkpoint(tmp_path / "epoch3.pt")
    resumed.run_epoch()
    assert torch.equal(_weights(resumed), _weights(straight))
    # epoch 3 self-labelled: 6 epochs of which the last 2 self-label would say it had not
    with pytest.raises(
        ConfigError,
        match=r"which of the 3 epochs trained self-labelled \(epochs and self_label_epochs 4, 2 there; 6, 2 here\)",
    ):
        Trainer(config.replace(epochs=6)).load_checkpoint(tmp_path / "epoch3.pt")
    with pytest.raises(ConfigError, match=r"self_label_threshold, after self-labelled epochs \(0.5 there, 0.9 here\)"):
        Trainer(config.replace(self_label_threshold=0.9)).load_checkpoint(tmp_path / "epoch3.pt")
    # before the window: more epochs, or other self-labelling, continue legitimately
    longer = Trainer(config.replace(epochs=6, self_label_epochs=3, self_label_threshold=0.9))
    longer.load_checkpoint(tmp_path / "epoch2.pt")
    assert longer.epoch == 2 and longer.config.self_label_epochs == 3


def test_a_stop_in_the_last_epoch_wins_over_completed(tiny_config):
    seen = []

    def collapse_at_last(metrics, trainer):
        seen.append(metrics["status"])  # what the run will be unless the callback ends it
        return RunStatus.COLLAPSED

    result = train(tiny_config.replace(epochs=1), on_epoch=collapse_at_last)
    assert seen == ["completed"] and result.status == "collapsed" and result.history[-1]["status"] == "collapsed"
    assert train(tiny_config.replace(epochs=1)).status == "completed"


def test_the_label_free_score_does_not_depend_on_the_evaluation_batch_size(tiny_config):
    trainer = Trainer(tiny_config.replace(epochs=1))
    trainer.run_epoch()
    losses = torch.zeros(tiny_config.num_subheads, 1)
    scores = []
    for batch_size in (1024, 64, 7):
        trainer.config = trainer.config.replace(eval_batch_size=batch_size)
        scores.append(trainer.evaluate(losses)[0]["mutual_information"])
    assert scores[0] == pytest.approx(scores[1], abs=1e-6) and scores[0] == pytest.approx(scores[2], abs=1e-6)


def test_random_streams_are_restored_on_the_cpu_whatever_device_the_checkpoint_was_saved_from(
    tiny_config, tmp_path, monkeypatch
):
    trainer = Trainer(tiny_config.replace(seed=4))
    trainer.run_epoch()
    trainer.save_checkpoint(tmp_path / "checkpoint.pt")
    expected = torch.randperm(240, generator=trainer.shuffle_generators[0])
    real_load = torch.load

    def load_elsewhere(path, map_location=None, **kwargs):
        # A loader that honoured map_location=<GPU> would hand back generator states on that device.
        state = real_load(path, map_location=map_location, **kwargs)
        assert str(map_location) == "cpu", "load checkpoints onto the CPU: generator states must stay CPU ByteTensors"
        return state

    monkeypatch.setattr(torch, "load", load_elsewhere)
    resumed = Trainer(tiny_config.replace(seed=4))
    resumed.load_checkpoint(tmp_path / "checkpoint.pt")
    assert all(g.get_state().device.type == "cpu" for g in resumed.shuffle_generators + resumed.augment_generators)
    assert torch.equal(torch.randperm(240, generator=resumed.shuffle_generators[0]), expected)


def test_cli_trains_several_seeds_and_reports_their_spread(tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "--dataset",
        "digits",
        "--epochs",
        "1",
        "--seeds",
        "3",
        "8",
        "--out",
        str(out),
        "--set",
        "max_samples=200",
        "--set",
        "backbone_width=4",
        "--set",
        "num_subheads=1",
        "--set",
        "device=cpu",
    ]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert [m["seed"] for m in metrics["per_seed"]] == [3, 8]
    assert metrics["cluster_accuracy"] == pytest.approx(np.mean([m["cluster_accuracy"] for m in metrics["per_seed"]]))
    assert "cluster_accuracy_sd" in capsys.readouterr().out
    # every image's cluster: the label-free pick's, each seed's and their consensus
    header, *rows = (out / "clusters.csv").read_text().splitlines()
    assert header == "image,cluster,seed_3,seed_8,consensus" and len(rows) == 200
    consensus = np.array([int(row.split(",")[-1]) for row in rows])
    labels = load_dataset("digits", None, max_samples=200, seed=0).labels.numpy()
    assert metrics["consensus_accuracy"] == pytest.approx(
        clustering_metrics(consensus, labels, 10, 10)["cluster_accuracy"]
    )
    # resuming keeps the checkpoint's seeds
    assert main(["--config", str(out / "config.yaml"), "--epochs", "2", "--out", str(out), "--resume"]) == 0
    assert [m["seed"] for m in json.loads((out / "metrics.json").read_text())["per_seed"]] == [3, 8]


@pytest.fixture
def frozen_config(tiny_config, tmp_path):
    """Digits (grey: expanded to RGB for the weights) at 64 px through a frozen ResNet18 whose
    pretrained weights are a random torchvision ResNet18 saved to a file."""
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet18.pt")
    return tiny_config.replace(
        max_samples=24,
        input_size=64,
        backbone="resnet18",
        backbone_weights=str(tmp_path / "resnet18.pt"),
        freeze_backbone=True,
        batch_size=12,
        epochs=1,
    )


def test_weights_that_do_not_fit_are_a_config_error(frozen_config, tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"backbone_weights: .*empty.pt cannot be read as a state dict"):
        Trainer(frozen_config.replace(backbone_weights=str(tmp_path / "empty.pt")))
    with pytest.raises(ConfigError, match=r"backbone_weights: .*resnet18.pt is not a resnet50 state dict"):
        Trainer(frozen_config.replace(backbone="resnet50"))


NO_AUGMENTATION = {"crop_min_scale": 1.0, "rotation_degrees": 0.0, "brightness": 0.0, "contrast": 0.0}


def test_a_frozen_backbone_keeps_its_weights_and_runs_once_per_step_for_all_seeds(frozen_config, tmp_path):
    trainer = Trainer(frozen_config, seeds=[0, 1])
    heads_before = [p.detach().clone() for p in trainer.model.heads.parameters()]
    images_per_call = []
    trainer.model.backbone.register_forward_hook(lambda module, inputs, output: images_per_call.append(len(inputs[0])))
    trainer.run_epoch()
    # two steps of 2 seeds x 12 images x (1 + 2 twins), then evaluation: the images once for both
    # seeds, and each seed's held-out views
    assert images_per_call == [72, 72, 24, 48]
    saved = torch.load(tmp_path / "resnet18.pt")
    assert all(torch.equal(value, saved[name]) for name, value in trainer.model.backbone.net.state_dict().items())
    assert all(not torch.equal(before, after) for before, after in zip(heads_before, trainer.model.heads.parameters()))


def test_without_augmentation_a_frozen_backbone_sees_each_image_once_for_the_whole_run(frozen_config):
    config = frozen_config.replace(**NO_AUGMENTATION, epochs=2)
    images_seen = []

    def count(module, inputs, output):
        if isinstance(module, torchvision.models.ResNet):
            images_seen.append(len(inputs[0]))

    hook = torch.nn.modules.module.register_module_forward_hook(count)
    try:
        cached = train(config, seeds=[0, 1])
    finally:
        hook.remove()
    assert images_seen == [24]
    # Saturation does nothing to grey images, but counts as augmentation: the same run, computing features every step.
    computed = train(config.replace(saturation=0.5), seeds=[0, 1])
    for mine, its in zip(cached.history, computed.history):
        assert mine["loss"] == pytest.approx(its["loss"], abs=1e-5)
        assert mine["mutual_information"] == pytest.approx(its["mutual_information"], abs=1e-5)


def test_a_frozen_run_resumes_exactly_from_a_checkpoint_of_its_heads(frozen_config, tmp_path):
    config = frozen_config.replace(**NO_AUGMENTATION, epochs=2)
    straight = Trainer(config)
    for _ in range(2):
        straight.run_epoch()
    first = Trainer(config)
    first.run_epoch()
    first.save_checkpoint(tmp_path / "checkpoint.pt")
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=False)["model"]
    assert saved and not any(name.startswith("backbone.") for name in saved)  # the weights file holds the backbone
    resumed = Trainer(config)
    resumed.load_checkpoint(tmp_path / "checkpoint.pt")
    resumed.run_epoch()
    assert torch.equal(_weights(resumed), _weights(straight))


def test_with_pretrained_weights_twin_neighbours_are_found_in_the_backbone_s_features(frozen_config, tmp_path):
    frozen = Trainer(frozen_config.replace(**NO_AUGMENTATION, twin_neighbours=3))
    assert torch.equal(frozen.twin_candidates[:, 1:], nearest_neighbours(frozen.cached_features, 3))
    frozen.run_epoch()
    fine_tuned = Trainer(frozen_config.replace(freeze_backbone=False, twin_neighbours=3))
    saved = torch.load(tmp_path / "resnet18.pt")
    # batch norm ran in evaluation mode: its running statistics are still the file's
    running_mean = fine_tuned.model.state_dict()["backbone.net.bn1.running_mean"]
    assert running_mean.shape == saved["bn1.running_mean"].shape and torch.equal(
        running_mean, saved["bn1.running_mean"]
    )
    assert not torch.equal(fine_tuned.twin_candidates[:, 1:], nearest_neighbours(fine_tuned.images, 3))
    fine_tuned.run_epoch()


def _two_epochs_then_resumed_in_eager(config, tmp_path):
    """Losses of 2 epochs of ``config``, then of a third by a default (eager, NCHW) trainer resumed from its checkpoint."""
    fast = Trainer(config, seeds=[0, 1])
    losses = [fast.run_epoch()["loss"] for _ in range(2)]
    fast.save_checkpoint(tmp_path / "checkpoint.pt")
    eager = Trainer(config.replace(channels_last=False, compile_mode="off"), seeds=[0, 1])
    eager.load_checkpoint(tmp_path / "checkpoint.pt")
    return losses + [eager.run_epoch()["loss"]]


def test_channels_last_trains_as_the_default_layout_does_and_resumes_without_it(tiny_config, tmp_path):
    config = tiny_config.replace(epochs=3, overcluster_k=20, sobel=True)
    plain = Trainer(config, seeds=[0, 1])
    expected = [plain.run_epoch()["loss"] for _ in range(3)]
    fast = Trainer(config.replace(channels_last=True), seeds=[0, 1])
    convolutions = [p for p in fast.model.parameters() if p.dim() == 4]
    assert convolutions and all(p.is_contiguous(memory_format=torch.channels_last) for p in convolutions)
    assert _two_epochs_then_resumed_in_eager(config.replace(channels_last=True), tmp_path) == pytest.approx(
        expected, abs=1e-4
    )


@pytest.mark.parametrize("freeze_backbone", [True, False])
def test_channels_last_gives_a_pretrained_resnet18_the_same_outputs_and_loss(frozen_config, freeze_backbone):
    # The GPU presets set channels_last for their ResNet18 (pretrained, frozen or fine-tuned). Whole
    # epochs are not compared: fine-tuned, one Adam step turns rounding into steps of ±lr on weights
    # whose gradient is nearly zero.
    config = frozen_config.replace(freeze_backbone=freeze_backbone, twin_neighbours=3)
    plain, fast = Trainer(config), Trainer(config.replace(channels_last=True))
    for expected, got in zip(plain._predict(held_out_views=False), fast._predict(held_out_views=False)):
        assert torch.allclose(got, expected, atol=1e-5)
    batches = torch.arange(config.batch_size).unsqueeze(0)
    losses = [
        trainer.step(
            *trainer.make_views(trainer.images[batches], trainer.images[trainer.twin_sources(batches)]), "main"
        )
        for trainer in (plain, fast)
    ]
    assert torch.allclose(losses[1], losses[0], atol=1e-5)
    assert fast.run_epoch()["status"] == "running"


@pytest.mark.slow  # compiling takes 15-50 s on 2 cores
def test_a_compiled_training_step_trains_as_eager_does_and_resumes_without_it(tiny_config, tmp_path):
    config = tiny_config.replace(epochs=3, overcluster_k=20)
    plain = Trainer(config, seeds=[0, 1])
    expected = [plain.run_epoch()["loss"] for _ in range(3)]
    assert _two_epochs_then_resumed_in_eager(config.replace(compile_mode="default"), tmp_path) == pytest.approx(
        expected, abs=1e-4
    )


def test_an_unknown_compile_mode_is_refused_naming_the_modes(tiny_config):
    with pytest.raises(ConfigError, match="compile_mode: 'fast' is not one of off, default, reduce-overhead"):
        tiny_config.replace(compile_mode="fast").validate()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize(
    "changes",
    [
        {"channels_last": True},
        {"compile_mode": "reduce-overhead"},
        {"channels_last": True, "compile_mode": "reduce-overhead"},
    ],
)
def test_cuda_speed_settings_train_as_the_default_does(tiny_config, changes):
    # CUDA graphs (reduce-overhead) and NHWC kernels exist only on a GPU: the CPU tests cannot show their failures.
    config = tiny_config.replace(device="cuda", amp=False, epochs=3, overcluster_k=20)
    expected = train(config, seeds=[0, 1]).history
    history = train(config.replace(**changes), seeds=[0, 1]).history
    assert [m["loss"] for m in history] == pytest.approx([m["loss"] for m in expected], abs=1e-3)  # other kernels
    in_bf16 = train(config.replace(amp=True, **changes), seeds=[0, 1])
    assert in_bf16.status == "completed" and math.isfinite(in_bf16.metrics["loss"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_run_with_mixed_precision(tiny_config):
    result = train(tiny_config.replace(device="cuda", amp=True, overcluster_k=20), seeds=[0, 1])
    assert result.status == "completed" and math.isfinite(result.metrics["loss"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_frozen_backbone_with_mixed_precision(frozen_config):
    for changes in ({}, NO_AUGMENTATION):  # features computed every step, and cached (in bf16)
        result = train(frozen_config.replace(device="cuda", amp=True, epochs=2, **changes), seeds=[0, 1])
        assert result.status == "completed" and math.isfinite(result.metrics["loss"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_resume_continues_exactly(tiny_config, tmp_path):
    # Every GPU search relies on it: Tune's retries, --resume, python -m iic.train --resume.
    config = tiny_config.replace(device="cuda", amp=False, epochs=3)
    straight = train(config, seeds=[1, 2])

    def stop_after_two(metrics, trainer):
        if metrics["epoch"] == 2:
            trainer.save_checkpoint(tmp_path / "checkpoint.pt")
            return True

    train(config, on_epoch=stop_after_two, seeds=[1, 2])
    resumed = train(config, resume_from=tmp_path / "checkpoint.pt", seeds=[1, 2])
    assert resumed.status == "completed" and [m["epoch"] for m in resumed.history] == [1, 2, 3]
    # cuDNN may pick other kernels in a new process, so equal up to floating-point noise
    assert resumed.history[-1]["loss"] == pytest.approx(straight.history[-1]["loss"], abs=1e-3)


def test_screening_keeps_each_seeds_initialisation_with_the_highest_held_out_mi_which_trains_as_alone(tiny_config):
    config = tiny_config.replace(epochs=4, screen_inits=2, screen_epochs=2, overcluster_k=20)
    data = load_dataset("digits", None, max_samples=240, input_size=config.input_size, seed=config.seed)
    trainer = Trainer(config, data, seeds=[3, 5])
    inits = list(trainer.seeds)
    assert len(inits) == 4 and inits[0] == 3 and inits[2] == 5 and len(set(inits)) == 4
    for epoch in (1, 2):
        metrics = trainer.run_epoch()
        if epoch == 1:  # screening: all four train, each seed reports its initialisation with the higher MI
            per_model = [history[-1] for history in trainer.seed_histories]
            reported = [max(per_model[i : i + 2], key=lambda m: m["mutual_information"]) for i in (0, 2)]
            assert len(trainer.seeds) == 4 and metrics["num_seeds"] == 2
            assert metrics["cluster_accuracy"] == pytest.approx(np.mean([m["cluster_accuracy"] for m in reported]))
            assert [m["seed"] for m in per_model] == [3, 3, 5, 5] and [m["init_seed"] for m in per_model] == inits
            assert metrics["init_seed"] == [
                m["init_seed"] for m in reported
            ]  # which initialisation each seed's figures are
    later = Trainer(config.replace(screen_epochs=3), data, seeds=[3, 5])  # trains the same two epochs, keeping all four
    for _ in range(2):
        later.run_epoch()
    at_screening = {init: history[-1]["mutual_information"] for init, history in zip(later.seeds, later.seed_histories)}
    kept = list(trainer.seeds)  # after epoch 2, one initialisation per seed: the higher MI
    assert kept == [max(inits[i : i + 2], key=at_screening.get) for i in (0, 2)]
    for _ in range(2):
        trainer.run_epoch()
    result = trainer.result()
    assert [run.seed for run in result.seeds] == [3, 5] and [run.init_seed for run in result.seeds] == kept
    assert result.metrics["init_seed"] == kept
    # The kept models go on exactly as in a stack of all four that never dropped any (weights,
    # optimiser state and random streams carried over), and so as each would alone (up to the
    # floating-point noise of stacking: test_seeds_trained_at_once_equal_each_seed_trained_alone).
    all_four = train(config.replace(screen_inits=1), data=data, seeds=inits)
    for run, init in zip(result.seeds, kept):
        assert all(m.pop("init_seed") == init for m in run.history)
        assert [{**m, "seed": init} for m in run.history] == all_four.seeds[
            inits.index(init)
        ].history  # reported as its seed
        assert np.array_equal(run.probabilities, all_four.seeds[inits.index(init)].probabilities)


def test_an_earlier_cut_keeps_each_seeds_highest_in_mi_and_the_pick_is_made_among_them(tiny_config):
    config = tiny_config.replace(epochs=3, screen_inits=3, screen_cut_epochs=1, screen_cut_keep=2, screen_epochs=2)
    data = load_dataset("digits", None, max_samples=240, input_size=config.input_size, seed=config.seed)
    trainer = Trainer(config, data, seeds=[3, 5])
    inits = list(trainer.seeds)
    all_six = train(config.replace(screen_inits=1, screen_cut_epochs=0), data=data, seeds=inits)
    mi = {init: [m["mutual_information"] for m in run.history] for init, run in zip(inits, all_six.seeds)}
    groups = [inits[:3], inits[3:]]
    survivors = [sorted(group, key=lambda init: -mi[init][0])[:2] for group in groups]
    trainer.run_epoch()
    assert trainer.seeds == [init for group, kept in zip(groups, survivors) for init in group if init in kept]
    assert trainer.origins == [3, 3, 5, 5]
    trainer.run_epoch()
    picks = [max(kept, key=lambda init: mi[init][1]) for kept in survivors]
    assert trainer.seeds == picks
    trainer.run_epoch()
    result = trainer.result()
    assert [run.init_seed for run in result.seeds] == picks
    for run, init in zip(result.seeds, picks):  # each as it would train alone (weights, Adam, streams kept)
        assert [{**m, "seed": init} for m in run.history] == [
            {**m, "init_seed": init} for m in all_six.seeds[inits.index(init)].history
        ]


@pytest.mark.parametrize(
    "screening, sizes",
    [
        ({"screen_inits": 2, "screen_epochs": 2}, (4, 2)),  # checkpoints before and after the pick
        ({"screen_inits": 3, "screen_cut_epochs": 1, "screen_epochs": 3}, (4, 2)),  # after the cut, after the pick
    ],
)
def test_a_screening_run_resumes_exactly_before_and_after_the_pick(tiny_config, tmp_path, screening, sizes):
    config = tiny_config.replace(epochs=4, **screening)
    straight = Trainer(config, seeds=[3, 5])
    for epoch in range(1, 5):
        straight.run_epoch()
        if epoch in (1, 3):
            straight.save_checkpoint(tmp_path / f"epoch{epoch}.pt")
    for epoch in (1, 3):
        resumed = Trainer(config, seeds=[3, 5])
        resumed.load_checkpoint(tmp_path / f"epoch{epoch}.pt")
        assert len(resumed.seeds) == sizes[epoch == 3]
        while resumed.epoch < 4:
            resumed.run_epoch()
        assert resumed.seeds == straight.seeds
        assert resumed.history[-1]["loss"] == straight.history[-1]["loss"]
        assert torch.equal(_weights(resumed), _weights(straight))
    assert Trainer.saved_seeds(tmp_path / "epoch3.pt") == [3, 5]
    with pytest.raises(ConfigError, match="screen_inits"):  # which models train is the run's identity
        Trainer(config.replace(screen_inits=config.screen_inits + 1), seeds=[3, 5]).load_checkpoint(
            tmp_path / "epoch1.pt"
        )


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"screen_inits": 0}, "screen_inits: must be at least 1"),
        ({"screen_inits": 2, "screen_epochs": 3}, r"screen_epochs: must be from 1 to epochs = 2 \(got 3\)"),
        ({"screen_inits": 2, "screen_epochs": 0}, "screen_epochs: must be from 1"),
        ({"screen_inits": 3, "screen_cut_epochs": -1}, "screen_cut_epochs: must be 0"),
        (
            {"screen_inits": 3, "screen_cut_epochs": 1, "screen_epochs": 1},
            r"screen_cut_epochs: must be below screen_epochs = 1 \(got 1\)",
        ),
        (
            {"screen_inits": 3, "screen_cut_epochs": 1, "screen_cut_keep": 3},
            r"screen_cut_keep: must be from 2 to screen_inits - 1 = 2 \(got 3\)",
        ),
        ({"screen_inits": 3, "screen_cut_epochs": 1, "screen_cut_keep": 1}, "screen_cut_keep: must be from 2"),
    ],
)
def test_bad_screening_is_refused_before_training(tiny_config, changes, message):
    with pytest.raises(ConfigError, match=message):
        Trainer(tiny_config.replace(**changes))


@pytest.mark.parametrize("stopped_after", [1, 2])  # at the cut, and between the cut and the pick
def test_a_screening_run_stopped_early_is_its_truncated_configs_run(tiny_config, stopped_after):
    # A search stops trials mid-run (ASHA, the budget, the deadline); confirming or exporting one
    # retrains its config truncated to the epochs it ran, which must be valid and train the same.
    config = tiny_config.replace(epochs=5, screen_inits=3, screen_cut_epochs=1, screen_cut_keep=2, screen_epochs=3)
    data = load_dataset("digits", None, max_samples=240, input_size=config.input_size, seed=config.seed)
    stopped = Trainer(config, data, seeds=[3])
    for _ in range(stopped_after):
        stopped.run_epoch()
    truncated = config.truncated(stopped_after).validate(check_data=False)
    assert truncated.screen_epochs == stopped_after and truncated.screen_cut_epochs == (1 if stopped_after > 1 else 0)

    def trajectory(history):  # what was trained and measured, not how long it took or whether it ended
        return [{key: value for key, value in m.items() if key not in ("epoch_seconds", "status")} for m in history]

    assert trajectory(train(truncated, data=data, seeds=[3]).history) == trajectory(stopped.history)
