"""Calibration maps and expected calibration error (training.fitting.probability_scaling)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit

from training.fitting.probability_scaling import (
    apply_calibration,
    calibration_summary,
    expected_calibration_error,
    fit_calibration,
)
from training.metrics.classification import ranking_metrics


def _sample(rng: np.random.Generator, n: int, true_scale: float, true_bias: float, classes: int):
    """Logits z ~ N(0, 2) and labels y ~ Bernoulli(sigmoid(true_scale * z + true_bias))."""
    z = rng.normal(scale=2.0, size=(n, classes))
    y = (rng.random((n, classes)) < expit(true_scale * z + true_bias)).astype(int)
    return y, z


def test_temperature_one_is_the_identity():
    logits = np.linspace(-8, 8, 30).reshape(10, 3)
    identity = {"method": "temperature", "scale": [1.0] * 3, "bias": [0.0] * 3}
    assert np.allclose(apply_calibration(logits, identity), expit(logits), atol=0, rtol=0), (
        "scale 1 (T = 1) and bias 0 should give exactly the plain sigmoid")
    assert np.array_equal(apply_calibration(logits, None), expit(logits)), (
        "no calibration should be the plain sigmoid")


def test_temperature_fit_on_calibrated_logits_stays_near_one():
    rng = np.random.default_rng(0)
    y, z = _sample(rng, 6000, 1.0, 0.0, classes=2)
    calibration, notes = fit_calibration(y, z, "temperature")
    assert calibration["bias"] == [0.0, 0.0], "temperature scaling should have no bias"
    for scale in calibration["scale"]:
        assert scale == pytest.approx(1.0, abs=0.08), f"expected 1/T near 1, got {scale:.3f}"
    assert notes == [], f"no notes expected, got {notes}"


def test_platt_recovers_known_scale_and_bias():
    rng = np.random.default_rng(1)
    # the model's logits are 2.5 x too confident and shifted: truth = sigmoid(0.4 z - 1)
    y, z = _sample(rng, 8000, 0.4, -1.0, classes=1)
    calibration, _ = fit_calibration(y, z, "platt")
    assert calibration["method"] == "platt", "method recorded"
    assert calibration["scale"][0] == pytest.approx(0.4, abs=0.05), (
        f"expected scale 0.4, got {calibration['scale'][0]:.3f}")
    assert calibration["bias"][0] == pytest.approx(-1.0, abs=0.1), (
        f"expected bias -1, got {calibration['bias'][0]:.3f}")


@pytest.mark.parametrize("method", ["platt", "temperature"])
def test_calibration_fitted_on_validation_reduces_ece_on_held_out_data(method):
    rng = np.random.default_rng(2)
    y_val, z_val = _sample(rng, 3000, 0.35, 0.0, classes=3)  # overconfident logits
    y_test, z_test = _sample(rng, 3000, 0.35, 0.0, classes=3)  # fresh data, same model
    calibration, _ = fit_calibration(y_val, z_val, method)
    after = apply_calibration(z_test, calibration)
    for c in range(3):
        before_ece = expected_calibration_error(y_test[:, c], expit(z_test[:, c]))
        after_ece = expected_calibration_error(y_test[:, c], after[:, c])
        assert after_ece < 0.5 * before_ece, (
            f"{method}, class {c}: expected ECE to at least halve on held-out data, "
            f"before {before_ece:.3f}, after {after_ece:.3f}")
        assert after_ece < 0.04, f"{method}, class {c}: calibrated ECE {after_ece:.3f} too high"


def test_calibration_never_changes_the_ranking():
    rng = np.random.default_rng(3)
    y, z = _sample(rng, 500, 0.5, -2.0, classes=2)
    calibration, _ = fit_calibration(y, z, "platt")
    calibrated = apply_calibration(z, calibration)
    for c in range(2):
        before = ranking_metrics(y[:, c], z[:, c])[0][0]
        after = ranking_metrics(y[:, c], calibrated[:, c])[0][0]
        assert after == pytest.approx(before), f"class {c}: AUROC {before} changed to {after}"


def test_class_with_one_label_value_is_left_uncalibrated():
    rng = np.random.default_rng(4)
    y, z = _sample(rng, 200, 1.0, 0.0, classes=2)
    y[:, 1] = 0
    calibration, notes = fit_calibration(y, z, "platt", labels=["Mass", "Hernia"])
    assert (calibration["scale"][1], calibration["bias"][1]) == (1.0, 0.0), (
        "a class without positives should keep the identity map")
    assert len(notes) == 1 and notes[0].startswith("Hernia"), f"expected one note, got {notes}"


def test_ece_of_a_hand_computed_example():
    # two bins of 15 used: p=0.05 (bin 0) for 4 images with 1 positive -> |0.25 - 0.05|;
    # p=0.95 (bin 14) for 4 images with 4 positives -> |1 - 0.95|
    p = np.array([0.05] * 4 + [0.95] * 4)
    y = np.array([1, 0, 0, 0, 1, 1, 1, 1])
    expected = 0.5 * 0.20 + 0.5 * 0.05
    assert expected_calibration_error(y, p, n_bins=15) == pytest.approx(expected), (
        f"expected ECE {expected}")
    assert expected_calibration_error(np.array([]), np.array([])) is None, "empty input -> None"


def test_summary_reports_before_and_after_per_class_and_pooled():
    rng = np.random.default_rng(5)
    y, z = _sample(rng, 1000, 0.3, 0.0, classes=2)
    calibration, _ = fit_calibration(y, z, "temperature")
    summary = calibration_summary(y, expit(z), apply_calibration(z, calibration),
                                  labels=["Mass", "Nodule"])
    assert set(summary["per_class"]) == {"Mass", "Nodule"}, "one entry per class"
    pooled = summary["pooled"]
    assert pooled["ece_after"] < pooled["ece_before"], f"pooled ECE should drop: {pooled}"
