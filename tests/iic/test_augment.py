import math

import pytest
import torch

from iic.augment import BatchAugment


def _generator(seed=0):
    return torch.Generator().manual_seed(seed)


def _images(n=6, channels=3, size=16, seed=0):
    return torch.rand(n, channels, size, size, generator=_generator(seed))


def test_all_off_is_identity():
    images = _images()
    assert torch.equal(BatchAugment()(images, _generator()), images)


def test_each_image_gets_its_own_draw():
    image = _images(1)
    batch = image.repeat(8, 1, 1, 1)
    out = BatchAugment(crop_min_scale=0.5, rotation_degrees=30, brightness=0.4)(batch, _generator())
    distinct = {tuple(o.flatten()[:20].tolist()) for o in out}
    assert len(distinct) == 8


def test_same_generator_seed_reproduces_the_batch():
    augment = BatchAugment(
        crop_min_scale=0.3, hflip_prob=0.5, rotation_degrees=20, brightness=0.3, contrast=0.3, saturation=0.3, hue=0.1
    )
    images = _images()
    assert torch.equal(augment(images, _generator(7)), augment(images, _generator(7)))
    assert not torch.equal(augment(images, _generator(7)), augment(images, _generator(8)))


def test_horizontal_and_vertical_flips_mirror_the_image():
    images = _images(4, channels=1)
    assert torch.allclose(BatchAugment(hflip_prob=1.0)(images, _generator()), images.flip(-1), atol=1e-5)
    assert torch.allclose(BatchAugment(vflip_prob=1.0)(images, _generator()), images.flip(-2), atol=1e-5)


def test_rotation_of_180_degrees_turns_the_image_over():
    images = _images(64, channels=1, size=8)
    out = BatchAugment(rotation_degrees=180)(images, _generator())
    turned = images.flip(-1).flip(-2)
    # angles are uniform in ±180°, so some images come out close to upside down
    closest = min(((o - t).abs().mean().item() for o, t in zip(out, turned, strict=True)))
    assert closest < 0.05


def test_crop_zooms_in_on_part_of_the_image():
    image = torch.zeros(1, 1, 32, 32)
    image[..., :16] = 1.0  # left half bright
    out = BatchAugment(crop_min_scale=0.1)(image.repeat(256, 1, 1, 1), _generator())
    bright_share = out.mean(dim=(1, 2, 3))
    # crops of at most ~1/3 the side land entirely in one half for some draws
    assert bright_share.max() > 0.95 and bright_share.min() < 0.1


def test_colour_jitter_stays_in_range_and_changes_colour():
    images = _images()
    out = BatchAugment(brightness=0.8, contrast=0.8, saturation=0.8, hue=0.5)(images, _generator())
    assert out.min() >= 0 and out.max() <= 1
    assert (out - images).abs().mean() > 0.05


def test_hue_rotation_keeps_grey_pixels_grey():
    grey = torch.full((3, 3, 4, 4), 0.5)
    out = BatchAugment(hue=0.5)(grey, _generator())
    assert torch.allclose(out, grey, atol=1e-4)


def test_brightness_scales_within_strength():
    images = torch.full((100, 1, 2, 2), 0.5)
    out = BatchAugment(brightness=0.2)(images, _generator())
    assert out.min() >= 0.5 * 0.8 - 1e-6 and out.max() <= 0.5 * 1.2 + 1e-6
    assert out.std() > 0.01


def test_greyscale_images_ignore_saturation_and_hue():
    images = _images(channels=1)
    assert torch.equal(BatchAugment(saturation=0.9, hue=0.4)(images, _generator()), images)


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_runs_on_the_generators_device(device):
    images = _images().to(device)
    out = BatchAugment(crop_min_scale=0.5, rotation_degrees=10, hue=0.1)(images, torch.Generator(device).manual_seed(0))
    assert out.device.type == device and out.shape == images.shape and not math.isnan(out.sum().item())


def _bright_column(rows: torch.Tensor) -> torch.Tensor:
    """The column of each image's brightest pixel over ``rows`` (N, 1, R, W) -> (N,)."""
    return rows.sum(dim=(1, 2)).argmax(dim=1)


def test_shear_slants_a_vertical_bar():
    bar = torch.zeros(1, 1, 32, 32)
    bar[..., 15:17] = 1.0
    bars = bar.repeat(256, 1, 1, 1)
    slanted = BatchAugment(shear_degrees=40)(bars, _generator())
    offsets = (_bright_column(slanted[..., :6, :]) - _bright_column(slanted[..., -6:, :])).abs()
    # tan(40°) ≈ 0.84: a bar 26 rows long slants by up to ~20 columns; near-zero shears barely move it
    assert offsets.max() >= 10 and offsets.min() <= 2
    upright = BatchAugment(shear_degrees=0.0, crop_min_scale=0.99)(bars, _generator())
    assert (_bright_column(upright[..., :6, :]) - _bright_column(upright[..., -6:, :])).abs().max() <= 1


def test_shear_is_drawn_after_the_other_warps_so_runs_without_it_are_unchanged():
    kwargs = dict(crop_min_scale=0.5, hflip_prob=0.5, rotation_degrees=20)
    with_shear = BatchAugment(shear_degrees=10, **kwargs).sample(16, 1, _generator(3))
    without = BatchAugment(**kwargs).sample(16, 1, _generator(3))
    assert without.shear is None and with_shear.shear.abs().max() <= math.radians(10)
    for name in ("side", "shift_x", "shift_y", "angle", "flip_x", "flip_y"):
        assert torch.equal(getattr(with_shear, name), getattr(without, name)), name


def test_zero_shear_leaves_the_warp_as_rotation_crop_and_flips():
    images = _images(8, channels=1)
    draw = BatchAugment(crop_min_scale=0.5, rotation_degrees=30, shear_degrees=10).sample(8, 1, _generator())
    draw.shear = torch.zeros(8)
    sheared_by_zero = BatchAugment().apply(images, draw)
    draw.shear = None
    assert torch.equal(sheared_by_zero, BatchAugment().apply(images, draw))
