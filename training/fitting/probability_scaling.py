"""Per-class probability calibration (Platt or temperature) and expected calibration error.

Calibration is stored in ``config.json`` in the form the predictor applies::

    {"method": "platt" | "temperature", "scale": [C floats], "bias": [C floats]}
    calibrated_p = sigmoid(scale * logit + bias)        # temperature: scale = 1/T, bias = 0

Order of the validation steps (see :mod:`training.evaluate`): fit calibration on the
validation logits first, then choose thresholds on the *calibrated* validation
probabilities, because the predictor thresholds calibrated probabilities.

Both maps are increasing (``scale > 0``), so calibration never changes a class's
ranking of images and hence never changes its AUROC or AUPRC.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit

CALIBRATION_METHODS = ("platt", "temperature")
DEFAULT_ECE_BINS = 15
_SCALE_BOUNDS = (1e-3, 1e3)
_BIAS_BOUNDS = (-50.0, 50.0)


def uninformative_classes(calibration: dict[str, Any] | None) -> list[int]:
    """Classes whose fitted scale sits at its lower bound: on the fitting data their score
    showed no positive relation to the label, so their calibrated probability is (nearly)
    the same for every image and a threshold on it would be arbitrary."""
    if calibration is None:
        return []
    floor = _SCALE_BOUNDS[0] * (1 + 1e-6)
    return [c for c, scale in enumerate(calibration["scale"]) if scale <= floor]


def apply_calibration(logits: np.ndarray, calibration: dict[str, Any] | None,
                      offsets: np.ndarray | None = None) -> np.ndarray:
    """``(N, C)`` logits -> ``(N, C)`` probabilities ``sigmoid(scale * logit + bias + offset)``,
    as the app computes them.

    ``calibration=None`` means scale 1 and bias 0; ``offsets`` ``(C,)`` are the log-odds that
    move calibrated probabilities to a population (:mod:`xray_app.population`; None: 0).
    """
    z = np.asarray(logits, dtype=np.float64)
    if calibration is not None:
        z = apply_logodds(z, calibration)
    if offsets is not None:
        z = z + np.asarray(offsets, dtype=np.float64)[None, :]
    return expit(z)


def apply_logodds(logits: np.ndarray, calibration: dict[str, Any]) -> np.ndarray:
    """``(N, C)`` calibrated log-odds ``scale * logit + bias``."""
    logits = np.asarray(logits, dtype=np.float64)
    scale = np.asarray(calibration["scale"], dtype=np.float64)
    bias = np.asarray(calibration["bias"], dtype=np.float64)
    if scale.shape != (logits.shape[1],) or bias.shape != (logits.shape[1],):
        raise ValueError(
            f"calibration has {scale.size} scales and {bias.size} biases for "
            f"{logits.shape[1]} classes"
        )
    return logits * scale[None, :] + bias[None, :]


def _bce_and_grad(params: np.ndarray, z: np.ndarray, y: np.ndarray, fit_bias: bool):
    """Mean binary cross-entropy of sigmoid(a*z + b) and its gradient in (a[, b])."""
    a = params[0]
    b = params[1] if fit_bias else 0.0
    t = a * z + b
    # log(1 + e^t) - y*t, computed without overflow
    loss = np.mean(np.logaddexp(0.0, t) - y * t)
    residual = expit(t) - y
    grad = [np.mean(residual * z)]
    if fit_bias:
        grad.append(np.mean(residual))
    return loss, np.array(grad)


def _fit_one(z: np.ndarray, y: np.ndarray, method: str) -> tuple[float, float]:
    fit_bias = method == "platt"
    start = np.array([1.0, 0.0]) if fit_bias else np.array([1.0])
    bounds = [_SCALE_BOUNDS, _BIAS_BOUNDS] if fit_bias else [_SCALE_BOUNDS]
    result = minimize(
        _bce_and_grad, start, args=(z, y, fit_bias), jac=True, method="L-BFGS-B", bounds=bounds
    )
    scale = float(result.x[0])
    bias = float(result.x[1]) if fit_bias else 0.0
    return scale, bias


def fit_calibration(
    y_true: np.ndarray,
    logits: np.ndarray,
    method: str = "platt",
    *,
    labels: Sequence[str] | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Fit one calibration map per class on VALIDATION ``(N, C)`` labels and logits.

    ``"platt"``: scale and bias by maximum likelihood (logistic regression on the logit);
    ``"temperature"``: scale = 1/T only, bias 0.  The scale is kept positive so the
    map is increasing.  A class with a single label value cannot be fitted and keeps
    the identity (scale 1, bias 0); the returned notes say which.

    Returns ``({"method", "scale": [C], "bias": [C]}, notes)``.
    """
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"unknown calibration method {method!r}; expected one of {CALIBRATION_METHODS}")
    y_true = np.asarray(y_true, dtype=np.float64)
    logits = np.asarray(logits, dtype=np.float64)
    if y_true.shape != logits.shape or y_true.ndim != 2:
        raise ValueError(f"y_true {y_true.shape} and logits {logits.shape} must be the same (N, C)")
    names = list(labels) if labels is not None else [f"class {c}" for c in range(y_true.shape[1])]
    scales, biases, notes = [], [], []
    for c in range(y_true.shape[1]):
        y, z = y_true[:, c], logits[:, c]
        if y.min() == y.max():
            scales.append(1.0)
            biases.append(0.0)
            notes.append(f"{names[c]}: only one label value in the fitting data; left uncalibrated")
            continue
        scale, bias = _fit_one(z, y, method)
        scales.append(scale)
        biases.append(bias)
    return {"method": method, "scale": scales, "bias": biases}, notes


