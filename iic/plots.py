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
            ax.text(j, i, str(count), ha="center", va="center", fontsize=7, color="white" if count > threshold else "black")
    ax.set_title(title or "cluster assignments vs classes")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_cluster_gallery(images: torch.Tensor, clusters: np.ndarray, num_clusters: int, path: str | Path, per_cluster: int = 8, seed: int = 0) -> Path:
    """A grid with one row per cluster: its size and up to ``per_cluster`` random member images
    (as in the seed study's figures of cluster contents). ``images``: uint8 (N, C, H, W)."""
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(num_clusters, per_cluster, figsize=(per_cluster * 0.9, num_clusters * 0.95), squeeze=False)
    for cluster in range(num_clusters):
        members = np.flatnonzero(clusters == cluster)
        shown = rng.choice(members, size=min(per_cluster, len(members)), replace=False) if len(members) else []
        for column, ax in enumerate(axes[cluster]):
            ax.axis("off")
            if column < len(shown):
                image = images[shown[column]].permute(1, 2, 0).cpu().numpy()
                ax.imshow(image.squeeze(-1) if image.shape[-1] == 1 else image, cmap="gray" if image.shape[-1] == 1 else None)
        axes[cluster][0].set_title(f"cluster {cluster} (n={len(members)})", fontsize=7, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return Path(path)
