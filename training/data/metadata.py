"""NIH ChestX-ray14 metadata: the image table and its labels.

Both published metadata files are accepted: ``Data_Entry_2017.csv`` (trailing comma,
so an empty last column) and ``Data_Entry_2017_v2020.csv[.gz]``.  In both, the image
size and pixel spacing headers are split at their commas (``OriginalImage[Width``,
``Height]``, ``OriginalImagePixelSpacing[x``, ``y]``); they are renamed here to
``OriginalImageWidth``, ``OriginalImageHeight``, ``PixelSpacingX``, ``PixelSpacingY``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from xray_app.labels import label_matrix

IMAGE = "Image Index"
FINDINGS = "Finding Labels"
PATIENT = "Patient ID"
REQUIRED_COLUMNS = (IMAGE, FINDINGS, PATIENT)
_RENAMES = {
    "OriginalImage[Width": "OriginalImageWidth",
    "Height]": "OriginalImageHeight",
    "OriginalImagePixelSpacing[x": "PixelSpacingX",
    "y]": "PixelSpacingY",
}


class MetadataError(ValueError):
    """A metadata or split file is missing, malformed or inconsistent."""


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
