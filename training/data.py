"""NIH ChestX-ray14 metadata, image discovery, patient-wise splits and prevalence.

Both published metadata files are accepted: ``Data_Entry_2017.csv`` (trailing comma,
so an empty last column) and ``Data_Entry_2017_v2020.csv[.gz]``.  In both, the image
size and pixel spacing headers are split at their commas (``OriginalImage[Width``,
``Height]``, ``OriginalImagePixelSpacing[x``, ``y]``); they are renamed here to
``OriginalImageWidth``, ``OriginalImageHeight``, ``PixelSpacingX``, ``PixelSpacingY``.

Splits are always by patient: one patient's images never sit in two splits
(:func:`check_patient_disjoint` refuses to continue otherwise).  Two sources:

* list files in a directory: NIH's official ``train_val_list.txt`` + ``test_list.txt``
  (one image name per line; validation is carved out of ``train_val`` by patient), or
  CheXNet-style ``train_list.txt``/``val_list.txt``/``test_list.txt`` (image name
  followed by label columns, which are ignored: labels always come from the metadata);
* a seeded random split of patients (:func:`split_by_patient`).

Images listed in the metadata but absent from the image folder (a partial download)
are counted and left out, never an error.

Command line::

    python -m training.data --metadata CSV [--images DIR [DIR ...]] [--split-lists DIR]
        [--val-fraction F] [--test-fraction F] [--seed S] --out DIR
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from training.augment import build_augment
from training.cache import ImageCache
from training.datasets import CachedImages, FileImages, XrayDataset
from training.runtime import TrainingError
from training.sampling import repeat_factors
from xray_app.labels import LABELS, NO_FINDING_INDEX, label_matrix

if TYPE_CHECKING:
    from training.config import TrainConfig
    from training.distill import DistillSummary

IMAGE = "Image Index"
FINDINGS = "Finding Labels"
PATIENT = "Patient ID"
REQUIRED_COLUMNS = (IMAGE, FINDINGS, PATIENT)
SPLIT_NAMES = ("train", "val", "test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_RENAMES = {
    "OriginalImage[Width": "OriginalImageWidth",
    "Height]": "OriginalImageHeight",
    "OriginalImagePixelSpacing[x": "PixelSpacingX",
    "y]": "PixelSpacingY",
}


class MetadataError(ValueError):
    """A metadata or split file is missing, malformed or inconsistent."""


class SplitLeakError(ValueError):
    """A patient appears in more than one split."""


# --------------------------------------------------------------------------- metadata
def read_metadata(path: str | Path) -> pd.DataFrame:
    """Read an NIH ``Data_Entry_2017*.csv[.gz]`` into one row per image.

    Columns: ``Image Index`` (str), ``Finding Labels`` (str), ``Patient ID`` (int) and
    whatever else the file has, with the split size/spacing headers renamed.
    """
    path = Path(path)
    if not path.is_file():
        raise MetadataError(f"{path}: metadata file not found")
    try:
        frame = pd.read_csv(path, dtype={IMAGE: str, FINDINGS: str})
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, EOFError) as error:
        raise MetadataError(f"{path}: not a readable CSV ({error})") from None
    frame = frame.rename(columns=_RENAMES)
    frame = frame.loc[:, [c for c in frame.columns if not str(c).startswith("Unnamed:")]]
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise MetadataError(
            f"{path}: missing column(s) {missing}; found {list(frame.columns)[:12]}"
        )
    if frame[list(REQUIRED_COLUMNS)].isna().any().any():
        bad = frame[frame[list(REQUIRED_COLUMNS)].isna().any(axis=1)].index[0]
        raise MetadataError(f"{path}: empty {list(REQUIRED_COLUMNS)} value on data row {bad + 1}")
    duplicated = frame[IMAGE].duplicated()
    if duplicated.any():
        raise MetadataError(f"{path}: image {frame[IMAGE][duplicated].iloc[0]!r} listed twice")
    frame[PATIENT] = frame[PATIENT].astype(np.int64)
    return frame.reset_index(drop=True)


def labels_of(frame: pd.DataFrame) -> np.ndarray:
    """``(N, 15)`` float32 multi-hot labels of ``frame``'s rows, in the app's logit order."""
    try:
        return label_matrix(frame[FINDINGS].tolist())
    except ValueError as error:
        raise MetadataError(f"bad {FINDINGS!r} value: {error}") from None


# --------------------------------------------------------------------------- images
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


# --------------------------------------------------------------------------- splits
@dataclass(frozen=True)
class Splits:
    """Three disjoint-by-patient tables of metadata rows, and how they were made."""

    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame
    method: str

    def items(self) -> Iterable[tuple[str, pd.DataFrame]]:
        return zip(SPLIT_NAMES, (self.train, self.val, self.test), strict=True)


def read_image_list(path: str | Path) -> list[str]:
    """First whitespace-separated token of every non-empty line (an image name)."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as error:
        raise MetadataError(f"{path}: cannot read split list ({error.strerror})") from None
    return [line.split()[0] for line in lines if line.strip()]


