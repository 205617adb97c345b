"""Figures of a clustering: the confusion matrix, and sample images of each cluster."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: training machines have no display
import numpy as np
import torch
from matplotlib import pyplot as plt
from scipy.optimize import linear_sum_assignment


def plot_confusion_matrix(confusion: np.ndarray, class_names: list[str], path: str | Path, title: str = "") -> Path:
    """Clusters (rows, reordered by their Hungarian match) against true classes (columns)."""
    rows, cols = linear_sum_assignment(confusion, maximize=True)
    order = list(rows[np.argsort(cols)]) + [r for r in range(confusion.shape[0]) if r not in set(rows)]
    confusion = confusion[order]
    size = max(4.0, 0.45 * max(confusion.shape) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(len(class_names)), class_names, rotation=60, ha="right")
    ax.set_yticks(range(len(order)), [f"cluster {c}" for c in order])
    ax.set_xlabel("true class")
    ax.set_ylabel("cluster (matched order)")
    if confusion.size <= 400:
        threshold = confusion.max() / 2
        for (i, j), count in np.ndenumerate(confusion):
            ax.text(
                j, i, str(count), ha="center", va="center", fontsize=7, color="white" if count > threshold else "black"
            )
    ax.set_title(title or "cluster assignments vs classes")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def cluster_samples(
    images: torch.Tensor, clusters: np.ndarray, num_clusters: int, per_cluster: int = 8, seed: int = 0
) -> dict[str, np.ndarray]:
    """Up to ``per_cluster`` random member images of every cluster, with the cluster sizes: all a
    gallery needs, small enough to travel with a checkpoint. ``images``: uint8 (N, C, H, W)."""
    rng = np.random.default_rng(seed)
    chosen = [
        rng.choice(members, size=min(per_cluster, len(members)), replace=False)
        for members in (np.flatnonzero(clusters == cluster) for cluster in range(num_clusters))
    ]
    indices = np.concatenate(chosen).astype(np.int64) if chosen else np.zeros(0, dtype=np.int64)
    return {
        "sample_images": images[torch.from_numpy(indices)].cpu().numpy(),
        "sample_clusters": np.asarray(clusters)[indices],
        "cluster_sizes": np.bincount(clusters, minlength=num_clusters),
    }


def plot_cluster_gallery(samples: dict[str, np.ndarray], path: str | Path, per_cluster: int = 8) -> Path:
    """One row per cluster: its size and sample members (as in the seed study's figures of
    cluster contents); ``samples`` comes from :func:`cluster_samples`. The rows are tiled into one
    image first: one image to draw, not one axes per sample, keeps it fast on the search's driver."""
    sizes, images, owners = samples["cluster_sizes"], samples["sample_images"], samples["sample_clusters"]
    channels, height, width = images.shape[1:] if images.ndim == 4 and len(images) else (1, 8, 8)
    pad = max(1, height // 8)
    mosaic = np.full(
        (pad + len(sizes) * (height + pad), pad + per_cluster * (width + pad), channels), 255, dtype=np.uint8
    )
    for cluster in range(len(sizes)):
        for column, image in enumerate(images[owners == cluster][:per_cluster]):
            top, left = pad + cluster * (height + pad), pad + column * (width + pad)
            mosaic[top : top + height, left : left + width] = image.transpose(1, 2, 0)
    fig, ax = plt.subplots(figsize=(1.6 + per_cluster * 0.6, 0.4 + len(sizes) * 0.6))
    grey = channels == 1
    ax.imshow(
        mosaic[..., 0] if grey else mosaic, cmap="gray" if grey else None, vmin=0, vmax=255, interpolation="nearest"
    )
    ax.set_yticks(
        [pad + cluster * (height + pad) + height / 2 for cluster in range(len(sizes))],
        [f"cluster {cluster} (n={size})" for cluster, size in enumerate(sizes)],
        fontsize=7,
    )
    ax.set_xticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
