"""Fit calibration and operating points: ``python -m training.calibrate``.

    python -m training.calibrate --checkpoint RUN/best --predictions PREDS.csv \\
        [--method platt|temperature|none] [--operating-rule false-flags=0.4|specificity=S|f1|youden] \\
        [--no-finding-specificity 0.95] [--population TABLE.json] [--metadata CSV] \\
        [--out-of-fold K] --out DIR

Reads held-out logits of the checkpoint's recipe and their NIH labels: a validation
split's (``training.evaluate --split val`` writes ``predictions_val.csv``) or the
out-of-fold predictions of a cross-validation (``training.crossval``, ``--out-of-fold K``
says so and from how many folds; its ``fold`` column says which fold scored each image).

1. Calibration is fitted per class on the logits (Platt by default).
2. Each class's operating point is chosen on the calibrated probabilities by the rule
   (:mod:`training.metrics.operating_points`; default: at most 0.4 false flags per normal
   film, No Finding at 95% specificity among films with a pathology).
3. Probabilities and thresholds are moved from the held-out sample's label mix to the
   population's (default: every film of ``--metadata``, all 112,120 NIH films) by
   prior-shift correction (:mod:`xray_app.population`); the same films stay flagged.
4. The flags are measured **cross-fitted** (each fold flagged with thresholds chosen on the
   other folds), on the films as they are and weighted to the population by raking.

The result is a **new** checkpoint folder ``DIR``: the same weights, and a
``config.json`` with the thresholds, the calibration, ``population``, ``operating_points``
(the rule, each threshold, its cross-fitted sensitivity and specificity with intervals, the
flag figures) and a ``validation_fit`` record in its provenance (method, images, patients,
ECE before and after, the predictions file by name and sha256). The input checkpoint is
never modified. ``training.evaluate`` then only reads ``DIR``.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from training.data.images import source_of
from training.data.metadata import PATIENT, MetadataError, labels_of, read_metadata
from training.data.predictions import Predictions, PredictionsFileError, read_predictions
from training.data.prevalence import population_from_metadata, population_of_labels
from training.fitting.probability_scaling import (
    CALIBRATION_METHODS,
    DEFAULT_ECE_BINS,
    apply_calibration,
    calibration_summary,
    fit_calibration,
    uninformative_classes,
)
from training.fitting.provenance import public_command
from training.metrics.classification import THRESHOLD_METHODS, choose_thresholds
from training.metrics.headline import auroc_by_label
from training.metrics.operating_points import (
    OperatingPointError,
    OperatingRule,
    cross_fitted_flags,
)
from training.metrics.operating_points import choose_thresholds as choose_operating_points
from training.metrics.population_figures import (
    population_figures,
    sample_figures,
    sample_figures_by_source,
)
from xray_app.labels import LABELS
from xray_app.model import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    read_config,
    sha256_of,
    write_config,
)
from xray_app.population import (
    Population,
    PopulationError,
    PriorShift,
    logit,
    move_thresholds,
    read_population,
    sigmoid,
)

DEFAULT_METADATA = Path("../shared/data/nih/Data_Entry_2017_v2020.csv.gz")
DEFAULT_RULE = OperatingRule("false-flags", 0.40, no_finding_specificity=0.95)
DEFAULT_RULE_TEXT = "false-flags=0.4"
FALLBACK_THRESHOLD = 0.5  # on the calibrated sample scale: above any flat class's probability
FOLD_COLUMN = "fold"  # written by training.crossval into its out-of-fold predictions


class CalibrationError(ValueError):
    """The predictions cannot calibrate this checkpoint; the message says why."""


@dataclass(frozen=True)
class Fitted:
    """Thresholds ``(15,)`` in logit order on the population's probability scale, the
    calibration (or None), the population record (or None), the operating points record
    (or None), notes, and the record written to the provenance."""

    thresholds: np.ndarray
    calibration: dict[str, Any] | None
    notes: list[str]
    record: dict[str, Any]
    population: dict[str, Any] | None = None
    operating_points: dict[str, Any] | None = None


def parse_operating_rule(text: str, no_finding_specificity: float = 0.95) -> OperatingRule | str:
    """``false-flags=B`` or ``specificity=S`` -> :class:`OperatingRule`; ``f1`` or
    ``youden`` (the older rules, by F1 or Youden's J on the held-out sample) as given."""
    if text in THRESHOLD_METHODS:
        return text
    kind, _, value = text.partition("=")
    try:
        return OperatingRule(kind, float(value), no_finding_specificity)
    except (OperatingPointError, ValueError) as error:
        raise CalibrationError(
            f"--operating-rule {text!r}: use false-flags=B, specificity=S, "
            f"{' or '.join(THRESHOLD_METHODS)} ({error})") from None


def fold_ids(predictions_file: Path, patients: np.ndarray, folds: int = 3) -> np.ndarray:
    """``(N,)`` fold of each held-out image: the ``fold`` column of a cross-validation's
    predictions file, else ``folds`` folds of patients dealt at random (seed 0)."""
    frame = pd.read_csv(predictions_file, usecols=lambda c: c == FOLD_COLUMN)
    if FOLD_COLUMN in frame and frame[FOLD_COLUMN].notna().all():
        return frame[FOLD_COLUMN].to_numpy()
    return fold_ids_default(patients, folds)


def fit_on_predictions(
    predictions: Predictions,
    y_true: np.ndarray,
    patients: np.ndarray,
    *,
    method: str,
    rule: OperatingRule | str,
    population: Population | None = None,
    folds: np.ndarray | None = None,
    sources: Sequence[str | None] | None = None,
    n_boot: int = 300,
) -> Fitted:
    """Fit ``method`` (or ``"none"``) on the logits, then the operating points on the
    calibrated probabilities; with ``population``, move both to it and measure the flags
    cross-fitted over ``folds`` (and per source folder, given each film's ``sources``).
    ``predictions`` must hold logits for all 15 outputs."""
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
    if isinstance(rule, OperatingRule):
        thresholds = choose_operating_points(probs, y_true, rule)
        # a class whose calibration found no relation to the label keeps the fallback: a
        # threshold set on noise would flag at random
        flat = set(uninformative_classes(calibration))
        for c in [labels.index(name) for name in no_signal_classes(y_true, probs, calibration)]:
            thresholds[c] = FALLBACK_THRESHOLD
            why = ("calibration found no positive relation between the score and the label"
                   if c in flat else "held-out AUROC <= 0.5 (no signal)")
            notes.append(f"{labels[c]}: {why}; its threshold stays at the {FALLBACK_THRESHOLD} "
                         "fallback instead of an operating point set on noise")
    else:
        thresholds, threshold_notes = choose_thresholds(
            y_true, probs, rule, labels=labels, uninformative=uninformative_classes(calibration))
        thresholds = np.asarray(thresholds, dtype=np.float64)
        notes += threshold_notes
    ece = calibration_summary(y_true, predictions.probs, probs if calibration else None,
                              labels=labels, n_bins=DEFAULT_ECE_BINS)["pooled"]
    record = {
        "n_images": int(len(predictions.images)),
        "n_patients": int(len(np.unique(patients))),
        "threshold_method": rule.kind if isinstance(rule, OperatingRule) else rule,
        "calibration_method": method,
        "ece_pooled_before": ece["ece_before"],
        "ece_pooled_after": ece.get("ece_after"),
        "no_signal": no_signal_classes(y_true, probs, calibration),
    }
    fitted = Fitted(thresholds, calibration, notes, record)
    if population is None:
        return fitted
    return _moved_to(fitted, population, probs, y_true, patients, rule, folds, sources, n_boot)


def _moved_to(fitted: Fitted, population: Population, probs: np.ndarray, y_true: np.ndarray,
              patients: np.ndarray, rule: OperatingRule | str, folds: np.ndarray | None,
              sources: Sequence[str | None] | None, n_boot: int) -> Fitted:
    """``fitted`` with probabilities and thresholds moved to ``population``, and (for an
    operating rule) the cross-fitted flag figures of the held-out films."""
    n, n_patients = fitted.record["n_images"], fitted.record["n_patients"]
    sample = population_of_labels(y_true, f"the {n:,} held-out radiographs ({n_patients:,} "
                                          "patients) the calibration was fitted on")
    shift = PriorShift(population, sample)
    offsets = shift.offsets()
    thresholds = move_thresholds(fitted.thresholds, offsets)
    points = None
    if isinstance(rule, OperatingRule):
        folds = fold_ids_default(patients) if folds is None else folds
        flags = cross_fitted_flags(probs, y_true, folds, rule)
        shown = sigmoid(logit(np.clip(probs, 1e-12, 1 - 1e-12)) + offsets)
        points = {
            **rule.to_dict(),
            "chosen_on": {"description": f"calibrated out-of-fold probabilities of {n:,} "
                                         f"radiographs ({n_patients:,} patients)",
                          "n_images": n, "n_patients": n_patients,
                          "folds": int(np.unique(folds).size)},
            "per_class": {label: {"threshold": float(thresholds[c]),
                                  "sample_threshold": float(fitted.thresholds[c])}
                          for c, label in enumerate(LABELS)},
            "out_of_fold": {
                "flags": "cross-fitted: each fold flagged with thresholds chosen on the others",
                "sample": sample_figures(y_true, probs, flags, patients, n_boot=n_boot),
                "population": population_figures(y_true, shown, flags, patients, population,
                                                 n_boot=n_boot),
            },
        }
        if sources is not None:
            points["out_of_fold"]["by_source"] = sample_figures_by_source(
                sources, y_true, probs, flags, patients, n_boot=n_boot)
    return dataclasses.replace(fitted, thresholds=thresholds, population=shift.to_dict(),
                               operating_points=points)


def fold_ids_default(patients: np.ndarray, folds: int = 3) -> np.ndarray:
    """``folds`` folds of patients dealt at random (seed 0): ``(N,)`` ints."""
    unique, inverse = np.unique(patients, return_inverse=True)
    return (np.random.default_rng(0).permutation(len(unique)) % folds)[inverse.ravel()]


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
    rule: OperatingRule | str = DEFAULT_RULE,
    population: Population | None = None,
    split: str = "val",
    out_of_fold: int | None = None,
    source_folders: Sequence[Path] | None = None,
    n_boot: int = 300,
    command: str | None = None,
) -> tuple[Path, Fitted]:
    """Write ``out``: ``checkpoint``'s weights with calibration and operating points fitted
    on ``predictions_file`` and moved to ``population`` (default: every film of
    ``metadata``; see the module docstring). Returns ``(out, fitted)``."""
    config = read_config(checkpoint / CONFIG_FILE)
    predictions = read_predictions(predictions_file)
    frame = read_metadata(metadata).set_index("Image Index")
    missing = [name for name in predictions.images if name not in frame.index]
    if missing:
        raise CalibrationError(f"{len(missing)} predicted image(s) have no row in {metadata} "
                               f"(first: {missing[0]!r})")
    rows = frame.loc[list(predictions.images)]
    y_true = labels_of(rows).astype(np.int64)
    patients = rows[PATIENT].to_numpy()
    population = population or population_from_metadata(metadata)
    fitted = fit_on_predictions(predictions, y_true, patients, method=method, rule=rule,
                                population=population,
                                folds=fold_ids(predictions_file, patients),
                                sources=(source_of(predictions.images, source_folders)
                                         if source_folders else None),
                                n_boot=n_boot)
    record = {
        "split": split,
        **fitted.record,
        "predictions": {"file": predictions_file.name, "sha256": sha256_of(predictions_file)},
    }
    if command:
        record["command"] = command
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
        population=fitted.population,
        operating_points=fitted.operating_points,
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
    parser.add_argument("--operating-rule", default=DEFAULT_RULE_TEXT, metavar="RULE",
                        help="how thresholds are chosen: false-flags=B (each pathology at "
                        "specificity 1 - B/14 on No-Finding films: at most B false flags per "
                        "normal film), specificity=S (each pathology at specificity S on films "
                        f"without it), or f1 / youden; default {DEFAULT_RULE_TEXT}")
    parser.add_argument("--no-finding-specificity", type=float, default=0.95, metavar="S",
                        help="No Finding's threshold: specificity S on films with a pathology "
                        "(default 0.95)")
    parser.add_argument("--population", type=Path, metavar="JSON",
                        help="prevalence table of the population the probabilities are for "
                        "({\"name\", \"prevalence\": {label: p}}); default: every film of "
                        "--metadata (all 112,120 NIH ChestX-ray14 films)")
    parser.add_argument("--n-boot", type=int, default=300,
                        help="patient-bootstrap resamples for the flag figures' intervals")
    parser.add_argument("--split", default="val",
                        help="what the predictions are, for the record (default val)")
    parser.add_argument("--out-of-fold", type=int, metavar="K",
                        help="the predictions are out of fold, from K fold models")
    parser.add_argument("--sources", type=Path, nargs="+", metavar="DIR",
                        help="image folders that are separate sources: the cross-fitted flag "
                        "figures are also given per folder")
    parser.add_argument("--out", required=True, type=Path, help="the new checkpoint folder")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rule = parse_operating_rule(args.operating_rule, args.no_finding_specificity)
        population = read_population(args.population) if args.population else None
        out, fitted = calibrate(args.checkpoint, args.predictions, args.out,
                                metadata=args.metadata, method=args.method, rule=rule,
                                population=population, split=args.split,
                                out_of_fold=args.out_of_fold, source_folders=args.sources,
                                n_boot=args.n_boot,
                                command=public_command("training.calibrate", list(argv or sys.argv[1:])))
    except (CalibrationError, CheckpointError, PredictionsFileError, MetadataError,
            PopulationError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for note in fitted.notes:
        print(f"note: {note}")
    record = fitted.record
    print(f"fitted {record['calibration_method']} calibration and {record['threshold_method']} "
          f"thresholds on {record['n_images']} images / {record['n_patients']} patients; "
          f"no signal: {', '.join(record['no_signal']) or 'none'}")
    if fitted.operating_points:
        figures = fitted.operating_points["out_of_fold"]
        for name in ("sample", "population"):
            f = figures[name]
            print(f"out of fold, cross-fitted, {f['population']}: "
                  f"{f['flags_per_normal_film']['value']:.2f} pathology flags per normal film, "
                  f"{f['normal_films_with_any_flag']['value']:.0%} of normal films with any, "
                  f"{f['abnormal_films_with_a_correct_flag']['value']:.0%} of abnormal films "
                  "with a correct one")
    print(f"calibrated checkpoint: {out}  (python -m training.evaluate --checkpoint {out} ...)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
