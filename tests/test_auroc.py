"""training.metrics.auroc and .bootstrap: the one AUROC (ties, sample weights) and the one
patient bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from training.metrics.auroc import auroc, per_class_auroc, roc_points
from training.metrics.bootstrap import bootstrap_counts, interval, resample_indices


def _tied_scores(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels with prevalence 0.3 and scores rounded to one decimal: many ties."""
    y = (rng.random(n) < 0.3).astype(int)
    return y, np.round(rng.normal(size=n) + y, 1)


@pytest.mark.parametrize("seed", range(5))
def test_auroc_equals_sklearn_with_ties(seed):
    y, score = _tied_scores(np.random.default_rng(seed), 300)
    expected = roc_auc_score(y, score)
    assert auroc(y, score) == pytest.approx(expected, abs=1e-12), "expected sklearn's AUROC"


@pytest.mark.parametrize("seed", range(5))
def test_weighted_auroc_equals_sklearn_with_sample_weight(seed):
    rng = np.random.default_rng(10 + seed)
    y, score = _tied_scores(rng, 300)
    weight = rng.gamma(2.0, size=y.size)
    expected = roc_auc_score(y, score, sample_weight=weight)
    assert auroc(y, score, weight) == pytest.approx(expected, abs=1e-12), (
        "expected sklearn's weighted AUROC")


def test_integer_weights_equal_duplicated_rows():
    rng = np.random.default_rng(20)
    y, score = _tied_scores(rng, 200)
    weight = rng.integers(0, 4, size=y.size)
    copies = np.repeat(np.arange(y.size), weight)
    assert auroc(y, score, weight) == pytest.approx(auroc(y[copies], score[copies]), abs=1e-12), (
        "expected weight k to count as k copies of the image")


def test_known_values_and_undefined_cases():
    y = np.array([0, 0, 1, 1])
    assert auroc(y, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0, "expected 1 for a perfect ranking"
    assert auroc(y, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0, "expected 0 for a reversed ranking"
    assert auroc(y, np.full(4, 0.5)) == 0.5, "expected 0.5 when every score ties"
    assert math.isnan(auroc(np.zeros(4), np.arange(4.0))), "expected NaN without positives"
    assert math.isnan(auroc(np.ones(4), np.arange(4.0))), "expected NaN without negatives"
    assert math.isnan(auroc(y, np.arange(4.0), np.array([1, 1, 0, 0]))), (
        "expected NaN when the positives weigh nothing")
    with pytest.raises(ValueError, match="non-negative"):
        auroc(y, np.arange(4.0), np.array([1, -1, 1, 1]))


def test_per_class_auroc_is_auroc_of_each_column():
    rng = np.random.default_rng(30)
    y = (rng.random((150, 4)) < 0.2).astype(int)
    y[:, 3] = 0  # a class without positives
    scores = np.round(rng.normal(size=y.shape) + y, 1)
    weight = rng.random(150)
    values = per_class_auroc(y, scores, weight)
    for c in range(3):
        assert values[c] == pytest.approx(roc_auc_score(y[:, c], scores[:, c], sample_weight=weight)), (
            f"expected column {c} to be its weighted AUROC")
    assert math.isnan(values[3]), "expected NaN for the class without positives"


def test_resample_indices_repeat_each_image_as_often_as_its_patient_was_drawn():
    groups = np.array([5, 5, 2, 8, 8, 8])
    counts, inverse = bootstrap_counts(groups, 50, np.random.default_rng(0))
    for row in counts:
        indices = resample_indices(row, inverse)
        assert np.array_equal(np.bincount(indices, minlength=6), row[inverse]), (
            "expected every image as often as its patient was drawn")


def test_interval_is_a_percentile_interval_over_finite_resamples():
    samples = np.r_[np.linspace(0, 1, 1001), np.nan]
    entry = interval(0.5, samples)
    assert entry["ci_low"] == pytest.approx(0.025) and entry["ci_high"] == pytest.approx(0.975), (
        f"expected the 95% percentile interval, got {entry}")
    assert (entry["n_valid_resamples"], entry["n_resamples"]) == (1001, 1002), (
        "expected the NaN resample counted but not used")
    assert interval(None, samples)["ci_low"] is None, "expected no interval without a point value"


def test_roc_points_enclose_the_auroc():
    y, score = _tied_scores(np.random.default_rng(40), 250)
    fpr, tpr = roc_points(y, score)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0), "expected (0,0) to (1,1)"
    assert np.trapezoid(tpr, fpr) == pytest.approx(auroc(y, score), abs=1e-12), (
        "expected the trapezoid area under the points to be the AUROC")