def split_from_lists(
    frame: pd.DataFrame, directory: str | Path, *, val_fraction: float, seed: int
) -> Splits:
    """Splits from list files in ``directory`` (NIH official or CheXNet-style, see module doc)."""
    directory = Path(directory)
    official = directory / "train_val_list.txt", directory / "test_list.txt"
    chexnet = tuple(directory / f"{name}_list.txt" for name in SPLIT_NAMES)
    if all(p.is_file() for p in chexnet):
        names = {split: read_image_list(p) for split, p in zip(SPLIT_NAMES, chexnet, strict=True)}
        parts = {split: _rows_named(frame, names[split], chexnet[i]) for i, split in enumerate(SPLIT_NAMES)}
        return Splits(parts["train"], parts["val"], parts["test"],
                      method=f"CheXNet-style split lists ({', '.join(p.name for p in chexnet)})")
    if all(p.is_file() for p in official):
        train_val = _rows_named(frame, read_image_list(official[0]), official[0])
        test = _rows_named(frame, read_image_list(official[1]), official[1])
        train, val = _carve_by_patient(train_val, val_fraction, np.random.default_rng(seed))
        return Splits(train, val, test, method=f"NIH split lists (train_val_list.txt, test_list.txt); "
                      f"val carved by patient, seed {seed}")
    raise MetadataError(
        f"{directory}: expected train_val_list.txt + test_list.txt (NIH) or "
        "train_list.txt + val_list.txt + test_list.txt (CheXNet-style)"
    )


def _rows_named(frame: pd.DataFrame, names: Sequence[str], source: Path) -> pd.DataFrame:
    """Rows of ``frame`` whose image is in ``names`` (names absent from ``frame`` are ignored:
    they are images that were not downloaded or were filtered out)."""
    if len(set(names)) != len(names):
        raise MetadataError(f"{source}: an image name is listed twice")
    return frame[frame[IMAGE].isin(set(names))].reset_index(drop=True)


def split_by_patient(
    frame: pd.DataFrame, *, val_fraction: float, test_fraction: float, seed: int
) -> Splits:
    """Seeded random split of patients into train/val/test by fraction of *images*."""
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"val_fraction {val_fraction} and test_fraction {test_fraction} must be in [0, 1) "
            "and sum to less than 1"
        )
    rng = np.random.default_rng(seed)
    rest, test = _carve_by_patient(frame, test_fraction, rng)
    # the validation fraction is of the whole set, so rescale it to what is left
    val_of_rest = val_fraction / (1.0 - test_fraction) if test_fraction < 1 else 0.0
    train, val = _carve_by_patient(rest, val_of_rest, rng)
    return Splits(train, val, test, method=f"patient-random, seed {seed}")


