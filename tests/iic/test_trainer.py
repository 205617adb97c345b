import math

import numpy as np
import pytest
import torch
import torchvision

from iic.config import ConfigError
from iic.data import load_dataset
from iic.evaluation import evaluate, predict
from iic.neighbours import nearest_neighbours, pair_candidates
from iic.status import RunStatus
from iic.trainer import Trainer, train


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


def test_every_epoch_reports_seed_agreement_and_label_free_and_the_last_generalization(tiny_config):
    result = train(tiny_config, seeds=[3, 4])
    first, last = result.history
    for epoch in (first, last):
        assert -1 <= epoch["seed_agreement"] <= 1
        assert epoch["label_free"] == pytest.approx(max(epoch["seed_agreement"], 0) * epoch["cluster_size_entropy"])
    assert "generalization" not in first and 0 < last["generalization"] <= 1  # a classifier fit: the last epoch only
    assert "seed_agreement" not in train(tiny_config.replace(epochs=1)).metrics  # one seed agrees with nothing


def test_without_labels_a_run_reports_no_figure_that_needs_them(tiny_config):
    data = load_dataset("digits", max_samples=240, input_size=16)
    data.labels[:] = -1
    result = train(tiny_config.replace(epochs=1), data=data, seeds=[3, 4])
    assert not {"cluster_accuracy", "nmi", "ari", "label_free_pick_accuracy"} & set(result.metrics)
    assert {"label_free", "seed_agreement", "cluster_size_entropy", "generalization"} <= set(result.metrics)
    assert result.confusion is None


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
        match=r"num_subheads, batch_size differ\); resume with the same config and seeds \(only epochs, .* may change, "
        r"and crop_min_scale, .*, lr, lamb, which then change from the restored epoch on\)",
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
    for mine, its in zip(resumed.history, straight.history, strict=True):
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


def test_sobel_runs(tiny_config):
    result = train(tiny_config.replace(sobel=True, epochs=1))
    assert result.status == "completed" and result.metrics["cluster_accuracy"] > 0


def test_divergence_ends_the_run_with_a_status(tiny_config):
    result = train(tiny_config.replace(lr=1e30, epochs=4))
    assert result.status == "diverged"
    assert len(result.history) < 4 and math.isnan(result.history[-1]["loss"])


def test_callback_can_stop_the_run(tiny_config):
    result = train(tiny_config.replace(epochs=5), on_epoch=lambda metrics, trainer: metrics["epoch"] >= 2)
    assert result.status == "stopped" and len(result.history) == 2


def test_seeds_trained_at_once_equal_each_seed_trained_alone(tiny_config):
    # with twin neighbours, whose draws must come from each seed's own stream (without them, twins are the images)
    config = tiny_config.replace(overcluster_k=20, epochs=2, twin_neighbours=3)
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


def _head_weights(trainer, head):
    return torch.cat([p.detach().flatten() for p in trainer.model.heads[head].parameters()])


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
        scores.append(evaluate(trainer, losses)[0]["mutual_information"])
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
    assert all(
        not torch.equal(before, after)
        for before, after in zip(heads_before, trainer.model.heads.parameters(), strict=True)
    )


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
    for mine, its in zip(cached.history, computed.history, strict=True):
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
    """Losses of 2 epochs of ``config``, then of a third by a default (eager, NCHW) trainer
    resumed from its checkpoint."""
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
    for expected, got in zip(predict(plain, held_out_views=False), predict(fast, held_out_views=False), strict=True):
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
