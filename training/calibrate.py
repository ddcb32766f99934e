"""Fit calibration and decision thresholds: ``python -m training.calibrate``.

    python -m training.calibrate --checkpoint RUN/best --predictions PREDS.csv \\
        [--method platt|temperature|none] [--threshold-method f1|youden] \\
        [--metadata CSV] [--out-of-fold K] --out DIR

Reads held-out logits of the checkpoint's recipe and their NIH labels: a validation
split's (``training.evaluate --split val`` writes ``predictions_val.csv``) or the
out-of-fold predictions of a cross-validation (``training.crossval``, ``--out-of-fold K``
says so and from how many folds). Calibration is fitted per class on the logits, then
each class's threshold is chosen on the calibrated probabilities (max F1 or Youden's J;
a class whose calibration finds no relation between score and label keeps the 0.5
fallback and is marked as showing no signal).

The result is a **new** checkpoint folder ``DIR``: the same weights, and a
``config.json`` with the thresholds, the calibration and a ``validation_fit`` record in
its provenance (method, images, patients, ECE before and after, the predictions file by
name and sha256). The input checkpoint is never modified. ``training.evaluate`` then
only reads ``DIR``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.data.metadata import PATIENT, MetadataError, labels_of, read_metadata
from training.data.predictions import Predictions, PredictionsFileError, read_predictions
from training.fitting.probability_scaling import (
    CALIBRATION_METHODS,
    DEFAULT_ECE_BINS,
    apply_calibration,
    calibration_summary,
    fit_calibration,
    uninformative_classes,
)
from training.metrics.classification import THRESHOLD_METHODS, choose_thresholds
from training.metrics.headline import auroc_by_label
from xray_app.labels import LABELS
from xray_app.model import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    read_config,
    sha256_of,
    write_config,
)

DEFAULT_METADATA = Path("../shared/data/nih/Data_Entry_2017_v2020.csv.gz")


class CalibrationError(ValueError):
    """The predictions cannot calibrate this checkpoint; the message says why."""


@dataclass(frozen=True)
class Fitted:
    """Thresholds ``(15,)`` in logit order, the calibration (or None), notes, and the
    record written to the provenance."""

    thresholds: np.ndarray
    calibration: dict[str, Any] | None
    notes: list[str]
    record: dict[str, Any]


def fit_on_predictions(
    predictions: Predictions,
    y_true: np.ndarray,
    patients: np.ndarray,
    *,
    method: str,
    threshold_method: str,
) -> Fitted:
    """Fit ``method`` (or ``"none"``) on the logits, then thresholds on the calibrated
    probabilities. ``predictions`` must hold logits for all 15 outputs."""
    if predictions.labels != LABELS:
        raise CalibrationError(f"expected logits for all {len(LABELS)} outputs in logit order, "
                               f"got {list(predictions.labels)}")
    if method != "none" and predictions.logits is None:
        raise CalibrationError("calibration needs logits; the predictions hold probabilities only")
    labels = list(LABELS)
    notes: list[str] = []
    calibration = None
    if method != "none":
        calibration, calibration_notes = fit_calibration(y_true, predictions.logits, method,
                                                         labels=labels)
        notes += calibration_notes
    probs = apply_calibration(predictions.logits, calibration) if calibration else predictions.probs
    thresholds, threshold_notes = choose_thresholds(
        y_true, probs, threshold_method, labels=labels,
        uninformative=uninformative_classes(calibration))
    notes += threshold_notes
    ece = calibration_summary(y_true, predictions.probs, probs if calibration else None,
                              labels=labels, n_bins=DEFAULT_ECE_BINS)["pooled"]
    record = {
        "n_images": int(len(predictions.images)),
        "n_patients": int(len(np.unique(patients))),
        "threshold_method": threshold_method,
        "calibration_method": method,
        "ece_pooled_before": ece["ece_before"],
        "ece_pooled_after": ece.get("ece_after"),
        "no_signal": no_signal_classes(y_true, probs, calibration),
    }
    return Fitted(np.asarray(thresholds, dtype=np.float64), calibration, notes, record)


def no_signal_classes(
    y_true: np.ndarray, probs: np.ndarray, calibration: dict[str, Any] | None
) -> list[str]:
    """Labels whose held-out scores show no signal: one label value only, AUROC <= 0.5,
    or a calibration that found no positive relation to the label. Their threshold is the
    0.5 fallback, and the app marks them rather than presenting that threshold as chosen."""
    per_class = auroc_by_label(y_true, probs)
    flat = set(uninformative_classes(calibration))
    return [name for c, name in enumerate(LABELS)
            if c in flat or not per_class[name] > 0.5]  # NaN (one label value) included


def calibrate(
    checkpoint: Path,
    predictions_file: Path,
    out: Path,
    *,
    metadata: Path = DEFAULT_METADATA,
    method: str = "platt",
    threshold_method: str = "f1",
    split: str = "val",
    out_of_fold: int | None = None,
) -> tuple[Path, Fitted]:
    """Write ``out``: ``checkpoint``'s weights with thresholds and calibration fitted on
    ``predictions_file`` (see the module docstring). Returns ``(out, fitted)``."""
    config = read_config(checkpoint / CONFIG_FILE)
    predictions = read_predictions(predictions_file)
    frame = read_metadata(metadata).set_index("Image Index")
    missing = [name for name in predictions.images if name not in frame.index]
    if missing:
        raise CalibrationError(f"{len(missing)} predicted image(s) have no row in {metadata} "
                               f"(first: {missing[0]!r})")
    rows = frame.loc[list(predictions.images)]
    y_true = labels_of(rows).astype(np.int64)
    fitted = fit_on_predictions(predictions, y_true, rows[PATIENT].to_numpy(),
                                method=method, threshold_method=threshold_method)
    record = {
        "split": split,
        **fitted.record,
        "predictions": {"file": predictions_file.name, "sha256": sha256_of(predictions_file)},
    }
    if out_of_fold is not None:
        record["out_of_fold"] = {
            "folds": out_of_fold,
            "note": f"predictions of the {out_of_fold} fold models (same recipe, each on "
                    f"{out_of_fold - 1}/{out_of_fold} of these images), every image scored by "
                    "the one that never saw its patient; not predictions of this model, which "
                    "trained on all of them",
        }
    updated = config.with_updates(
        thresholds=tuple(float(t) for t in fitted.thresholds),
        calibration=fitted.calibration,
        provenance={**config.provenance, "validation_fit": record},
    )
    _write_folder(checkpoint, updated, out)
    return out, fitted


def _write_folder(source: Path, config: Any, out: Path) -> None:
    """``out`` = ``source``'s weights + ``config``, written beside it and renamed into place."""
    if out.resolve() == source.resolve():
        raise CalibrationError(f"--out {out} is the input checkpoint: calibration writes a new folder")
    staging = out.with_name(out.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    shutil.copy2(source / WEIGHTS_FILE, staging / WEIGHTS_FILE)
    write_config(config, staging / CONFIG_FILE)
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.calibrate",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint directory")
    parser.add_argument("--predictions", required=True, type=Path,
                        help="held-out logits of the checkpoint's recipe (logit_<Label> columns)")
    parser.add_argument("--metadata", type=Path, default=DEFAULT_METADATA,
                        help=f"NIH Data_Entry CSV with the labels (default {DEFAULT_METADATA})")
    parser.add_argument("--method", choices=(*CALIBRATION_METHODS, "none"), default="platt")
    parser.add_argument("--threshold-method", choices=THRESHOLD_METHODS, default="f1",
                        help="maximise F1 (default) or Youden's J")
    parser.add_argument("--split", default="val",
                        help="what the predictions are, for the record (default val)")
    parser.add_argument("--out-of-fold", type=int, metavar="K",
                        help="the predictions are out of fold, from K fold models")
    parser.add_argument("--out", required=True, type=Path, help="the new checkpoint folder")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        out, fitted = calibrate(args.checkpoint, args.predictions, args.out,
                                metadata=args.metadata, method=args.method,
                                threshold_method=args.threshold_method, split=args.split,
                                out_of_fold=args.out_of_fold)
    except (CalibrationError, CheckpointError, PredictionsFileError, MetadataError,
            OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for note in fitted.notes:
        print(f"note: {note}")
    record = fitted.record
    print(f"fitted {record['calibration_method']} calibration and {record['threshold_method']} "
          f"thresholds on {record['n_images']} images / {record['n_patients']} patients; "
          f"no signal: {', '.join(record['no_signal']) or 'none'}")
    print(f"calibrated checkpoint: {out}  (python -m training.evaluate --checkpoint {out} ...)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
