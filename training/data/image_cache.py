"""The decoded-image cache: every image decoded once, resized, stored as uint8.

Layout of a cache directory (copy it anywhere; training needs nothing else but the
metadata CSV):

* ``cache.json``  size, count, format version, where the images came from;
* ``index.csv``   ``Image Index`` of each row, in row order;
* ``pixels.u8``   raw ``(count, size, size)`` uint8 array, read through ``np.memmap``;
* ``status.u8``   ``(count,)`` uint8: 0 not yet written, 1 ok, 2 corrupt;
* ``errors.jsonl`` one ``{"image", "error"}`` object per corrupt image;
* ``report.json`` written when the build completes (counts, corrupt and missing images).

Pixels are ``resize_gray(decode_image(path).pixels, size)`` rounded to uint8: the same
decode as the app, quantised to 1/255.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

CACHE_VERSION = 1
META_FILE = "cache.json"
INDEX_FILE = "index.csv"
PIXELS_FILE = "pixels.u8"
STATUS_FILE = "status.u8"
ERRORS_FILE = "errors.jsonl"
REPORT_FILE = "report.json"
PENDING, OK, CORRUPT = 0, 1, 2


class CacheError(ValueError):
    """A cache directory is missing, incomplete or inconsistent."""


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """float image in [0, 1] -> uint8 in [0, 255], rounded to nearest."""
    return np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8)


class ImageCache:
    """Read access to a cache directory; safe to pickle into DataLoader workers (each
    process opens its own memory map on first use)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        meta_path = self.directory / META_FILE
        if not meta_path.is_file():
            raise CacheError(f"{self.directory}: not an image cache ({META_FILE} missing)")
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("version") != CACHE_VERSION:
            raise CacheError(f"{meta_path}: unsupported cache version {self.meta.get('version')}")
        self.size = int(self.meta["size"])
        self.count = int(self.meta["count"])
        index = pd.read_csv(self.directory / INDEX_FILE, dtype={"Image Index": str})
        self.names: list[str] = index["Image Index"].tolist()
        if len(self.names) != self.count:
            raise CacheError(f"{self.directory}: index has {len(self.names)} rows, expected {self.count}")
        self.row_of = {name: row for row, name in enumerate(self.names)}
        self._pixels: np.memmap | None = None

    def status(self) -> np.ndarray:
        """``(count,)`` uint8 status of every row (0 pending, 1 ok, 2 corrupt)."""
        return np.fromfile(self.directory / STATUS_FILE, dtype=np.uint8, count=self.count)

    def available_names(self) -> set[str]:
        """Names of the images that were decoded successfully."""
        ok = self.status() == OK
        return {name for name, good in zip(self.names, ok, strict=True) if good}

    @property
    def pixels(self) -> np.memmap:
        if self._pixels is None:
            self._pixels = np.memmap(
                self.directory / PIXELS_FILE,
                dtype=np.uint8,
                mode="r",
                shape=(self.count, self.size, self.size),
            )
        return self._pixels

    def read(self, row: int) -> np.ndarray:
        """``(size, size)`` uint8 copy of one row."""
        return np.array(self.pixels[row])

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_pixels"] = None  # never pickle the map itself (it would copy the data)
        return state
