"""Build the decoded-image cache: ``python -m training.cache``.

Decodes every image once with the app's :func:`~xray_app.preprocess.decode_image`,
resizes it with :func:`~xray_app.preprocess.resize_gray` and stores uint8 pixels (see
:mod:`training.data.image_cache` for the layout).  Parallel workers, a progress bar, resumable:
run the same command again after an interruption and only unfinished rows are decoded.
Corrupt images are recorded and skipped; images in the metadata but not on disk are
counted as missing.  Neither is fatal.

    python -m training.cache --images DIR [--metadata CSV] --out CACHE [--size 256] [--workers N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from training.data.image_cache import (
    CACHE_VERSION,
    CORRUPT,
    ERRORS_FILE,
    INDEX_FILE,
    META_FILE,
    OK,
    PENDING,
    PIXELS_FILE,
    REPORT_FILE,
    STATUS_FILE,
    CacheError,
    to_uint8,
)
from training.data.images import ImageRoots, find_images
from training.data.metadata import IMAGE, read_metadata
from xray_app.preprocess import ImageInputError, decode_image, resize_gray


def decode_rows(
    pixels_path: str, count: int, size: int, rows: Sequence[int], paths: Sequence[str]
) -> list[tuple[int, str | None]]:
    """Decode ``paths`` into ``rows`` of the pixel map; ``(row, error or None)`` each.

    Runs in a worker process: writes and flushes its rows itself, so only the status
    travels back.
    """
    pixels = np.memmap(pixels_path, dtype=np.uint8, mode="r+", shape=(count, size, size))
    results: list[tuple[int, str | None]] = []
    for row, path in zip(rows, paths, strict=True):
        try:
            decoded = decode_image(path)
            pixels[row] = to_uint8(resize_gray(decoded.pixels, size))
            results.append((row, None))
        except ImageInputError as error:
            results.append((row, str(error)))
    pixels.flush()
    del pixels
    return results


def _open_or_create(out: Path, names: list[str], size: int, source: str) -> np.memmap:
    """Status map of ``out``, creating the cache files when new; refuses a mismatch."""
    meta = {"version": CACHE_VERSION, "size": size, "count": len(names), "dtype": "uint8",
            "source": source}
    meta_path = out / META_FILE
    if meta_path.is_file():
        existing = json.loads(meta_path.read_text())
        index = pd.read_csv(out / INDEX_FILE, dtype={IMAGE: str})[IMAGE].tolist()
        if existing.get("size") != size or index != names:
            raise CacheError(
                f"{out} holds a different cache (size {existing.get('size')}, "
                f"{len(index)} images); choose another --out to build size {size} "
                f"for {len(names)} images"
            )
    else:
        out.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({IMAGE: names}).to_csv(out / INDEX_FILE, index=False)
        # sparse files: the full size is reserved without writing it
        with open(out / PIXELS_FILE, "wb") as handle:
            handle.truncate(len(names) * size * size)
        with open(out / STATUS_FILE, "wb") as handle:
            handle.truncate(len(names))
        meta_path.write_text(json.dumps(meta, indent=2) + "\n")  # last: marks the cache valid
    return np.memmap(out / STATUS_FILE, dtype=np.uint8, mode="r+", shape=(len(names),))


def build_cache(
    images: ImageRoots,
    out: Path,
    *,
    size: int,
    metadata: Path | None = None,
    workers: int = 1,
    chunk: int = 32,
    progress: bool = True,
) -> dict:
    """Build or resume the cache in ``out``; returns the report (also ``report.json``)."""
    found = find_images(images)
    missing: list[str] = []
    if metadata is not None:
        listed = read_metadata(metadata)[IMAGE].tolist()
        names = [name for name in listed if name in found]
        missing = [name for name in listed if name not in found]
    else:
        names = sorted(found)
    if not names:
        raise CacheError(f"no images of the metadata found under {images}")
    status = _open_or_create(out, names, size, str(images))
    pending = np.flatnonzero(status == PENDING).tolist()
    chunks = [pending[i : i + chunk] for i in range(0, len(pending), chunk)]
    pixels_path = str(out / PIXELS_FILE)
    bar = tqdm(total=len(names), initial=len(names) - len(pending), unit="img",
               desc=f"cache {size}px", disable=not progress)
    with open(out / ERRORS_FILE, "a") as errors, ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [
            pool.submit(decode_rows, pixels_path, len(names), size, rows,
                        [str(found[names[r]]) for r in rows])
            for rows in chunks
        ]
        for future in as_completed(futures):
            for row, error in future.result():
                status[row] = OK if error is None else CORRUPT
                if error is not None:
                    errors.write(json.dumps({"image": names[row], "error": error}) + "\n")
            errors.flush()
            status.flush()  # after the worker flushed its pixels: a row marked OK is on disk
            bar.update(len(future.result()))
    bar.close()
    # the errors file is append-only (a resumed row may be logged twice): one per image
    logged = {item["image"]: item for item in map(json.loads, (out / ERRORS_FILE).read_text().splitlines())}
    corrupt = [logged[names[row]] for row in np.flatnonzero(status == CORRUPT)]
    report = {
        "images": len(names),
        "ok": int((status == OK).sum()),
        "corrupt": len(corrupt),
        "missing": len(missing),
        "size": size,
        "bytes": len(names) * size * size,
        "corrupt_images": corrupt,
        "missing_examples": missing[:20],
    }
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.cache", description=__doc__.split("\n")[0])
    parser.add_argument("--images", required=True, type=Path, nargs="+", metavar="DIR",
                        help="image folders (searched recursively)")
    parser.add_argument("--metadata", type=Path, help="cache only the images this CSV lists")
    parser.add_argument("--out", required=True, type=Path, help="cache directory")
    parser.add_argument("--size", type=int, default=256, help="side in pixels (default 256)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--chunk", type=int, default=32, help="images per work item")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args(argv)
    try:
        report = build_cache(args.images, args.out, size=args.size, metadata=args.metadata,
                             workers=args.workers, chunk=args.chunk, progress=args.progress)
    except (CacheError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"cache {args.out}: {report['ok']} images at {args.size}px "
          f"({report['bytes'] / 1e6:.1f} MB), {report['corrupt']} corrupt, "
          f"{report['missing']} listed but missing")
    for item in report["corrupt_images"][:10]:
        print(f"  corrupt: {item['error']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
