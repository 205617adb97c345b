"""Sobel preprocessing: images become their horizontal and vertical gradients.

The IIC paper applies it to CIFAR/STL so that clusters cannot form on colour alone; the seed study
named it as untried future work. It runs on the training device, after augmentation.
"""

import torch
from torch import nn
from torch.nn import functional as F

from iic.colour import luma_weights, to_grey


class Sobel(nn.Module):
    """Greyscale, then x/y Sobel filters: (N, C, H, W) in [0, 1] -> (N, 2, H, W).

    Example:
        >>> sobel = Sobel()
        >>> sobel(torch.rand(8, 3, 32, 32)).shape
        torch.Size([8, 2, 32, 32])
    """

    OUTPUT_CHANNELS = 2

    def __init__(self):
        super().__init__()
        gx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
        kernels = torch.stack([gx, gx.t()]).unsqueeze(1)  # (2, 1, 3, 3)
        self.register_buffer("kernels", kernels, persistent=False)
        # A buffer, so that the weights move with the module and no step copies them to the device.
        self.register_buffer("luma", luma_weights(), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        grey = to_grey(images, self.luma.to(images.dtype))
        gradients = F.conv2d(grey, self.kernels.to(images.dtype), padding=1)
        return gradients