def _carve_by_patient(
    frame: pd.DataFrame, fraction: float, rng: np.random.Generator
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split ``frame`` into (rest, carved), ``carved`` holding whole patients with about
    ``fraction`` of the images (patients in shuffled order until the fraction is reached)."""
    patients, counts = np.unique(frame[PATIENT].to_numpy(), return_counts=True)
    order = rng.permutation(len(patients))
    cumulative = np.cumsum(counts[order])
    target = fraction * len(frame)
    take = int(np.searchsorted(cumulative, target, side="left")) + 1 if target > 0 else 0
    chosen = patients[order[: min(take, len(patients))]]
    mask = frame[PATIENT].isin(chosen).to_numpy()
    return frame[~mask].reset_index(drop=True), frame[mask].reset_index(drop=True)


def check_patient_disjoint(splits: Splits) -> None:
    """Raise :class:`SplitLeakError` if any patient appears in two splits."""
    seen: dict[int, str] = {}
    for name, part in splits.items():
        for patient in np.unique(part[PATIENT].to_numpy()):
            other = seen.setdefault(int(patient), name)
            if other != name:
                raise SplitLeakError(
                    f"patient {patient} appears in both the {other} and the {name} split; "
                    "refusing to continue (a patient's images must all be in one split)"
                )


def make_splits(
    frame: pd.DataFrame,
    *,
    split_lists: str | Path | None,
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> Splits:
    """Splits from lists when ``split_lists`` is given, else patient-random; checked disjoint."""
    if split_lists:
        splits = split_from_lists(frame, split_lists, val_fraction=val_fraction, seed=seed)
    else:
        splits = split_by_patient(
            frame, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed
        )
    check_patient_disjoint(splits)
    return splits


def write_splits(splits: Splits, directory: str | Path) -> None:
    """Write ``train.csv``, ``val.csv``, ``test.csv`` (``Image Index``, ``Patient ID``,
    ``Finding Labels``) into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, part in splits.items():
        part[[IMAGE, PATIENT, FINDINGS]].to_csv(directory / f"{name}.csv", index=False)


def read_splits(directory: str | Path) -> Splits:
    """Read splits written by :func:`write_splits`; checked disjoint by patient."""
    directory = Path(directory)
    parts = {}
    for name in SPLIT_NAMES:
        path = directory / f"{name}.csv"
        if not path.is_file():
            raise MetadataError(f"{path}: split file not found")
        part = pd.read_csv(path, dtype={IMAGE: str, FINDINGS: str})
        missing = [c for c in REQUIRED_COLUMNS if c not in part.columns]
        if missing:
            raise MetadataError(f"{path}: missing column(s) {missing}")
        parts[name] = part
    splits = Splits(parts["train"], parts["val"], parts["test"],
                    method="split files (train.csv, val.csv, test.csv)")
    check_patient_disjoint(splits)
    return splits


# --------------------------------------------------------------------------- report
def prevalence_table(splits: Splits) -> pd.DataFrame:
    """One row per label (logit order); per split the positive count and fraction,
    and a final ``images`` row with each split's size."""
    columns: dict[str, list[float]] = {}
    for name, part in splits.items():
        labels = labels_of(part)
        counts = labels.sum(axis=0)
        columns[f"{name}_n"] = [*counts.astype(int).tolist(), len(part)]
        fraction = counts / max(len(part), 1)
        columns[f"{name}_frac"] = [*np.round(fraction, 4).tolist(), 1.0]
    return pd.DataFrame(columns, index=pd.Index([*LABELS, "images"], name="label"))


def only_no_finding(labels: np.ndarray) -> np.ndarray:
    """``(N,)`` bool: the image's only label is "No Finding"."""
    return labels[:, NO_FINDING_INDEX] > 0


def summarise(splits: Splits, availability: Availability | None = None) -> str:
    lines = [f"splits ({splits.method}): " + ", ".join(
        f"{name} {len(part)} images / {part[PATIENT].nunique()} patients"
        for name, part in splits.items()
    )]
    if availability is not None:
        lines.insert(0, availability.describe())
    empty = [name for name, part in splits.items() if len(part) == 0]
    if empty:
        lines.append(f"warning: empty split(s) {empty} with the available images")
    return "\n".join(lines)


def prepare_splits(
    metadata: str | Path,
    *,
    image_names: Collection[str] | None,
    split_lists: str | Path | None,
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> tuple[Splits, Availability]:
    """Read the metadata, keep the rows in ``image_names`` (all when None), split."""
    frame = read_metadata(metadata)
    labels_of(frame)  # validate every Finding Labels value once, up front
    if image_names is None:
        availability = Availability(len(frame), len(frame), ())
    else:
        frame, availability = keep_available(frame, image_names)
    splits = make_splits(
        frame,
        split_lists=split_lists,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
    )
    return splits, availability


def write_report(splits: Splits, availability: Availability, out: Path) -> pd.DataFrame:
    """Write the split files and ``prevalence.csv`` into ``out``; returns the table."""
    write_splits(splits, out)
    table = prevalence_table(splits)
    table.to_csv(out / "prevalence.csv")
    (out / "splits.txt").write_text(summarise(splits, availability) + "\n")
    return table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.data", description="Write patient-wise splits and prevalence."
    )
    parser.add_argument("--metadata", required=True, type=Path, help="Data_Entry_2017*.csv[.gz]")
    parser.add_argument("--images", type=Path, nargs="+", metavar="DIR",
                        help="image folders (searched recursively); when given, rows without "
                        "an image are left out")
    parser.add_argument("--split-lists", type=Path, help="directory of split list files")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--test-fraction", type=float, default=0.2,
                        help="used by the patient-random split only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    try:
        names = find_images(args.images) if args.images else None
        splits, availability = prepare_splits(
            args.metadata,
            image_names=names,
            split_lists=args.split_lists,
            val_fraction=args.val_fraction,
            test_fraction=args.test_fraction,
            seed=args.seed,
        )
    except (MetadataError, SplitLeakError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    table = write_report(splits, availability, args.out)
    print(summarise(splits, availability))
    with pd.option_context("display.width", 160, "display.max_columns", 12):
        print(table)
    print(f"wrote train.csv, val.csv, test.csv, prevalence.csv to {args.out}")
    return 0


# --------------------------------------------------------------------------- a run's data
@dataclass
class RunData:
    """The datasets of one run and what they were made from."""

    train: XrayDataset
    val: XrayDataset
    train_labels: np.ndarray
    factors: np.ndarray
    splits: Splits
    availability: Availability
    source: str
    distill: DistillSummary | None = None


def load_data(cfg: TrainConfig) -> RunData:
    """Splits (from files or made here), restricted to the images we have, as datasets."""
    data = cfg.data
    if data.cache:
        cache = ImageCache(data.cache)
        names: set[str] = cache.available_names()
        source = f"a uint8 cache of the images at {cache.size} px"
    else:
        paths = find_images(data.images)
        names = set(paths)
        source = "image files, decoded as they are read"
    if data.splits:
        splits = read_splits(data.splits)
        parts = {}
        for name, part in splits.items():
            parts[name], _ = keep_available(part, names)
        availability = Availability(
            sum(len(p) for _, p in splits.items()), sum(len(p) for p in parts.values()), ()
        )
        splits = Splits(parts["train"], parts["val"], parts["test"], splits.method)
    else:
        splits, availability = prepare_splits(
            data.metadata,
            image_names=names,
            split_lists=data.split_lists,
            val_fraction=data.val_fraction,
            test_fraction=data.test_fraction,
            seed=cfg.seed,
        )
    checked = (("train", splits.train), ("val", splits.val)) if cfg.validate else (("train", splits.train),)
    for name, part in checked:
        if len(part) == 0:
            raise TrainingError(
                f"the {name} split is empty with the {availability.available} available images "
                f"({splits.method}); with a partial download use the patient-random split "
                "(no --split-lists), or download the images the lists name"
            )

    def dataset(part: pd.DataFrame, train: bool, labels: np.ndarray | None = None) -> XrayDataset:
        if data.cache:
            images = CachedImages(cache, part[IMAGE].tolist())
        else:
            images = FileImages([paths[n] for n in part[IMAGE]])
        return XrayDataset(
            images,
            labels_of(part) if labels is None else labels,
            input_size=data.input_size,
            augment=build_augment(cfg.augment, train=train),
        )

    train_labels = labels_of(splits.train)
    factors = repeat_factors(
        train_labels,
        no_finding_fraction=cfg.no_finding_fraction,
        repeat_threshold=cfg.repeat_threshold,
        max_repeat=cfg.max_repeat,
    )
    # the sampler and the class weights count the 0/1 labels; only the loss sees soft targets
    targets, distill = None, None
    if cfg.teacher:
        # imported here: a teacher's file is a predictions CSV, whose reader uses this module
        from training.distill import distill_targets

        targets, distill = distill_targets(
            cfg.teacher, splits.train[IMAGE].tolist(), train_labels, cfg.distill_weight
        )
    return RunData(
        dataset(splits.train, True, targets), dataset(splits.val, False), train_labels, factors,
        splits, availability, source, distill,
    )


def image_paths_for(frame: pd.DataFrame, paths: Mapping[str, Path]) -> list[Path]:
    """Paths of ``frame``'s images in row order (every image must be in ``paths``)."""
    return [paths[name] for name in frame[IMAGE]]


if __name__ == "__main__":
    raise SystemExit(main())
