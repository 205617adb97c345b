"""Checks that a dataset's source is in place before anything is read, and its download.

The checks list folders and read CSV text but decode no image, so that a config validator can run
them before any compute starts: the Python module a reader imports, root, and each file the split
needs. Their messages say what root should hold and, where torchvision can fetch a dataset, that
``download: true`` does.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from iic.dataset_spec import DatasetError, DatasetSpec


def check_source(
    spec: DatasetSpec, root: str | os.PathLike | None, split: str, registry: Mapping[str, DatasetSpec]
) -> Path | None:
    """root as a Path once everything the split needs is there; None for a bundled dataset.
    `registry`: every dataset spec, for the hint that names those torchvision downloads."""
    if spec.requires_module is not None:
        _require_module(spec)
    if spec.root_holds is None:
        return None
    root_path = _require_root(spec, root, registry)
    if spec.files is not None:
        _require_files(spec, root_path, spec.parts(split), registry)
    if spec.check_root is not None:
        spec.check_root(root_path, split)
    return root_path


def _download_hint(registry: Mapping[str, DatasetSpec]) -> str:
    names = [name for name, spec in registry.items() if spec.torchvision_class is not None]
    listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
    return f"`download: true` fetches {listed} into root when online."


def _require_root(spec: DatasetSpec, root: str | os.PathLike | None, registry: Mapping[str, DatasetSpec]) -> Path:
    if spec.torchvision_class is not None:
        hint = "Set `download: true` to fetch it when online."
    else:
        hint = f"({_download_hint(registry)})"
    if root is None:
        raise DatasetError(f"dataset {spec.name!r} needs `root`: a folder with {spec.root_holds}. {hint}")
    path = Path(root).expanduser()
    if not path.is_dir():
        problem = "is not a directory" if path.exists() else "does not exist"
        raise DatasetError(
            f"root {str(path)!r} for dataset {spec.name!r} {problem}; expected a folder with {spec.root_holds}. {hint}"
        )
    return path


def _require_files(spec: DatasetSpec, root: Path, parts: Sequence[str], registry: Mapping[str, DatasetSpec]) -> None:
    files = spec.files
    needed = list(files.shared) + [filename for part in parts for filename in files.per_part[part]]
    missing = [filename for filename in needed if files.find(root, filename) is None]
    if missing:
        folders = " or ".join(str(root / folder) for folder in files.folders)
        raise DatasetError(
            f"dataset {spec.name!r}: missing {', '.join(missing)} in {folders}; expected {spec.root_holds}. "
            f"{_download_hint(registry)}"
        )


def _require_module(spec: DatasetSpec) -> None:
    module, install = spec.requires_module
    if importlib.util.find_spec(module) is None:
        raise DatasetError(f"dataset {spec.name!r} needs the Python package {module!r}: {install}")


def download_dataset(spec: DatasetSpec, root: str | None) -> None:
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
