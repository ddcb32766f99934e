"""Operating points: thresholds at a stated rate of false flags, chosen on held-out films."""

from __future__ import annotations

import numpy as np
import pytest

from training.metrics.operating_points import (
    OperatingPointError,
    OperatingRule,
    choose_thresholds,
    cross_fitted_flags,
    flag_rates,
    predictive_values,
    threshold_at_specificity,
)
from xray_app.flags import flag_findings
from xray_app.labels import LABELS, NO_FINDING_INDEX


def _films(seed: int = 0, n: int = 600) -> tuple[np.ndarray, np.ndarray]:
    """Labels with a third normal films, and probabilities that rank positives higher."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, len(LABELS))) < 0.15).astype(int)
    normal = rng.random(n) < 0.33
    labels[normal] = 0
    labels[:, NO_FINDING_INDEX] = ~labels[:, :NO_FINDING_INDEX].any(axis=1)
    logits = rng.normal(size=labels.shape) + 1.5 * labels
    return 1 / (1 + np.exp(-logits)), labels


@pytest.mark.parametrize("specificity", [0.5, 0.9, 0.95, 0.99])
def test_threshold_meets_the_specificity(specificity):
    negatives = np.random.default_rng(1).uniform(0.01, 0.99, size=357)
    t = threshold_at_specificity(negatives, specificity)
    assert np.mean(negatives < t) >= specificity, "at least the stated share stays below"
    assert np.mean(negatives < t) - specificity < 1 / 357 + 1e-12, "and no more than one film over"


def test_false_flag_budget_holds_on_the_films_it_was_chosen_on():
    p, labels = _films()
    rule = OperatingRule("false-flags", 0.3)
    rates = flag_rates(flag_findings(p, choose_thresholds(p, labels, rule)), labels)
    assert rates["flags_per_normal_film"] <= 0.3 + 1e-9, "the budget is met where it was set"
    assert rates["normal_films_with_any_flag"] <= 0.3 + 1e-9, "and bounds the share with any flag"


def test_no_finding_specificity_among_abnormal_films():
    p, labels = _films()
    rule = OperatingRule("specificity", 0.9, no_finding_specificity=0.95)
    t = choose_thresholds(p, labels, rule)
    abnormal = labels[:, NO_FINDING_INDEX] == 0
    assert np.mean(p[abnormal, NO_FINDING_INDEX] < t[NO_FINDING_INDEX]) >= 0.95


def test_cross_fitted_flags_use_thresholds_from_other_folds():
    p, labels = _films()
    folds = np.arange(len(p)) % 3
    rule = OperatingRule()
    flags = cross_fitted_flags(p, labels, folds, rule)
    inside = folds == 0
    expected = flag_findings(p[inside], choose_thresholds(p[~inside], labels[~inside], rule))
    assert np.array_equal(flags[inside], expected), "fold 0 must be flagged by folds 1 and 2"


def test_weighted_rates_equal_duplicated_films():
    p, labels = _films(n=120)
    flags = flag_findings(p, np.full(len(LABELS), 0.5))
    weights = np.random.default_rng(2).integers(1, 4, size=len(p))
    weighted = flag_rates(flags, labels, weights.astype(float))
    repeated = flag_rates(np.repeat(flags, weights, axis=0), np.repeat(labels, weights, axis=0))
    assert weighted["flags_per_normal_film"] == pytest.approx(repeated["flags_per_normal_film"])
    assert weighted["per_class"]["Effusion"]["sensitivity"] == pytest.approx(
        repeated["per_class"]["Effusion"]["sensitivity"])


def test_ppv_at_a_low_prevalence():
    ppv, npv = predictive_values(0.5, 0.9, 0.01)
    assert ppv == pytest.approx(0.005 / (0.005 + 0.099)) and npv > 0.99


def test_rule_description_states_the_operating_point():
    text = OperatingRule("false-flags", 0.25).describe()
    assert "98.2% specificity on No-Finding films" in text and "0.25 false flags" in text


def test_unknown_rule_is_refused():
    with pytest.raises(OperatingPointError, match="one of"):
        OperatingRule("f1", 0.5)
