"""What a dataset is to the loader: a :class:`DatasetSpec` per dataset, what its readers are asked
(:class:`ReadRequest`) and return (:class:`Part`), and :class:`DatasetError`.

These small types sit apart from :mod:`iic.data` so that the readers (:mod:`iic.readers`) and the
other loading steps can use them without importing the module that imports them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class DatasetError(ValueError):
    """A dataset cannot be loaded as configured; the message says what is wrong and how to fix it."""


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
    """What :func:`~iic.data.load_dataset` asks a reader for, once the source checks have passed."""

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
    """Everything :func:`~iic.data.load_dataset` and the source checks know about one dataset.

    ``splits`` are those a config may name: ``all`` is every stored part with labels (train and
    test, or train alone; never ``unlabelled_parts``), ``a+b`` the parts a and b, anything else the
    stored part of that name.
    A dataset whose ``root_holds`` is None is bundled with a Python package and needs no root.
    """

    name: str
    splits: tuple[str, ...]
    read: Callable[[ReadRequest], tuple[list[Part], list[str]]]  # -> parts in order, class names
    root_holds: str | None = None  # what root must hold, in words, for error messages
    files: StoredFiles | None = None  # the files checked before reading, per stored part
    # (root, split): a further check that lists folders or reads a CSV, and decodes nothing
    check_root: Callable[[Path, str], object] | None = None
    requires_module: tuple[str, str] | None = None  # (module, how to install it) that the reader imports
    torchvision_class: str | None = None  # torchvision.datasets class that downloads it into root
    torchvision_args: Mapping[str, object] = field(default_factory=dict)  # besides root and download=True
    # (root, split) -> the source files, where `files` has none
    list_sources: Callable[[Path | None, str], list[Path]] | None = None
    unlabelled_parts: tuple[str, ...] = ()  # stored parts whose images have no class (label -1)

    def parts(self, split: str) -> tuple[str, ...]:
        """The stored parts a split is made of, e.g. mnist 'all' -> ('train', 'test')."""
        if split == "all":
            labelled = [part for part in ("train", "test") if part in self.splits and part not in self.unlabelled_parts]
            return tuple(labelled)
        return tuple(split.split("+"))

    def source_files(self, request: ReadRequest) -> list[Path] | None:
        """The files a split is decoded from, whose paths, sizes and mtimes key its decode cache;
        None for a dataset not worth caching (neither `list_sources` nor `files` given)."""
        if self.list_sources is not None:
            return self.list_sources(request.root, request.split)
        if self.files is None:
            return None
        return [request.path(filename) for filename in self.files.shared] + [
            path for part in request.parts for path in request.part_paths(part)
        ]


# (root, split) -> the image files of the split, their labels (-1: none) and the sorted class names;
# raises DatasetError.
ImageLister = Callable[[Path, str], tuple[list[Path], np.ndarray, list[str]]]