def reliability_bins(y: np.ndarray, p: np.ndarray, n_bins: int = DEFAULT_ECE_BINS) -> dict:
    """Equal-width bins over [0, 1]: per bin the count, mean probability and observed rate.

    ``y`` and ``p`` are ``(N,)`` (or any shape, flattened).  Empty bins have count 0
    and NaN means.  Probability 1.0 falls in the last bin.
    """
    y = np.asarray(y, dtype=np.float64).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    index = np.clip((p * n_bins).astype(int), 0, n_bins - 1)
    count = np.bincount(index, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(index, weights=p, minlength=n_bins) / count
        observed = np.bincount(index, weights=y, minlength=n_bins) / count
    return {
        "edges": np.linspace(0.0, 1.0, n_bins + 1),
        "count": count,
        "mean_probability": confidence,
        "observed_rate": observed,
    }


def expected_calibration_error(
    y: np.ndarray, p: np.ndarray, n_bins: int = DEFAULT_ECE_BINS
) -> float | None:
    """ECE = sum over equal-width bins of (bin share of images) * |observed rate - mean p|.

    ``y`` ``(N,)`` in {0, 1} and ``p`` ``(N,)`` probabilities of one class (or pooled
    decisions, flattened).  ``None`` for empty input.
    """
    bins = reliability_bins(y, p, n_bins)
    total = bins["count"].sum()
    if total == 0:
        return None
    filled = bins["count"] > 0
    gaps = np.abs(bins["observed_rate"][filled] - bins["mean_probability"][filled])
    return float(np.sum(bins["count"][filled] / total * gaps))


def calibration_summary(
    y_true: np.ndarray,
    probs_before: np.ndarray,
    probs_after: np.ndarray | None,
    *,
    labels: Sequence[str],
    n_bins: int = DEFAULT_ECE_BINS,
) -> dict[str, Any]:
    """ECE per class and pooled over all (image, class) pairs, before and after calibration."""
    out: dict[str, Any] = {"n_bins": n_bins, "binning": "equal-width on [0, 1]", "per_class": {}}
    for c, name in enumerate(labels):
        out["per_class"][name] = {
            "ece_before": expected_calibration_error(y_true[:, c], probs_before[:, c], n_bins),
            "ece_after": None if probs_after is None
            else expected_calibration_error(y_true[:, c], probs_after[:, c], n_bins),
        }
    out["pooled"] = {
        "ece_before": expected_calibration_error(y_true, probs_before, n_bins),
        "ece_after": None if probs_after is None
        else expected_calibration_error(y_true, probs_after, n_bins),
    }
    before = [v["ece_before"] for v in out["per_class"].values() if v["ece_before"] is not None]
    after = [v["ece_after"] for v in out["per_class"].values() if v["ece_after"] is not None]
    out["mean_over_classes"] = {
        "ece_before": float(np.mean(before)) if before else None,
        "ece_after": float(np.mean(after)) if after else None,
    }
    return out
