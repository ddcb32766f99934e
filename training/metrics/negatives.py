"""What each pathology is told apart from: normal films, or films with other findings.

A pathology's AUROC mixes two tasks in the proportions of the sample: telling its films
from No-Finding films, and telling them from films with other pathologies. A network can
do the first by cues that are not the finding (view position, how a folder was picked) and
still fail the second, which is the one a reader needs. For each of the 14 pathologies:

- **against No Finding**: its positive films against films labelled No Finding;
- **against other findings**: its positive films against films with some other pathology
  and not this one.

Each is the one AUROC of :mod:`training.metrics.auroc`; the report gives both per class
and their means over the pathologies where they are defined (None where a class lacks
positives or that kind of negative).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from training.metrics.auroc import auroc
from xray_app.labels import NO_FINDING, PATHOLOGIES

KINDS = ("against_no_finding", "against_other_findings")


def auroc_against(positive: np.ndarray, negative: np.ndarray, score: np.ndarray) -> float | None:
    """AUROC of ``score`` for the ``positive`` rows against the ``negative`` rows alone;
    None without both."""
    rows = positive | negative
    if not positive.any() or not negative.any():
        return None
    return float(auroc(positive[rows].astype(np.int64), score[rows]))


def auroc_by_negative(y_true: np.ndarray, scores: np.ndarray, labels: Sequence[str]) -> dict[str, Any] | None:
    """``{"per_class": {label: {kind: AUROC}}, kind: mean over the pathologies}`` for
    ``(N, C)`` 0/1 ``y_true`` and scores over ``labels``; None when ``labels`` lack
    No Finding (normal films cannot then be told from the others)."""
    labels = list(labels)
    if NO_FINDING not in labels:
        return None
    normal = y_true[:, labels.index(NO_FINDING)] == 1
    per_class: dict[str, dict[str, float | None]] = {}
    for column, name in enumerate(labels):
        if name not in PATHOLOGIES:
            continue
        positive = y_true[:, column] == 1
        per_class[name] = {
            "against_no_finding": auroc_against(positive, normal, scores[:, column]),
            "against_other_findings": auroc_against(positive, ~positive & ~normal, scores[:, column]),
        }
    result: dict[str, Any] = {"per_class": per_class}
    for kind in KINDS:
        defined = [entry[kind] for entry in per_class.values() if entry[kind] is not None]
        result[kind] = float(np.mean(defined)) if defined else None
    return result
