"""The one bootstrap of the project: resample *patients*, with replacement.

Images of one patient are correlated, so resampling images would understate the
uncertainty.  Each resample draws as many patients as there are, with replacement, and
takes all images of each drawn patient: a patient drawn k times weighs k.  A figure is
then computed once per resample with those weights (see
:func:`training.metrics.auroc.group_sums`) and its interval is the 95 % percentile
interval over the resamples where it is defined.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

CI_LEVEL = 0.95


def bootstrap_counts(
    groups: Sequence[Any], n_boot: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draw patient-level bootstrap resamples.

    Returns ``(counts, inverse)``: ``counts`` is ``(n_boot, P)`` int, how many times each
    of the P distinct patients was drawn; ``inverse`` is ``(N,)``, the patient index of
    each image, so ``counts[:, inverse]`` are the ``(n_boot, N)`` image weights (every
    image of a patient gets the patient's count).
    """
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    inverse = inverse.ravel()
    n_patients = int(inverse.max()) + 1 if inverse.size else 0
    if n_boot <= 0 or n_patients == 0:
        return np.zeros((0, n_patients), dtype=np.int32), inverse
    counts = rng.multinomial(n_patients, np.full(n_patients, 1.0 / n_patients), size=n_boot)
    return counts.astype(np.int32), inverse


def resample_indices(counts_row: np.ndarray, inverse: np.ndarray) -> np.ndarray:
    """The image indices of one resample (a row of :func:`bootstrap_counts`' counts),
    each image repeated as often as its patient was drawn, in image order."""
    return np.repeat(np.arange(inverse.size), np.asarray(counts_row)[inverse])


def interval(point: float | None, samples: np.ndarray, reason: str | None = None) -> dict[str, Any]:
    """A figure with its percentile interval over the finite ``samples`` ``(B,)``:
    ``{"value", "ci_low", "ci_high", "n_valid_resamples", "n_resamples", "reason"}``
    (no interval with fewer than two valid resamples or without a point value)."""
    samples = np.asarray(samples, dtype=np.float64)
    valid = samples[np.isfinite(samples)]
    low = high = None
    if point is not None and valid.size >= 2:
        alpha = (1.0 - CI_LEVEL) / 2.0
        low, high = (float(v) for v in np.quantile(valid, [alpha, 1.0 - alpha]))
    return {
        "value": point,
        "ci_low": low,
        "ci_high": high,
        "n_valid_resamples": int(valid.size),
        "n_resamples": int(samples.size),
        "reason": reason,
    }
