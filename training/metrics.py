"""Ranking metrics for multi-label outputs."""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import roc_auc_score

from xray_app.labels import LABELS


def macro_auroc(targets: np.ndarray, scores: np.ndarray) -> tuple[float, dict[str, float]]:
    """Macro-AUROC over the classes with both a positive and a negative, and per class.

    ``targets`` ``(N, 15)`` 0/1, ``scores`` ``(N, 15)`` any monotone score.  Classes
    without both kinds of example get NaN and are left out of the macro mean (NaN when
    no class qualifies).
    """
    per_class: dict[str, float] = {}
    for c, name in enumerate(LABELS):
        column = targets[:, c]
        if 0 < column.sum() < len(column):
            per_class[name] = float(roc_auc_score(column, scores[:, c]))
        else:
            per_class[name] = math.nan
    defined = [v for v in per_class.values() if not math.isnan(v)]
    return (float(np.mean(defined)) if defined else math.nan), per_class
