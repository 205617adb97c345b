import torch

from iic.sobel import Sobel


def test_colour_and_grey_images_give_two_gradient_channels():
    rgb = torch.rand(4, 3, 12, 12)
    assert Sobel()(rgb).shape == (4, 2, 12, 12)
    assert Sobel()(torch.rand(2, 1, 8, 8)).shape == (2, 2, 8, 8)
    assert Sobel.OUTPUT_CHANNELS == 2


def test_vertical_edge_shows_in_x_gradient_only():
    image = torch.zeros(1, 1, 8, 8)
    image[..., 4:] = 1.0  # dark left half, bright right half
    gradients = Sobel()(image)
    gx, gy = gradients[0, 0], gradients[0, 1]
    assert gx[2:6, 3:5].min() > 0  # positive response across the edge
    assert gy[2:6, 1:7].abs().max() == 0  # no vertical change away from the border
    assert gx[2:6, 0:2].abs().max() == 0  # flat region


def test_flat_image_has_no_gradient_inside():
    gradients = Sobel()(torch.full((1, 3, 6, 6), 0.7))
    assert gradients[..., 1:-1, 1:-1].abs().max() < 1e-6
