import numpy as np
import torch
from PIL import Image

from iic.plots import cluster_samples, plot_cluster_gallery, plot_confusion_matrix


def test_cluster_samples_take_at_most_per_cluster_members_of_each_cluster():
    images = torch.arange(30, dtype=torch.uint8).reshape(30, 1, 1, 1).expand(30, 1, 4, 4).contiguous()
    clusters = np.array([0] * 20 + [2] * 10)
    samples = cluster_samples(images, clusters, num_clusters=3, per_cluster=8, seed=0)
    assert samples["cluster_sizes"].tolist() == [20, 0, 10]
    assert np.bincount(samples["sample_clusters"], minlength=3).tolist() == [8, 0, 8]
    # each sample is an image of its own cluster (pixel value = image index)
    for image, cluster in zip(samples["sample_images"], samples["sample_clusters"], strict=True):
        assert clusters[image[0, 0, 0]] == cluster


def test_gallery_and_confusion_matrix_are_png_files(tmp_path):
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (50, 3, 8, 8), dtype=np.uint8))
    samples = cluster_samples(images, rng.integers(0, 5, 50), num_clusters=5)
    gallery = Image.open(plot_cluster_gallery(samples, tmp_path / "gallery.png"))
    assert gallery.format == "PNG" and gallery.height > gallery.width / 3  # five rows of eight
    confusion = Image.open(
        plot_confusion_matrix(np.eye(3, dtype=int) * 4, ["a", "b", "c"], tmp_path / "confusion.png", title="t")
    )
    assert confusion.format == "PNG"
