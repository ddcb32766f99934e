"""Evaluation metrics over arrays, with confidence intervals resampled by patient.

Pure functions: arrays in, JSON-ready dicts out; no files, no plotting, no model.
(:mod:`training.metrics.headline` holds the trainer's per-epoch validation AUROC.)

Conventions
-----------
* ``y_true`` is ``(N, C)`` with values in {0, 1}; ``probs`` is ``(N, C)`` in [0, 1]
  (any monotone score works for AUROC/AUPRC); ``groups`` is ``(N,)`` patient ids.
* A class is predicted positive when ``prob >= threshold`` (the predictor's rule).
* AUPRC is average precision (step-wise, no interpolation; scikit-learn's
  ``average_precision_score``).
* Confidence intervals are 95 % percentile intervals over ``n_boot`` bootstrap
  resamples of *patients*: each resample draws as many patients as there are, with
  replacement, and takes all images of each drawn patient.  Images of one patient
  are correlated, so resampling images would understate the uncertainty.
  A class whose resample holds only one label value is skipped for that resample;
  every interval says on how many resamples it rests.
* A figure that cannot be computed (AUROC of a class without positives, precision
  with no positive predictions) is ``None`` with a ``reason``; nothing raises.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from training.metrics.auroc import auroc_from_sums, group_sums, tie_groups
from training.metrics.bootstrap import CI_LEVEL, bootstrap_counts, interval
from xray_app.labels import PATHOLOGIES

HEADLINE_NAME = "mean AUROC over the 14 pathologies"
_MAX_CHUNK_CELLS = 4_000_000  # resamples x tie groups per block: bounds memory on big splits


# --------------------------------------------------------------------------- ranking metrics
def _chunks(n_rows: int, n_cols: int) -> list[slice]:
    step = max(1, _MAX_CHUNK_CELLS // max(1, n_cols))
    return [slice(start, min(start + step, n_rows)) for start in range(0, n_rows, step)]


def _ap_from_sums(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """``(B,)`` average precision; NaN where a row has no positives."""
    n_pos = pos.sum(axis=1)
    tp, fp = np.cumsum(pos, axis=1), np.cumsum(neg, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        ap = (pos * precision).sum(axis=1) / n_pos
    return np.where(n_pos > 0, ap, np.nan)


def ranking_metrics(
    y: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """AUROC and average precision of one class under each row of ``weights``.

    ``y`` ``(N,)`` in {0, 1}, ``scores`` ``(N,)``, ``weights`` ``(B, N)`` non-negative
    (integer weights = duplicated images; ``None`` = one row of ones).  Returns two
    ``(B,)`` float arrays, NaN where undefined.
    """
    y = np.asarray(y).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if weights is None:
        weights = np.ones((1, y.size))
    auroc = np.full(weights.shape[0], np.nan)
    ap = np.full(weights.shape[0], np.nan)
    if y.size == 0:
        return auroc, ap
    order, starts = tie_groups(scores)
    positive = y[order].astype(bool)
    weights = np.asarray(weights)
    for block in _chunks(weights.shape[0], y.size):
        pos, neg = group_sums(positive, starts, weights[block][:, order])
        auroc[block] = auroc_from_sums(pos, neg)
        ap[block] = _ap_from_sums(pos, neg)
    return auroc, ap


def _boot_ranking(
    y: np.ndarray, scores: np.ndarray, counts: np.ndarray, inverse: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-resample AUROC and AP: patient counts ``(B, P)`` become image weights through
    ``inverse`` ``(N,)``, gathered straight into score order, block by block."""
    n_boot = counts.shape[0]
    auroc, ap = np.full(n_boot, np.nan), np.full(n_boot, np.nan)
    if y.size == 0:
        return auroc, ap
    order, starts = tie_groups(np.asarray(scores, dtype=np.float64))
    positive = np.asarray(y)[order].astype(bool)
    owner = inverse[order]
    for block in _chunks(n_boot, y.size):
        pos, neg = group_sums(positive, starts, counts[block][:, owner])
        auroc[block] = auroc_from_sums(pos, neg)
        ap[block] = _ap_from_sums(pos, neg)
    return auroc, ap


