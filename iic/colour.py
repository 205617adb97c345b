"""RGB -> grey, defined once: dataset loading, colour jitter and Sobel all convert with these weights."""

import torch

# ITU-R 601 luma weights (the ones PIL uses for mode "L"), in R, G, B order.
LUMA = (0.299, 0.587, 0.114)


def luma_weights(device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """LUMA as a (1, 3, 1, 1) tensor that broadcasts over (N, 3, H, W) images."""
    return torch.tensor(LUMA, device=device, dtype=dtype).view(1, 3, 1, 1)


def to_grey(images: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 1, H, W) luma; one-channel images come back unchanged.

    ``weights``: :func:`luma_weights` already on the images' device and in their dtype. A module
    that converts every step keeps them as a buffer, so that no host-to-device copy runs per call;
    without them they are made here.
    """
    if images.shape[1] == 1:
        return images
    if weights is None:
        weights = luma_weights(images.device, images.dtype)
    return (images * weights).sum(dim=1, keepdim=True)
