"""Tests for iic.cache through iic.data.load_dataset, on real image files written here.

A cache hit is proved without looking inside the cache: the source images' pixels are overwritten
with files of the same size whose mtime is then restored (os.utime), so a load that still returns the
old pixels did not decode, and one that returns the new pixels did."""

import csv
import logging
import multiprocessing
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import iic.data
from iic.cache import CACHE_DIR_VARIABLE, CACHE_OFF, cache_dir
from iic.data import ImageData, load_dataset

OLD, NEW = (200, 40, 40), (40, 200, 40)  # solid colours: a resized or greyed image still shows which
CLASSES = ("a", "b")
PER_CLASS = 3


def write_bmp(path: Path, colour: tuple[int, int, int]) -> None:
    """An uncompressed BMP: another colour gives a file of the same size."""
    Image.new("RGB", (24, 24), colour).save(path, format="BMP")


def write_image_folder(root: Path, colour=OLD) -> list[Path]:
    paths = []
    for name in CLASSES:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(PER_CLASS):
            paths.append(root / name / f"{i}.bmp")
            write_bmp(paths[-1], colour)
    return paths


def repaint_keeping_stat(paths: list[Path], colour=NEW) -> None:
    """New pixels, same size and mtime: invisible to the cache key."""
    for path in paths:
        stat = path.stat()
        write_bmp(path, colour)
        assert path.stat().st_size == stat.st_size
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def same(a: ImageData, b: ImageData) -> bool:
    return torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels) and a.class_names == b.class_names


def cache_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.npz"))


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(CACHE_DIR_VARIABLE, str(folder))
    return folder


@pytest.fixture
def images(tmp_path) -> tuple[Path, list[Path]]:
    root = tmp_path / "images"
    return root, write_image_folder(root)


def uncached(monkeypatch, *args, **kwargs) -> ImageData:
    with monkeypatch.context() as patch:
        patch.setenv(CACHE_DIR_VARIABLE, CACHE_OFF)
        return load_dataset(*args, **kwargs)


# --------------------------------------------------------------------------- hits and misses


def test_second_load_reads_the_cache_and_does_not_decode(cache, images):
    root, paths = images
    first = load_dataset("image_folder", str(root), input_size=8)
    assert first.images[:, :, 0, 0].tolist() == [list(OLD)] * len(paths)
    assert len(cache_files(cache)) == 1

    repaint_keeping_stat(paths)
    second = load_dataset("image_folder", str(root), input_size=8)
    assert same(first, second)  # the old pixels: read from the cache, not decoded

    os.utime(paths[0])  # touched: a new mtime, same bytes
    third = load_dataset("image_folder", str(root), input_size=8)
    assert third.images[:, :, 0, 0].tolist() == [list(NEW)] * len(paths)  # decoded again, all of it
    assert len(cache_files(cache)) == 2


@pytest.mark.parametrize(
    "change",
    [
        {"input_size": 6},
        {"greyscale": True},
        {"class_map": {"a": "a"}},
        {"max_samples": 4},
        {"split": "all"},
    ],
    ids=lambda change: next(iter(change)),
)
def test_changing_an_option_misses_the_cache(cache, images, monkeypatch, change):
    root, paths = images
    options = {"input_size": 8}
    load_dataset("image_folder", str(root), **options)
    repaint_keeping_stat(paths)

    changed = load_dataset("image_folder", str(root), **{**options, **change})
    assert same(changed, uncached(monkeypatch, "image_folder", str(root), **{**options, **change}))
    assert len(cache_files(cache)) == 2


def test_seed_keys_the_cache_only_with_max_samples(cache, images):
    root, _ = images
    load_dataset("image_folder", str(root), input_size=8, seed=0)
    load_dataset("image_folder", str(root), input_size=8, seed=1)  # every image either way: same entry
    assert len(cache_files(cache)) == 1
    subsets = [load_dataset("image_folder", str(root), input_size=8, max_samples=3, seed=seed) for seed in (0, 1, 0)]
    assert len(cache_files(cache)) == 3
    assert same(subsets[0], subsets[2])


