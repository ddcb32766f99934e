"""Told apart from what: each pathology's AUROC against normal films and against other findings."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from training.metrics.negatives import auroc_by_negative
from xray_app.labels import LABELS, NO_FINDING

EFFUSION, MASS, NORMAL = LABELS.index("Effusion"), LABELS.index("Mass"), LABELS.index(NO_FINDING)


def _films() -> tuple[np.ndarray, np.ndarray]:
    """60 films: 20 normal, 20 Effusion, 20 Mass. The Effusion score tells Effusion from
    normal films perfectly, and from Mass films not at all (a shortcut, not the finding)."""
    rng = np.random.default_rng(0)
    y = np.zeros((60, len(LABELS)), dtype=np.int64)
    y[:20, NORMAL], y[20:40, EFFUSION], y[40:, MASS] = 1, 1, 1
    scores = rng.normal(size=y.shape)
    scores[:20, EFFUSION] = rng.uniform(-3, -2, 20)
    scores[20:, EFFUSION] = rng.uniform(0, 1, 40)
    return y, scores


def test_a_shortcut_separates_normal_films_and_not_other_findings():
    y, scores = _films()
    result = auroc_by_negative(y, scores, LABELS)
    effusion = result["per_class"]["Effusion"]
    assert effusion["against_no_finding"] == pytest.approx(1.0), "expected normal films all below"
    rows = np.r_[20:60]
    assert effusion["against_other_findings"] == pytest.approx(
        roc_auc_score(y[rows, EFFUSION], scores[rows, EFFUSION])), (
        "expected the AUROC over Effusion and Mass films alone")
    assert result["per_class"]["Hernia"] == {"against_no_finding": None, "against_other_findings": None}, (
        "expected a class without positives undefined, not a number")
    defined = [entry["against_no_finding"] for entry in result["per_class"].values()
               if entry["against_no_finding"] is not None]
    assert result["against_no_finding"] == pytest.approx(np.mean(defined)), (
        "expected the mean over the pathologies where it is defined")
    assert "No Finding" not in result["per_class"], "expected the 14 pathologies only"


def test_without_no_finding_there_is_nothing_to_split_by():
    y, scores = _films()
    keep = [i for i, name in enumerate(LABELS) if name != NO_FINDING]
    assert auroc_by_negative(y[:, keep], scores[:, keep], [LABELS[i] for i in keep]) is None