# --------------------------------------------------------------------------- threshold metrics
def confusion_counts(y: np.ndarray, predicted: np.ndarray) -> dict[str, int]:
    """TP/FP/TN/FN; ``y`` and ``predicted`` are same-shape booleans or {0, 1} (pooled)."""
    y, predicted = np.asarray(y).astype(bool), np.asarray(predicted).astype(bool)
    return {
        "tp": int(np.sum(y & predicted)),
        "fp": int(np.sum(~y & predicted)),
        "tn": int(np.sum(~y & ~predicted)),
        "fn": int(np.sum(y & ~predicted)),
    }


def rates_from_counts(counts: dict[str, int]) -> dict[str, Any]:
    """Precision, recall (sensitivity), specificity and F1 from confusion counts.

    Undefined ratios are ``None``, with the reason under ``"<name>_reason"``.
    F1 = 2TP / (2TP + FP + FN), which is 0 (not undefined) when there are positives
    or positive predictions but no true positives.
    """
    tp, fp, tn, fn = counts["tp"], counts["fp"], counts["tn"], counts["fn"]
    out: dict[str, Any] = {}
    for name, numerator, denominator, reason in (
        ("precision", tp, tp + fp, "no positive predictions"),
        ("recall", tp, tp + fn, "no positive cases"),
        ("specificity", tn, tn + fp, "no negative cases"),
        ("f1", 2 * tp, 2 * tp + fp + fn, "no positive cases and no positive predictions"),
    ):
        if denominator == 0:
            out[name] = None
            out[f"{name}_reason"] = reason
        else:
            out[name] = numerator / denominator
    return out


def accuracy_summary(y_true: np.ndarray, predicted: np.ndarray) -> dict[str, Any]:
    """The accuracies people quote, each beside the always-negative baseline.

    ``y_true`` and ``predicted`` are ``(N, C)`` in {0, 1}.
    * element-wise accuracy: fraction of the N x C label decisions that are right;
    * exact-match (subset) accuracy: fraction of images whose C decisions are all right.
    The baseline predicts every label negative: with rare findings it already scores
    high element-wise accuracy, which is why accuracy alone says little here.
    """
    y_true = np.asarray(y_true).astype(bool)
    predicted = np.asarray(predicted).astype(bool)
    n_images, n_classes = y_true.shape
    if n_images == 0:
        return {"n_images": 0, "n_classes": n_classes, "reason": "no images"}
    return {
        "n_images": int(n_images),
        "n_classes": int(n_classes),
        "element_wise_accuracy": float(np.mean(y_true == predicted)),
        "element_wise_accuracy_always_negative": float(np.mean(~y_true)),
        "exact_match_accuracy": float(np.mean(np.all(y_true == predicted, axis=1))),
        "exact_match_accuracy_always_negative": float(np.mean(~y_true.any(axis=1))),
        "definitions": {
            "element_wise_accuracy": f"fraction of the {n_images} x {n_classes} label "
            "decisions (image, class) that are correct",
            "exact_match_accuracy": "fraction of images for which every one of the "
            f"{n_classes} decisions is correct (subset accuracy)",
            "always_negative": "the same accuracy if every label of every image were "
            "predicted negative",
        },
    }


# --------------------------------------------------------------------------- the report
def _check_shapes(y_true: np.ndarray, probs: np.ndarray, thresholds: np.ndarray, groups) -> None:
    if y_true.shape != probs.shape or y_true.ndim != 2:
        raise ValueError(f"y_true {y_true.shape} and probs {probs.shape} must be the same (N, C)")
    if thresholds.shape != (y_true.shape[1],):
        raise ValueError(f"thresholds {thresholds.shape} must be ({y_true.shape[1]},)")
    if len(groups) != y_true.shape[0]:
        raise ValueError(f"{len(groups)} patient ids for {y_true.shape[0]} images")
    if not np.isin(y_true, (0, 1)).all():
        raise ValueError("y_true must contain only 0 and 1")


