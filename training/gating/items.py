"""Which images the gate is fitted and measured on: NIH frontal films grouped by patient,
the images of an OOD folder grouped by source, the seeded split of groups into fit and
held-out images, and the training / validation images of a patient-wise split."""

from __future__ import annotations

import csv
import zlib
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np

from xray_app.preprocess import decode_image

# the view head's classes, in its output order
CLASSES = ("frontal", "lateral", "ct", "other")
# what each held-out figure is measured on; "nih" and "other_frontal" are both frontal films
KINDS = ("nih_frontal", "other_frontal", "lateral", "ct")
OOD_FOLDERS = {"lateral": "lateral", "ct": "ct", "frontal": "other_frontal"}
CLASS_OF_KIND = {"nih_frontal": "frontal", "other_frontal": "frontal", "lateral": "lateral",
                 "ct": "ct", "other": "other"}


@dataclass(frozen=True)
class Item:
    """One real image: its file, its kind (:data:`KINDS`) and its group."""

    path: Path
    kind: str
    group: str


def source_group(url: str) -> str:
    """A ``sources.csv`` URL without its language parameter: one case, paper or collection."""
    parts = urlsplit(url.strip())
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k.lower() != "lang"],
                      safe="/:")
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), query, ""))


def ood_items(ood_dir: Path) -> list[Item]:
    """The images of ``ood_dir/{lateral,ct,frontal}`` with their ``sources.csv`` groups."""
    table = ood_dir / "sources.csv"
    if not table.is_file():
        raise FileNotFoundError(f"{table}: sources.csv not found (one row per image: file, source)")
    with open(table, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not {"file", "source"} <= set(rows[0]):
        raise ValueError(f"{table}: needs the columns 'file' and 'source'")
    items = []
    for row in rows:
        folder = Path(row["file"]).parts[0]
        if folder not in OOD_FOLDERS:
            continue
        path = ood_dir / row["file"]
        if not path.is_file():
            raise FileNotFoundError(f"{table}: lists {row['file']}, which is not in {ood_dir}")
        items.append(Item(path, OOD_FOLDERS[folder], "source:" + source_group(row["source"])))
    return items


def nih_items(image_dirs: Sequence[Path], metadata: Path) -> list[Item]:
    """NIH frontal films found under ``image_dirs``, grouped by patient from ``metadata``."""
    from training.data.images import find_images
    from training.data.metadata import IMAGE, PATIENT, read_metadata

    frame = read_metadata(metadata)
    patient = dict(zip(frame[IMAGE], frame[PATIENT], strict=True))
    items = []
    for directory in image_dirs:
        for name, path in sorted(find_images(directory).items()):
            if name in patient:
                items.append(Item(path, "nih_frontal", f"patient:{patient[name]}"))
    if not items:
        raise ValueError(f"no image of {[str(d) for d in image_dirs]} is listed in {metadata}")
    return items


def split_groups(items: Sequence[Item], fraction: float, seed: int) -> tuple[list[Item], list[Item]]:
    """``(fit, held_out)``: ``fraction`` of each kind's groups held out, seeded.

    A group whose images are of several kinds (a case with a lateral and a frontal film)
    is counted under its first kind and moves whole.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"held-out fraction must lie in (0, 1), got {fraction}")
    groups: dict[str, list[Item]] = defaultdict(list)
    for item in items:
        groups[item.group].append(item)
    by_kind: dict[str, list[str]] = defaultdict(list)
    for name, members in groups.items():
        by_kind[members[0].kind].append(name)
    held: set[str] = set()
    for kind in sorted(by_kind):
        names = sorted(by_kind[kind])
        # one generator per kind: a kind's split does not depend on which others are present
        order = np.random.default_rng([seed, zlib.crc32(kind.encode())]).permutation(len(names))
        held.update(names[i] for i in order[: max(1, round(fraction * len(names)))])
    fit = [item for item in items if item.group not in held]
    return fit, [item for item in items if item.group in held]


def held_out_items(
    items: Sequence[Item], fraction: float, seed: int, max_nih: int | None = None
) -> list[Item]:
    """The held-out images of :func:`split_groups`, at most ``max_nih`` NIH films of them
    (drawn with a generator of their own, so the fit's draws do not change)."""
    _, held = split_groups(items, fraction, seed)
    return limit_nih(held, max_nih, np.random.default_rng([seed, 1]))


def limit_nih(items: list[Item], limit: int | None, rng: np.random.Generator) -> list[Item]:
    """``items`` with at most ``limit`` of their NIH films, drawn with ``rng`` (None: all);
    the other kinds are all kept, in their order."""
    nih = [i for i in items if i.kind == "nih_frontal"]
    if limit is None or len(nih) <= limit:
        return items
    keep = {nih[i].path for i in rng.choice(len(nih), limit, replace=False)}
    return [i for i in items if i.kind != "nih_frontal" or i.path in keep]


def decoded(items: Iterable[Item]) -> Iterator[np.ndarray]:
    """Decoded pixels of each item, one at a time, through the app's decoder (errors name
    the file)."""
    for item in items:
        yield decode_image(item.path).pixels


def split_images(split_dir: Path, images: Sequence[Path]) -> tuple[list[Path], list[Path]]:
    """``(train, val)``: the files under ``images`` of a patient-wise split's training and
    validation lists (``split_dir`` holds ``train.csv`` or ``splits/``); no test image is
    returned."""
    from training.data.images import find_images
    from training.data.metadata import IMAGE
    from training.data.splits import read_splits

    directory = split_dir if (split_dir / "train.csv").is_file() else split_dir / "splits"
    splits = read_splits(directory)  # checks patient-disjointness; test names are not used
    found = find_images(images)
    train = [found[n] for n in splits.train[IMAGE] if n in found]
    val = [found[n] for n in splits.val[IMAGE] if n in found]
    return train, val


def subsample(paths: list[Path], limit: int | None, rng: np.random.Generator) -> list[Path]:
    """At most ``limit`` of ``paths``, drawn with ``rng``, in their order (None: all)."""
    if limit is None or len(paths) <= limit:
        return paths
    return [paths[i] for i in sorted(rng.choice(len(paths), limit, replace=False))]

