"""training.metrics.headline: one headline, the mean AUROC over the 14 pathologies."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.metrics.headline import auroc_by_label, headline_auroc, mean_pathology_auroc
from xray_app.labels import LABELS, NO_FINDING_INDEX, PATHOLOGIES


def _targets_and_scores(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    targets = (rng.random((40, len(LABELS))) < 0.4).astype(np.float32)
    targets[:2], targets[2:4] = 1, 0  # every class has both outcomes
    return targets, targets.copy()  # scores that rank every class perfectly


def test_no_finding_is_reported_apart_and_never_averaged_in():
    targets, scores = _targets_and_scores(np.random.default_rng(0))
    scores[:, NO_FINDING_INDEX] = 1 - scores[:, NO_FINDING_INDEX]  # No Finding ranked backwards
    mean, no_finding, per_class = headline_auroc(targets, scores)
    assert mean == pytest.approx(1.0), f"expected the 14 perfectly ranked pathologies to give 1.0, got {mean}"
    assert no_finding == pytest.approx(0.0), f"expected No Finding's own AUROC 0.0, got {no_finding}"
    assert list(per_class) == list(LABELS), "expected per-class AUROC for all 15 outputs in logit order"


def test_a_pathology_without_positives_is_left_out_of_the_mean():
    targets, scores = _targets_and_scores(np.random.default_rng(1))
    targets[:, 0] = 0  # Atelectasis: no positive image
    scores[:, 1] = -scores[:, 1]  # Cardiomegaly ranked backwards: AUROC 0
    per_class = auroc_by_label(targets, scores)
    assert math.isnan(per_class[PATHOLOGIES[0]]), "expected NaN for a class without positives"
    expected = (len(PATHOLOGIES) - 2) / (len(PATHOLOGIES) - 1)  # 12 at 1.0, one at 0.0, of 13
    assert mean_pathology_auroc(per_class) == pytest.approx(expected), (
        f"expected the mean over the 13 defined pathologies, {expected:.4f}")


def test_the_mean_is_nan_when_no_pathology_is_defined():
    per_class = dict.fromkeys(LABELS, math.nan)
    assert math.isnan(mean_pathology_auroc(per_class)), "expected NaN when no class is defined"
