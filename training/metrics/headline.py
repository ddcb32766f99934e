"""The headline metric, and the per-label AUROC it is made of
(:func:`training.metrics.auroc.per_class_auroc`).

Every report leads with one number: the **mean AUROC over the 14 pathologies**
(:data:`xray_app.labels.PATHOLOGIES`).  Epoch selection and early stopping
(:mod:`training.fitting.loop`), Optuna's pruning and objective (:mod:`training.tune`),
cross-validation (:mod:`training.crossval`) and evaluation (:mod:`training.evaluate`)
all use it.  "No Finding" is not a pathology: its AUROC is reported on its own line
(``auroc_No Finding``) and never averaged in.
"""

from __future__ import annotations

import math

import numpy as np

from training.metrics.auroc import per_class_auroc
from xray_app.labels import LABELS, NO_FINDING, PATHOLOGIES

HEADLINE = "mean AUROC over the 14 pathologies"
VAL_HEADLINE = "val_mean_auroc"  # the headline on the validation split: metrics.csv column


def auroc_by_label(
    targets: np.ndarray, scores: np.ndarray, sample_weight: np.ndarray | None = None
) -> dict[str, float]:
    """AUROC of each of the 15 outputs, by label; NaN for a class without both a
    positive and a negative image.

    ``targets`` ``(N, 15)`` 0/1 in logit order, ``scores`` ``(N, 15)`` any monotone score
    (logits or probabilities), ``sample_weight`` ``(N,)`` optional image weights.
    """
    values = per_class_auroc(targets, scores, sample_weight)
    return {name: float(value) for name, value in zip(LABELS, values, strict=True)}


def mean_pathology_auroc(per_class: dict[str, float]) -> float:
    """The headline: mean AUROC over the pathologies whose AUROC is defined (NaN when
    none is)."""
    defined = [per_class[name] for name in PATHOLOGIES if not math.isnan(per_class[name])]
    return float(np.mean(defined)) if defined else math.nan


def headline_auroc(targets: np.ndarray, scores: np.ndarray) -> tuple[float, float, dict[str, float]]:
    """``(mean over the 14 pathologies, "No Finding" AUROC, per-class AUROC)``."""
    per_class = auroc_by_label(targets, scores)
    return mean_pathology_auroc(per_class), per_class[NO_FINDING], per_class
