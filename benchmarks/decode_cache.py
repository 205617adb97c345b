"""What the decode cache (iic/cache.py) saves a trial: loading an image folder the first time (decode
and write the cache) against the second time (read the cache), and the same for the bundled datasets.

    python benchmarks/decode_cache.py                       # 2,000 96x96 JPEGs, 10 classes, input_size 64
    python benchmarks/decode_cache.py --images 500 --repeats 1

Writes the JPEGs into a temporary folder (smooth random pictures with some noise, quality 90, so
that they do not compress to nothing), then per repeat, with a fresh cache folder each time: the load
with the cache off (decode only), the first load with it on (decode and write) and the second (a
cache hit). Prints the median seconds of each and the cache file's size. For digits and mnist5k it
prints a decode (cache off) against a cache hit, which is how we decided to leave digits uncached.
"""

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from iic.cache import CACHE_DIR_VARIABLE, CACHE_OFF, cached_arrays
from iic.data import load_dataset


def write_jpegs(root: Path, count: int, classes: int, side: int) -> None:
    generator = np.random.default_rng(0)
    for index in range(count):
        folder = root / f"class_{index % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        coarse = Image.fromarray(generator.integers(0, 256, (side // 8, side // 8, 3), dtype=np.uint8))
        smooth = np.asarray(coarse.resize((side, side), Image.Resampling.BICUBIC), dtype=np.int16)
        pixels = np.clip(smooth + generator.integers(-20, 21, smooth.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{index:05d}.jpg", quality=90)


def timed(load) -> tuple[float, object]:
    began = time.perf_counter()
    result = load()
    return time.perf_counter() - began, result


def time_folder(root: Path, cache_root: Path, input_size: int, repeats: int) -> dict[str, list[float]]:
    def load():
        return load_dataset("image_folder", str(root), input_size=input_size)

    times = {"decode only (cache off)": [], "first load (decode + write)": [], "second load (cache hit)": []}
    for repeat in range(repeats):
        os.environ[CACHE_DIR_VARIABLE] = CACHE_OFF
        times["decode only (cache off)"].append(timed(load)[0])
        os.environ[CACHE_DIR_VARIABLE] = str(cache_root / f"run{repeat}")
        first_seconds, first = timed(load)
        second_seconds, second = timed(load)
        assert (first.images == second.images).all()
        times["first load (decode + write)"].append(first_seconds)
        times["second load (cache hit)"].append(second_seconds)
    return times


def time_bundled(cache_root: Path) -> None:
    """digits is not cached by load_dataset: its hit is timed through cached_arrays directly."""
    load_dataset("digits", input_size=16)  # imports scikit-learn, which a trial imports anyway
    for name, size in (("digits", 16), ("mnist5k", 24)):
        os.environ[CACHE_DIR_VARIABLE] = CACHE_OFF
        decode_seconds, data = timed(lambda: load_dataset(name, input_size=size))
        os.environ[CACHE_DIR_VARIABLE] = str(cache_root / "bundled")
        arrays = {"images": data.images.numpy(), "labels": data.labels.numpy()}

        def read_cached():
            return cached_arrays(f"bench-{name}", {"name": name}, lambda: arrays, lambda stored: None)

        read_cached()  # writes it
        hit_seconds, _ = timed(read_cached)
        print(
            f"{name:8s} {len(data):5d} images at {size} px: "
            f"decode {decode_seconds:.3f} s, cache hit {hit_seconds:.4f} s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--side", type=int, default=96, help="side of the JPEGs written")
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-bundled", action="store_true", help="skip digits and mnist5k")
    args = parser.parse_args()

    print("command:", shlex.join(["python", *sys.argv]))
    with tempfile.TemporaryDirectory() as folder:
        root, cache_root = Path(folder) / "images", Path(folder) / "cache"
        write_jpegs(root, args.images, args.classes, args.side)
        megabytes = sum(path.stat().st_size for path in root.rglob("*.jpg")) / 1e6
        print(
            f"image folder: {args.images} JPEGs of {args.side}x{args.side} in {args.classes} classes "
            f"({megabytes:.1f} MB), input_size {args.input_size}, median of {args.repeats}, {os.cpu_count()} CPUs"
        )
        times = time_folder(root, cache_root, args.input_size, args.repeats)
        medians = {label: statistics.median(seconds) for label, seconds in times.items()}
        for label, seconds in times.items():
            print(f"  {label:28s} {medians[label]:.3f} s  (all: {', '.join(f'{s:.3f}' for s in seconds)})")
        (cache_file,) = (cache_root / "run0").glob("*.npz")
        speedup = medians["first load (decode + write)"] / medians["second load (cache hit)"]
        print(
            f"  cache file {cache_file.stat().st_size / 1e6:.1f} MB; second load {speedup:.0f}x faster than the first"
        )
        if not args.no_bundled:
            time_bundled(cache_root)


if __name__ == "__main__":
    main()
