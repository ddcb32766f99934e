"""Patient-wise splits and their prevalence.

Splits are always by patient: one patient's images never sit in two splits
(:func:`check_patient_disjoint` refuses to continue otherwise).  Two sources:

* list files in a directory: NIH's official ``train_val_list.txt`` + ``test_list.txt``
  (one image name per line; validation is carved out of ``train_val`` by patient), or
  CheXNet-style ``train_list.txt``/``val_list.txt``/``test_list.txt`` (image name
  followed by label columns, which are ignored: labels always come from the metadata);
* a seeded random split of patients (:func:`split_by_patient`).

``python -m training.split`` writes them; every later stage reads them
(:func:`read_splits`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from training.data.images import Availability, keep_available
from training.data.metadata import (
    FINDINGS,
    IMAGE,
    PATIENT,
    REQUIRED_COLUMNS,
    MetadataError,
    labels_of,
    read_metadata,
)
from xray_app.labels import LABELS

SPLIT_NAMES = ("train", "val", "test")


class SplitLeakError(ValueError):
    """A patient appears in more than one split."""


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


def read_split(path: str | Path, *, required: Sequence[str] = REQUIRED_COLUMNS) -> pd.DataFrame:
    """One split file written by :func:`write_splits` (or any CSV with the ``required``
    columns), with image names and labels read as strings."""
    path = Path(path)
    if not path.is_file():
        raise MetadataError(f"{path}: split file not found")
    try:
        part = pd.read_csv(path, dtype={IMAGE: str, FINDINGS: str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise MetadataError(f"{path}: not a readable CSV ({error})") from None
    missing = [c for c in required if c not in part.columns]
    if missing:
        raise MetadataError(f"{path}: missing column(s) {missing}; found {list(part.columns)[:8]}")
    return part


def read_splits(directory: str | Path) -> Splits:
    """Read splits written by :func:`write_splits`; checked disjoint by patient."""
    directory = Path(directory)
    parts = {name: read_split(directory / f"{name}.csv") for name in SPLIT_NAMES}
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