def test_har_csv_belongs_to_the_key(cache, tmp_path):
    root = tmp_path / "har"
    (root / "train").mkdir(parents=True)
    for i in range(4):
        write_bmp(root / "train" / f"Image_{i}.bmp", OLD)

    def write_csv(labels: list[str]) -> None:
        with (root / "Training_set.csv").open("w", newline="") as file:
            rows = [[f"Image_{i}.bmp", label] for i, label in enumerate(labels)]
            csv.writer(file).writerows([["filename", "label"], *rows])

    write_csv(["sitting", "sitting", "running", "running"])
    first = load_dataset("har", str(root), input_size=8)
    assert load_dataset("har", str(root), input_size=8).labels.tolist() == first.labels.tolist() == [1, 1, 0, 0]
    write_csv(["sitting", "running", "running", "running"])
    assert load_dataset("har", str(root), input_size=8).labels.tolist() == [1, 0, 0, 0]
    assert len(cache_files(cache)) == 2


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_stored_binary_files_are_cached_by_their_stat(cache, tmp_path):
    """mnist's idx files stand for every spec whose StoredFiles name its sources."""
    for prefix, count in (("train", 5), ("t10k", 3)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte", np.full((count, 28, 28), 10))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", np.arange(count))
    first = load_dataset("mnist", str(tmp_path), split="all", input_size=28)
    images_file = tmp_path / "train-images-idx3-ubyte"
    stat = images_file.stat()
    write_idx(images_file, np.full((5, 28, 28), 99))
    os.utime(images_file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert same(load_dataset("mnist", str(tmp_path), split="all", input_size=28), first)
    os.utime(images_file)
    assert load_dataset("mnist", str(tmp_path), split="all", input_size=28).images[:5].unique().tolist() == [99]


def test_mnist5k_is_cached_and_digits_is_not(cache):
    """Parsing mnist5k's bundled CSV takes seconds; digits decodes in a fraction of one."""
    first = load_dataset("mnist5k", input_size=8, max_samples=10)
    (path,) = cache_files(cache)
    assert path.name.startswith("mnist5k-train-8px-")
    assert same(load_dataset("mnist5k", input_size=8, max_samples=10), first)
    load_dataset("digits", input_size=8, max_samples=10)
    assert cache_files(cache) == [path]


# --------------------------------------------------------------------------- damage


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def not_a_zip(path: Path) -> None:
    path.write_bytes(b"not a zip file at all")


def flip_a_pixel_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF  # inside the images array: the zip's CRC no longer matches
    path.write_bytes(bytes(data))


def wrong_shapes(path: Path) -> None:
    with np.load(path) as stored:
        arrays = dict(stored)
    arrays["images"] = arrays["images"][:, :, :4]
    np.savez(path, **arrays)


@pytest.mark.parametrize("damage", [truncate, not_a_zip, flip_a_pixel_byte, wrong_shapes], ids=lambda f: f.__name__)
def test_a_damaged_cache_file_is_rebuilt_with_one_warning(cache, images, caplog, damage):
    root, _ = images
    first = load_dataset("image_folder", str(root), input_size=8)
    (path,) = cache_files(cache)
    damage(path)

    with caplog.at_level(logging.WARNING, logger="iic.cache"):
        rebuilt = load_dataset("image_folder", str(root), input_size=8)
    assert same(rebuilt, first)
    (warning,) = caplog.records
    assert "damaged" in warning.message and "rebuilding" in warning.message and str(path) in warning.message
    assert "\n" not in warning.getMessage()

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="iic.cache"):
        assert same(load_dataset("image_folder", str(root), input_size=8), first)
    assert not caplog.records and cache_files(cache) == [path]


def test_an_unusable_cache_folder_is_reported_and_the_load_goes_on(tmp_path, images, monkeypatch, caplog):
    root, _ = images
    not_a_folder = tmp_path / "a_file"
    not_a_folder.write_text("")
    monkeypatch.setenv(CACHE_DIR_VARIABLE, str(not_a_folder))
    with caplog.at_level(logging.WARNING, logger="iic.cache"):
        data = load_dataset("image_folder", str(root), input_size=8)
    assert same(data, uncached(monkeypatch, "image_folder", str(root), input_size=8))
    assert "not usable" in caplog.text and CACHE_DIR_VARIABLE in caplog.text


# --------------------------------------------------------------------------- where it lives


def test_cache_folder_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_DIR_VARIABLE, str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
    monkeypatch.setenv(CACHE_DIR_VARIABLE, " OFF ")
    assert cache_dir() is None
    monkeypatch.delenv(CACHE_DIR_VARIABLE)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "iic-search"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "iic-search"


def test_off_writes_nothing_and_decodes_every_time(tmp_path, images, monkeypatch):
    root, paths = images
    monkeypatch.setenv(CACHE_DIR_VARIABLE, CACHE_OFF)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    load_dataset("image_folder", str(root), input_size=8)
    repaint_keeping_stat(paths)
    assert load_dataset("image_folder", str(root), input_size=8).images[:, :, 0, 0].tolist() == [list(NEW)] * len(paths)
    assert not (tmp_path / "xdg").exists()


# --------------------------------------------------------------------------- concurrent trials


def load_counting_decodes(root: str, cache: str, barrier, results) -> None:
    """One trial process: loads after the others are ready, counting the images it really decodes."""
    os.environ[CACHE_DIR_VARIABLE] = cache
    decode_image = iic.data._decode_image
    decoded = []

    def counting(*args):
        decoded.append(args[0])
        return decode_image(*args)

    iic.data._decode_image = counting
    barrier.wait()
    data = load_dataset("image_folder", root, input_size=8)
    results.put((len(decoded), data.images.numpy(), data.labels.numpy(), data.class_names))


@pytest.mark.slow  # spawns processes that each import torch: 30-60 s on 2 shared cores
def test_concurrent_loads_decode_once_and_leave_one_valid_file(cache, images):
    root, paths = images
    processes = 3
    context = multiprocessing.get_context("spawn")  # fork after torch has run threads can hang
    barrier, results = context.Barrier(processes), context.Queue()
    workers = [
        context.Process(target=load_counting_decodes, args=(str(root), str(cache), barrier, results))
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
        assert worker.exitcode == 0

    assert sorted(count for count, *_ in outcomes) == [0] * (processes - 1) + [len(paths)]
    _, pixels, labels, class_names = outcomes[0]
    for _, other_pixels, other_labels, other_names in outcomes[1:]:
        assert np.array_equal(pixels, other_pixels) and np.array_equal(labels, other_labels)
        assert other_names == class_names
    (path,) = cache_files(cache)
    assert [p.name for p in cache.iterdir() if p.suffix not in (".npz", ".lock")] == []  # no temporary file left
    with np.load(path) as stored:
        assert np.array_equal(stored["images"], pixels)
