"""Nearest neighbours as pairs: each image's twins may be views of the images most like it.

IIC pairs an image with augmented views of itself, so what it learns to ignore is what the
augmentations change. SCAN (Van Gansbeke et al., "SCAN: Learning to Classify Images without
Labels", ECCV 2020, arXiv:2005.12320, section 2.2) and TEMI (Adaloglou et al., "Exploring the
Limits of Deep Image Clustering using Pretrained Models", BMVC 2023, arXiv:2303.17896) pair it
with its nearest neighbours in a feature space instead, which also ties together images of one
class that no augmentation turns into each other. Where there are no pretrained features, the
pixels are that space (on the bundled digits 97.8% of each image's 5 nearest neighbours by cosine
similarity share its class).
"""

import torch
import torch.nn.functional as F


def nearest_neighbours(vectors: torch.Tensor, k: int, chunk_size: int = 1024) -> torch.Tensor:
    """The ``k`` rows most like each row of ``vectors`` (N, ...) by cosine similarity, itself
    excluded, nearest first: (N, k) indices. Compared ``chunk_size`` rows at a time, so memory
    grows with N * chunk_size rather than N².

    Example:
        >>> neighbours = nearest_neighbours(images.flatten(1), k=5)   # (N, 5)
    """
    count = len(vectors)
    if not 1 <= k < count:
        raise ValueError(f"k must be from 1 to {count - 1}, the number of other rows (got {k})")
    unit = F.normalize(vectors.flatten(1).float(), dim=1)
    chunks = []
    for start in range(0, count, chunk_size):
        stop = min(start + chunk_size, count)
        similarity = unit[start:stop] @ unit.T
        rows = torch.arange(stop - start, device=unit.device)
        similarity[rows, rows + start] = -float("inf")  # never its own neighbour
        chunks.append(similarity.topk(k, dim=1).indices)
    return torch.cat(chunks)


def pair_candidates(neighbours: torch.Tensor) -> torch.Tensor:
    """(N, k) neighbours -> (N, k + 1): each image itself, then its neighbours; a twin's source is
    drawn uniformly from its image's row."""
    return torch.cat([torch.arange(len(neighbours), device=neighbours.device)[:, None], neighbours], dim=1)
