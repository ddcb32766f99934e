"""Prediction files: one model's outputs per image, as written and read by evaluation.

A predictions CSV has ``Image Index`` and either ``logit_<Label>`` or ``prob_<Label>``
columns (any subset of the 15 labels, e.g. a 14-class reference model such as
``../shared/data/nih/chexnet_repro_preds.csv``).  ``training.evaluate`` writes them
(logits) and reads them (``--predictions``, ``--compare``); ``training.train`` reads a
teacher's (``--teacher``, see :mod:`training.data.soft_targets`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from training.data.metadata import IMAGE, PATIENT
from training.fitting.probability_scaling import apply_calibration
from xray_app.labels import LABELS

LOGIT_PREFIX = "logit_"
PROB_PREFIX = "prob_"


class PredictionsFileError(ValueError):
    """A predictions CSV is missing or malformed; the message says how."""


@dataclass(frozen=True)
class Predictions:
    """One model's outputs for N images over ``labels`` (a subset of the 15, in order).

    ``logits`` is ``(N, C)`` or ``None`` when only probabilities are known (then
    calibration can be neither fitted nor applied); ``probs`` is ``(N, C)``, the plain
    sigmoid of the logits or the given probabilities.
    """

    images: tuple[str, ...]
    labels: tuple[str, ...]
    logits: np.ndarray | None
    probs: np.ndarray

    def subset(self, rows: np.ndarray) -> Predictions:
        return Predictions(
            images=tuple(np.asarray(self.images)[rows]),
            labels=self.labels,
            logits=None if self.logits is None else self.logits[rows],
            probs=self.probs[rows],
        )


def read_predictions(path: Path) -> Predictions:
    """Read a predictions CSV (``Image Index`` + ``logit_<Label>`` or ``prob_<Label>``)."""
    try:
        frame = pd.read_csv(path, dtype={IMAGE: str})
    except FileNotFoundError:
        raise PredictionsFileError(f"{path}: predictions file not found") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise PredictionsFileError(f"{path}: not a readable CSV ({error})") from None
    if IMAGE not in frame.columns:
        raise PredictionsFileError(f"{path}: no {IMAGE!r} column; found {list(frame.columns)[:8]}")
    if frame[IMAGE].duplicated().any():
        raise PredictionsFileError(f"{path}: image {frame[IMAGE][frame[IMAGE].duplicated()].iloc[0]!r} "
                              "listed twice")
    for prefix in (LOGIT_PREFIX, PROB_PREFIX):
        labels = tuple(name for name in LABELS if f"{prefix}{name}" in frame.columns)
        if labels:
            break
    else:
        raise PredictionsFileError(
            f"{path}: no '{LOGIT_PREFIX}<Label>' or '{PROB_PREFIX}<Label>' columns for any of "
            f"{', '.join(LABELS)}"
        )
    values = frame[[f"{prefix}{name}" for name in labels]].to_numpy(dtype=np.float64)
    if not np.isfinite(values).all():
        raise PredictionsFileError(f"{path}: missing or non-finite values in the {prefix}* columns")
    if prefix == PROB_PREFIX and ((values < 0) | (values > 1)).any():
        raise PredictionsFileError(f"{path}: {PROB_PREFIX}* values outside [0, 1]")
    logits = values if prefix == LOGIT_PREFIX else None
    probs = apply_calibration(values, None) if logits is not None else values
    return Predictions(tuple(frame[IMAGE]), labels, logits, probs)


def write_predictions(predictions: Predictions, patients: Sequence[Any], path: Path) -> Path:
    """Write ``Image Index``, ``Patient ID`` and one ``logit_<Label>`` column per label."""
    if predictions.logits is None:
        raise PredictionsFileError("only logits are written to a predictions file")
    frame = pd.DataFrame({IMAGE: predictions.images, PATIENT: list(patients)})
    for c, name in enumerate(predictions.labels):
        frame[f"{LOGIT_PREFIX}{name}"] = predictions.logits[:, c]
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False, float_format="%.6g")
    return path
