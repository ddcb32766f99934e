"""Image discovery: which radiographs are on disk, and which metadata rows have one.

Images listed in the metadata but absent from the image folder (a partial download)
are counted and left out, never an error.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from training.data.metadata import IMAGE, MetadataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

ImageRoots = str | Path | Sequence[str | Path]


def image_roots(roots: ImageRoots) -> tuple[Path, ...]:
    """``roots`` as a tuple of folders: one folder, or several (``--images A B``)."""
    if isinstance(roots, str | Path):
        return (Path(roots),)
    return tuple(Path(root) for root in roots)


def find_images(roots: ImageRoots) -> dict[str, Path]:
    """Map image file name -> path for every image under ``roots``, searched recursively.

    ``roots`` is one folder or several: NIH ships ``images_001/images/00000001_000.png``
    ..., so its parent folder finds them all; a flat folder works too.  An image name is
    the NIH ``Image Index`` its labels are looked up by, so one name found twice (in one
    folder or in two) is refused: which copy to train on is the caller's choice, made by
    naming the folders to use (the shared sample's ``originals/`` holds 1024 px copies
    of images in ``images/``, so ``--images nih/images nih/images_extra``, not ``nih``).
    """
    folders = image_roots(roots)
    if not folders:
        raise MetadataError("no image folder given")
    found: dict[str, Path] = {}
    for root in folders:
        if not root.is_dir():
            raise MetadataError(f"{root}: image folder not found")
        for directory, _subdirs, files in os.walk(root, followlinks=True):
            for name in sorted(files):
                if not name.lower().endswith(IMAGE_SUFFIXES):
                    continue
                if name in found:
                    raise MetadataError(
                        f"image {name!r} found twice: {found[name]} and {Path(directory) / name}; "
                        "name the image folders to use one by one (--images DIR [DIR ...]) so "
                        "that each image is found once"
                    )
                found[name] = Path(directory) / name
    return found


@dataclass(frozen=True)
class Availability:
    """How many metadata rows have an image on disk."""

    listed: int
    available: int
    missing_examples: tuple[str, ...]

    @property
    def missing(self) -> int:
        return self.listed - self.available

    def describe(self) -> str:
        text = f"{self.available} of {self.listed} listed images available"
        if self.missing:
            text += f"; {self.missing} missing and left out (e.g. {', '.join(self.missing_examples)})"
        return text


def keep_available(
    frame: pd.DataFrame, available: Collection[str]
) -> tuple[pd.DataFrame, Availability]:
    """Rows of ``frame`` whose image is in ``available``, and a count of the rest."""
    mask = frame[IMAGE].isin(set(available)).to_numpy()
    report = Availability(
        listed=len(frame),
        available=int(mask.sum()),
        missing_examples=tuple(frame.loc[~mask, IMAGE].head(3)),
    )
    return frame[mask].reset_index(drop=True), report


def source_of(images: Sequence[str], folders: Sequence[Path]) -> list[str | None]:
    """The folder (base name) each image was found in, None for none of them."""
    found = {name: folder.name for folder in folders for name in find_images([folder])}
    return [found.get(name) for name in images]
