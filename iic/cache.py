"""Decoded datasets kept on disk, so that a node decodes a dataset once rather than once per trial.

A search runs many trials of one dataset on each node, each in its own process, and every retry
starts another; decoding 12,600 JPEGs each time costs more than the first epochs. So
:func:`iic.data.load_dataset` keeps what it decoded, a few named numpy arrays, in one ``.npz`` file
named by a digest of everything that changes them (its key: the source files' paths, sizes and
mtimes, the loading options, :data:`CACHE_VERSION`), and a later load with the same key reads that
file instead of decoding.

The folder is ``$IIC_CACHE_DIR``, by default ``$XDG_CACHE_HOME/iic-search`` or
``~/.cache/iic-search``: one per node, shared by its trials. ``IIC_CACHE_DIR=off`` turns the cache
off; deleting the folder clears it.

Concurrent processes: a file lock per entry lets one process build it while the others wait and then
read its file, and files are written under a temporary name in the same folder and renamed into place
with ``os.replace``, so no reader ever sees half a file. A file that cannot be read back (truncated,
not a zip, a bad checksum, arrays missing or of the wrong shape) is reported in one warning line and
rebuilt; a folder that cannot be written is reported and the arrays are built without it. The cache
never stops a run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
from filelock import FileLock

CACHE_DIR_VARIABLE = "IIC_CACHE_DIR"
CACHE_OFF = "off"  # the value of CACHE_DIR_VARIABLE that turns the cache off
CACHE_VERSION = 1  # bump when the same key would decode to different arrays (a new resize, a new layout)

_DIGEST_ARRAY = "cache_key_digest"  # stored with the arrays: a renamed or copied file is not taken for another key


log = logging.getLogger(__name__)

Arrays = dict[str, np.ndarray]


def cache_dir() -> Path | None:
    """The cache folder, or None when ``IIC_CACHE_DIR=off``."""
    setting = os.environ.get(CACHE_DIR_VARIABLE, "").strip()
    if setting.lower() == CACHE_OFF:
        return None
    if setting:
        return Path(setting).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "iic-search"


def cached_arrays(
    label: str, key: Mapping[str, object], build: Callable[[], Arrays], check: Callable[[Arrays], None]
) -> Arrays:
    """The arrays `build()` returns for `key`: read from the cache when there, else built and stored.

    Args:
        label: start of the file name, for people looking at the folder (e.g. ``har-train-64px``).
        key: everything that changes the arrays, as JSON-serialisable values.
        build: makes the arrays (the expensive step).
        check: raises ValueError unless stored arrays are what `build` makes (names, dtypes, shapes);
            a stored file that fails it is rebuilt.
    """
    folder = cache_dir()
    if folder is None:
        return build()
    digest = _digest(key)
    path = folder / f"{label}-{digest[:20]}.npz"
    arrays = _read(path, digest, check)
    if arrays is not None:
        return arrays
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = FileLock(path.with_suffix(".lock"))
        lock.acquire()
    except OSError as error:
        log.warning(
            f"decode cache {folder} is not usable ({error}); decoding without it. "
            f"Set {CACHE_DIR_VARIABLE} to a writable folder, or to {CACHE_OFF!r}"
        )
        return build()
    try:
        # Built by another process while this one waited? (Damage was reported by the first read.)
        arrays = _read(path, digest, check, warn=False)
        if arrays is None:
            arrays = build()
            _write(path, digest, arrays)
        return arrays
    finally:
        lock.release()


def _digest(key: Mapping[str, object]) -> str:
    text = json.dumps({"cache_version": CACHE_VERSION, **key}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _read(path: Path, digest: str, check: Callable[[Arrays], None], warn: bool = True) -> Arrays | None:
    """The arrays stored at path, or None if there are none or they are damaged (warned about)."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
        if str(arrays.pop(_DIGEST_ARRAY)) != digest:
            raise ValueError("it holds the arrays of another key")
        check(arrays)
    except FileNotFoundError:
        return None
    except Exception as error:  # noqa: BLE001 - a damaged file raises anything from zipfile (a bad CRC),
        # numpy's header parser (ValueError, SyntaxError, tokenize.TokenError) or a missing array
        # (KeyError); check() raises ValueError. Whatever it is, rebuilding beats crashing a trial.
        if warn:
            reason = " ".join(str(error).split())  # one line, whatever the error says
            log.warning(f"decode cache file {path} is damaged ({type(error).__name__}: {reason}); rebuilding it")
        return None
    return arrays


def _write(path: Path, digest: str, arrays: Arrays) -> None:
    """Store arrays at path atomically: a temporary file in the same folder, then os.replace."""
    if _DIGEST_ARRAY in arrays:
        raise ValueError(f"{_DIGEST_ARRAY!r} is the cache's own array name; name the array otherwise")
    temporary = None
    try:
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.stem}-", suffix=".tmp", delete=False) as file:
            temporary = file.name
            np.savez(file, **arrays, **{_DIGEST_ARRAY: np.array(digest)})
        os.replace(temporary, path)
    except OSError as error:  # a full disk: this run goes on without the cache
        log.warning(f"could not write decode cache file {path} ({error}); the next load decodes again")
        if temporary is not None and os.path.exists(temporary):
            os.unlink(temporary)
