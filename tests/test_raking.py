"""Raking moves a sample's label mix to a population's and says what that costs."""

from __future__ import annotations

import numpy as np
import pytest

from training.metrics.raking import Margin, RakingError, effective_sample_size, label_margins, rake


def _labels(seed: int = 0, n: int = 400) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((n, 3)) < [0.3, 0.5, 0.2]).astype(int)


def test_weighted_shares_meet_every_margin():
    labels = _labels()
    target = np.array([0.05, 0.6, 0.1])
    result = rake(label_margins(labels, target, ["a", "b", "c"]))
    shares = (result.weights[:, None] * labels).sum(axis=0) / result.weights.sum()
    assert result.converged and np.allclose(shares, target, atol=1e-6), \
        f"weighted shares {shares} should equal the targets {target}"
    assert np.isclose(result.weights.mean(), 1.0), "weights are normalised to mean 1"


def test_sample_already_at_target_keeps_equal_weights():
    labels = _labels()
    result = rake(label_margins(labels, labels.mean(axis=0), ["a", "b", "c"]))
    assert np.allclose(result.weights, 1.0), "no correction is needed, so none is made"
    assert np.isclose(result.effective_size, len(labels)), "equal weights lose no precision"


def test_effective_size_is_kish():
    assert np.isclose(effective_sample_size(np.array([1.0, 1.0, 2.0, 4.0])), 64 / 22)


def test_target_for_an_absent_category_is_refused():
    codes = np.zeros(10, dtype=np.int64)
    with pytest.raises(RakingError, match="no film"):
        Margin("view", codes, np.array([0.5, 0.5]))


def test_contradictory_margins_do_not_converge():
    codes = np.array([0, 0, 1, 1])
    same = Margin("a", codes, np.array([0.5, 0.5]))
    other = Margin("b", codes, np.array([0.9, 0.1]))  # the same films, another target
    assert not rake([same, other], max_iterations=50).converged, \
        "margins no weighting can meet must be reported as not converged"