def _class_entry(
    y: np.ndarray, p: np.ndarray, threshold: float, counts: np.ndarray, inverse: np.ndarray
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
    auroc_point, ap_point = (float(v[0]) for v in ranking_metrics(y, p))
    auroc_boot, ap_boot = _boot_ranking(y, p, counts, inverse)
    auroc_reason = None
    if n_pos == 0 or n_neg == 0:
        auroc_reason = f"undefined: {n_pos} positive and {n_neg} negative images"
    ap_reason = "undefined: no positive images" if n_pos == 0 else None
    decisions = confusion_counts(y, p >= threshold)
    entry = {
        "n_positive": n_pos,
        "n_negative": n_neg,
        "prevalence": n_pos / y.size if y.size else None,
        "threshold": float(threshold),
        "auroc": interval(None if auroc_reason else auroc_point, auroc_boot, auroc_reason),
        "auprc": interval(None if ap_reason else ap_point, ap_boot, ap_reason),
        **decisions,
        **rates_from_counts(decisions),
    }
    return entry, auroc_boot, ap_boot


def _mean_over(values: dict[str, float | None], boot: dict[str, np.ndarray], what: str) -> dict:
    """Unweighted mean over the classes whose value is defined, with a bootstrap interval
    from the resamples in which every one of those classes is defined."""
    classes = [name for name, value in values.items() if value is not None]
    left_out = [name for name, value in values.items() if value is None]
    if not classes:
        return {**interval(None, np.array([]), f"no class has a defined {what}"),
                "classes": [], "classes_left_out": left_out}
    point = float(np.mean([values[name] for name in classes]))
    samples = np.stack([boot[name] for name in classes]).mean(axis=0)  # NaN if any undefined
    return {**interval(point, samples), "classes": classes, "classes_left_out": left_out}


def _micro(
    y: np.ndarray, p: np.ndarray, thresholds: np.ndarray, counts: np.ndarray, inverse: np.ndarray
) -> dict[str, Any]:
    """Pooled over the given classes: every (image, class) decision counts once."""
    flat_y, flat_p = y.ravel(), p.ravel()
    flat_inverse = np.repeat(inverse, y.shape[1])  # row-major ravel: image-major order
    auroc_point, ap_point = (float(v[0]) for v in ranking_metrics(flat_y, flat_p))
    auroc_boot, ap_boot = _boot_ranking(flat_y, flat_p, counts, flat_inverse)
    decisions = confusion_counts(y, p >= thresholds[None, :])
    has_positive = flat_y.sum() > 0
    has_both = has_positive and flat_y.sum() < flat_y.size
    return {
        "auroc": interval(auroc_point if has_both else None, auroc_boot,
                           None if has_both else "undefined: one label value only"),
        "auprc": interval(ap_point if has_positive else None, ap_boot,
                           None if has_positive else "undefined: no positives"),
        **decisions,
        **rates_from_counts(decisions),
    }


def _macro(
    per_class: dict[str, Any], average_over: Sequence[str],
    auroc_boot: dict[str, np.ndarray], ap_boot: dict[str, np.ndarray],
) -> dict[str, Any]:
    """Unweighted means over the ``average_over`` classes whose figure is defined: AUROC
    and AUPRC with bootstrap intervals, the rates at the thresholds without."""
    macro: dict[str, Any] = {
        "classes_considered": list(average_over),
        "auroc": _mean_over({n: per_class[n]["auroc"]["value"] for n in average_over},
                            auroc_boot, "AUROC"),
        "auprc": _mean_over({n: per_class[n]["auprc"]["value"] for n in average_over},
                            ap_boot, "AUPRC"),
    }
    for rate in ("precision", "recall", "specificity", "f1"):
        defined = [n for n in average_over if per_class[n][rate] is not None]
        macro[rate] = {
            "value": float(np.mean([per_class[n][rate] for n in defined])) if defined else None,
            "classes": defined,
        }
    return macro


def _headline_name(classes: Sequence[str]) -> str:
    """The headline's name, saying when it averages fewer than the 14 pathologies."""
    if set(PATHOLOGIES) <= set(classes):
        return HEADLINE_NAME
    return (f"mean AUROC over {len(classes)} of the 14 pathologies "
            "(the others are absent or undefined here)")


def per_class_metrics(
    y_true: np.ndarray,
    probs: np.ndarray,
    thresholds: np.ndarray,
    groups: Sequence[Any],
    *,
    labels: Sequence[str],
    n_boot: int = 1000,
    rng: np.random.Generator,
    average_over: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Every metric of the evaluation report for one model on one set of images.

    ``y_true`` ``(N, C)`` {0, 1}; ``probs`` ``(N, C)`` probabilities (calibrated, if the
    model is); ``thresholds`` ``(C,)``; ``groups`` ``(N,)`` patient ids; ``labels`` the C
    class names.  ``average_over`` names the classes that the macro and micro averages
    pool (default: those of the 14 pathologies present in ``labels``; "No Finding" is a
    different kind of output and is reported on its own).

    Returns a JSON-ready dict: ``per_class[label]`` (counts, prevalence, threshold,
    AUROC/AUPRC with intervals, TP/FP/TN/FN, precision/recall/specificity/F1),
    ``macro`` (unweighted means over ``average_over`` classes with a defined value,
    listing them), ``micro`` (pooled decisions), ``headline`` (the mean AUROC over the
    14 pathologies, with its interval) and ``accuracy`` (:func:`accuracy_summary`).
    """
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    _check_shapes(y_true, probs, thresholds, groups)
    labels = list(labels)
    if average_over is None:
        average_over = [name for name in labels if name in PATHOLOGIES]
    unknown = [name for name in average_over if name not in labels]
    if unknown:
        raise ValueError(f"average_over names classes not in labels: {unknown}")
    counts, inverse = bootstrap_counts(groups, n_boot, rng)

    per_class: dict[str, Any] = {}
    auroc_boot: dict[str, np.ndarray] = {}
    ap_boot: dict[str, np.ndarray] = {}
    for c, name in enumerate(labels):
        per_class[name], auroc_boot[name], ap_boot[name] = _class_entry(
            y_true[:, c], probs[:, c], thresholds[c], counts, inverse
        )

    averaged = [labels.index(name) for name in average_over]
    macro = _macro(per_class, average_over, auroc_boot, ap_boot)
    predicted = probs >= thresholds[None, :]
    return {
        "labels": labels,
        "n_images": int(y_true.shape[0]),
        "n_patients": int(inverse.max() + 1) if inverse.size else 0,
        "bootstrap": {
            "n_resamples": int(n_boot),
            "unit": "patient",
            "interval": f"{CI_LEVEL:.0%} percentile",
        },
        "threshold_rule": "positive when probability >= threshold",
        "per_class": per_class,
        "macro": macro,
        "micro": _micro(y_true[:, averaged], probs[:, averaged], thresholds[averaged],
                        counts, inverse),
        "headline": {"name": _headline_name(macro["auroc"]["classes"]), **macro["auroc"]},
        "accuracy": {
            "averaged_classes": accuracy_summary(y_true[:, averaged], predicted[:, averaged]),
            "all_classes": accuracy_summary(y_true, predicted),
        },
    }


def compare_auroc(
    y_true: np.ndarray,
    probs_a: np.ndarray,
    probs_b: np.ndarray,
    groups: Sequence[Any],
    *,
    labels: Sequence[str],
    n_boot: int = 1000,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """Paired comparison of two models' AUROC on the same images: A minus B.

    Both models are scored on the same patient resamples, so the interval of the
    difference accounts for the images being shared.  Per class, and for the mean
    over the pathologies among ``labels``.
    """
    y_true = np.asarray(y_true)
    counts, inverse = bootstrap_counts(groups, n_boot, rng)
    per_class: dict[str, Any] = {}
    differences: dict[str, float | None] = {}
    boots: dict[str, np.ndarray] = {}
    for c, name in enumerate(labels):
        y = y_true[:, c]
        points, samples = [], []
        for probs in (probs_a, probs_b):
            scores = np.asarray(probs[:, c], dtype=np.float64)
            points.append(ranking_metrics(y, scores)[0][0])
            samples.append(_boot_ranking(y, scores, counts, inverse)[0])
        defined = bool(np.isfinite(points[0]))
        differences[name] = float(points[0] - points[1]) if defined else None
        boots[name] = samples[0] - samples[1]
        per_class[name] = {"auroc_difference": interval(
            differences[name], boots[name], None if defined else "undefined AUROC")}
    pathologies = {n: differences[n] for n in labels if n in PATHOLOGIES}
    return {
        "difference": "model A minus model B, paired bootstrap by patient",
        "per_class": per_class,
        "mean_auroc_difference": _mean_over(pathologies, boots, "AUROC"),
    }


# --------------------------------------------------------------------------- thresholds
DEFAULT_THRESHOLD = 0.5
THRESHOLD_METHODS = ("f1", "youden")
_THRESHOLD_LIMITS = (1e-6, 1.0 - 1e-6)  # config.json requires thresholds strictly inside (0, 1)


def choose_thresholds(
    y_true: np.ndarray,
    probs: np.ndarray,
    method: str = "f1",
    *,
    labels: Sequence[str] | None = None,
    uninformative: Sequence[int] = (),
) -> tuple[np.ndarray, list[str]]:
    """Per-class decision thresholds, to be chosen on the VALIDATION split only.

    ``y_true`` ``(N, C)`` {0, 1}; ``probs`` ``(N, C)`` — the probabilities the predictor
    will threshold, i.e. *calibrated* ones when the model is calibrated.
    ``method``: ``"f1"`` maximises F1; ``"youden"`` maximises Youden's J = sensitivity +
    specificity - 1.  Candidates are the observed probabilities (positive when
    ``prob >= threshold``); ties in the objective go to the highest threshold.

    Returns ``((C,) thresholds, notes)``; a class with only one label value gets
    :data:`DEFAULT_THRESHOLD` and a note saying so.  So does a class whose validation AUROC
    is at most 0.5: the model shows no signal for it, and maximising F1 would flag every
    image (recall 1 at precision = prevalence); 0.5 on a calibrated probability means
    "more likely than not", which such a class will rarely reach.  The same goes for the
    classes in ``uninformative`` (from
    :func:`training.fitting.probability_scaling.uninformative_classes`): their calibration found no
    positive relation between score and label, so every image gets about the same
    probability and a max-F1 cut through it would be arbitrary.
    """
    if method not in THRESHOLD_METHODS:
        raise ValueError(f"unknown threshold method {method!r}; expected one of {THRESHOLD_METHODS}")
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    if y_true.shape != probs.shape or y_true.ndim != 2:
        raise ValueError(f"y_true {y_true.shape} and probs {probs.shape} must be the same (N, C)")
    names = list(labels) if labels is not None else [f"class {c}" for c in range(y_true.shape[1])]
    thresholds = np.full(y_true.shape[1], DEFAULT_THRESHOLD)
    notes: list[str] = []
    for c in range(y_true.shape[1]):
        y, p = y_true[:, c], probs[:, c]
        n_pos = int(y.sum())
        n_neg = y.size - n_pos
        if n_pos == 0 or n_neg == 0:
            notes.append(f"{names[c]}: {n_pos} positive and {n_neg} negative images; "
                         f"threshold left at {DEFAULT_THRESHOLD}")
            continue
        order, starts = tie_groups(p)
        pos, neg = group_sums(y[order].astype(bool), starts, np.ones((1, y.size)))
        tp, fp = np.cumsum(pos[0]), np.cumsum(neg[0])
        auroc = float(auroc_from_sums(pos, neg)[0])
        if auroc <= 0.5:
            notes.append(f"{names[c]}: validation AUROC {auroc:.3f} <= 0.5 (no signal); "
                         f"threshold set to {DEFAULT_THRESHOLD} instead of flagging every image")
            continue
        if c in uninformative:
            notes.append(f"{names[c]}: calibration found no positive relation between the "
                         "score and the label (fitted scale at its floor), so every image "
                         f"gets about the same probability; threshold set to {DEFAULT_THRESHOLD} "
                         "instead of thresholding a near-constant")
            continue
        if method == "f1":
            objective = 2 * tp / (2 * tp + fp + (n_pos - tp))
        else:
            objective = tp / n_pos - fp / n_neg
        # the first (highest) threshold among ties, with rounding error counted as a tie
        best = int(np.flatnonzero(objective >= objective.max() - 1e-12)[0])
        thresholds[c] = p[order[starts[best]]]
    return np.clip(thresholds, *_THRESHOLD_LIMITS), notes
