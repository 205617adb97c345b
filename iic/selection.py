"""From a reader's parts to a split's arrays, as load_dataset's options ask: class_map and
max_samples choose which images to keep, only those are read, then greyscale and resizing.

The options are checked here too, before any file is read, so that a bad one fails fast.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.nn import functional as F

from iic.colour import to_grey
from iic.dataset_spec import DatasetError, DatasetSpec, Part, ReadRequest

# Images converted (greyscale/resize) per step, so that float copies of big splits
# (STL-10 unlabeled is 100k x 3 x 96 x 96) never exist all at once.
_CONVERT_CHUNK = 2048


def check_options(
    spec: DatasetSpec, split: str, input_size: int, class_map: dict[str, str] | None, max_samples: int | None
) -> None:
    """Raise :class:`DatasetError` for a bad option, or a class_map on a split with unlabelled images."""
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
        if set(spec.unlabelled_parts) & set(spec.parts(split)):
            raise DatasetError(
                f"class_map cannot select classes in split {split!r}: its unlabelled images have no class; "
                "use a labelled split (train or all)"
            )


def decode_split(
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
