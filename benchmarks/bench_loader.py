"""Data loading speed per core: reading the decoded-image cache vs decoding the PNGs.

``python -m benchmarks.bench_loader [--images DIR] [--cache DIR] [--size 256] [--count 200]``

Single process, one intra-op thread, so the figures are images/s *per core*.  Two
levels, each over the same ``--count`` shared radiographs:

* ``raw``: decode the PNG with ``decode_image`` + ``resize_gray`` to the cache size,
  versus one row copied out of the cache's memory map;
* ``item``: a training dataset item without augmentation (the image through
  ``to_model_input`` at ``--input-size``), from the image folder versus from the cache.

Without ``--cache`` a cache of the images is built first in a temporary folder (not
timed).  Target: the cache ``item`` path at least 10x the PNG one.  The last line is a
JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from training.cache import build_cache
from training.data.datasets import CachedImages, FileImages, XrayDataset
from training.data.image_cache import ImageCache
from training.data.images import find_images
from xray_app.preprocess import decode_image, resize_gray

REPO = Path(__file__).resolve().parents[1]
SHARED_IMAGES = REPO.parent / "shared" / "data" / "nih" / "images"


def rate(work: Callable[[int], object], count: int, repeats: int) -> float:
    """Best images/s over ``repeats`` passes of ``work(i)`` for i < count."""
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(count):
            work(i)
        best = max(best, count / (time.perf_counter() - start))
    return best


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_loader", description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=Path, default=SHARED_IMAGES)
    parser.add_argument("--cache", type=Path, help="existing cache (default: build one)")
    parser.add_argument("--size", type=int, default=256, help="cache side when building one")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # per-core figures

    paths = dict(sorted(find_images(args.images).items())[: args.count])
    with tempfile.TemporaryDirectory() as tmp:
        cache_dir = args.cache
        if cache_dir is None:
            cache_dir = Path(tmp) / "cache"
            subset = Path(tmp) / "subset"
            subset.mkdir()
            for name, path in paths.items():
                (subset / name).symlink_to(path.resolve())
            build_cache(subset, cache_dir, size=args.size, workers=2, progress=False)
        cache = ImageCache(cache_dir)
        names = [n for n in paths if n in cache.row_of]
        count = len(names)
        labels = np.zeros((count, 15), dtype=np.float32)
        files = XrayDataset(FileImages([paths[n] for n in names]), labels, input_size=args.input_size)
        cached = XrayDataset(CachedImages(cache, names), labels, input_size=args.input_size)
        rows = [cache.row_of[n] for n in names]
        file_list = [paths[n] for n in names]

        figures = {
            "images": count,
            "cache_size": cache.size,
            "input_size": args.input_size,
            "raw_png_per_s": rate(lambda i: resize_gray(decode_image(file_list[i]).pixels, cache.size),
                                  count, max(1, args.repeats - 1)),
            "raw_cache_per_s": rate(lambda i: cache.read(rows[i]), count, args.repeats),
            "item_png_per_s": rate(lambda i: files[i], count, max(1, args.repeats - 1)),
            "item_cache_per_s": rate(lambda i: cached[i], count, args.repeats),
        }
    figures["raw_ratio"] = figures["raw_cache_per_s"] / figures["raw_png_per_s"]
    figures["item_ratio"] = figures["item_cache_per_s"] / figures["item_png_per_s"]
    figures["target_item_ratio"] = 10.0
    figures["meets_target"] = figures["item_ratio"] >= 10.0
    print(f"{count} images, cache {cache.size}px, model input {args.input_size}px, 1 core")
    print(f"  raw  PNG decode+resize {figures['raw_png_per_s']:9.1f} img/s | cache read "
          f"{figures['raw_cache_per_s']:10.1f} img/s | x{figures['raw_ratio']:.1f}")
    print(f"  item PNG -> tensor     {figures['item_png_per_s']:9.1f} img/s | cache -> tensor "
          f"{figures['item_cache_per_s']:7.1f} img/s | x{figures['item_ratio']:.1f} (target >= 10)")
    print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in figures.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
