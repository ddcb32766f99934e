"""Metrics of training.metrics.classification on synthetic data whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import average_precision_score, roc_auc_score

from training.metrics.bootstrap import bootstrap_counts
from training.metrics.classification import (
    accuracy_summary,
    choose_thresholds,
    compare_auroc,
    per_class_metrics,
    ranking_metrics,
)
from xray_app.labels import LABELS, PATHOLOGIES


def _binormal(rng: np.random.Generator, n: int, prevalence: float, separation: float):
    """Labels and scores with scores ~ N(separation * y, 1): AUROC = Phi(separation / sqrt 2)."""
    y = (rng.random(n) < prevalence).astype(int)
    return y, rng.normal(size=n) + separation * y


def test_auroc_of_binormal_scores_matches_theory():
    rng = np.random.default_rng(1)
    for separation in (0.0, 1.0, 2.0):
        y, scores = _binormal(rng, 20_000, 0.3, separation)
        auroc, _ = ranking_metrics(y, scores)
        expected = norm.cdf(separation / np.sqrt(2))
        assert abs(auroc[0] - expected) < 0.01, (
            f"separation {separation}: expected AUROC {expected:.3f}, got {auroc[0]:.3f}")


def test_ranking_metrics_equal_sklearn_with_ties_and_integer_weights():
    rng = np.random.default_rng(2)
    y, scores = _binormal(rng, 400, 0.2, 1.0)
    scores = np.round(scores, 1)  # many ties
    weights = rng.integers(0, 4, size=(3, y.size))
    auroc, ap = ranking_metrics(y, scores, weights)
    for row in range(3):
        copies = np.repeat(np.arange(y.size), weights[row])  # weight k == k duplicated images
        expected_auc = roc_auc_score(y[copies], scores[copies])
        expected_ap = average_precision_score(y[copies], scores[copies])
        assert auroc[row] == pytest.approx(expected_auc, abs=1e-12), "AUROC should equal sklearn's"
        assert ap[row] == pytest.approx(expected_ap, abs=1e-12), "AUPRC should equal sklearn's AP"


def test_perfect_reversed_and_constant_scores():
    y = np.array([0, 0, 1, 1])
    assert ranking_metrics(y, np.array([0.1, 0.2, 0.8, 0.9]))[0][0] == 1.0, "perfect ranking = 1"
    assert ranking_metrics(y, np.array([0.9, 0.8, 0.2, 0.1]))[0][0] == 0.0, "reversed = 0"
    assert ranking_metrics(y, np.full(4, 0.5))[0][0] == 0.5, "all ties = 0.5"


def _synthetic(rng: np.random.Generator, n_images: int, n_classes: int = 15):
    y = (rng.random((n_images, n_classes)) < 0.25).astype(int)
    logits = rng.normal(size=y.shape) + 1.5 * y - 1.0
    return y, 1.0 / (1.0 + np.exp(-logits))


def test_bootstrap_intervals_contain_the_point_estimate():
    rng = np.random.default_rng(3)
    y, probs = _synthetic(rng, 400)
    report = per_class_metrics(y, probs, np.full(15, 0.5), np.arange(400), labels=LABELS,
                               n_boot=300, rng=np.random.default_rng(0))
    for name in LABELS:
        for metric in ("auroc", "auprc"):
            entry = report["per_class"][name][metric]
            assert entry["ci_low"] <= entry["value"] <= entry["ci_high"], (
                f"{name} {metric}: expected {entry['value']:.3f} inside "
                f"[{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]")
            assert entry["n_valid_resamples"] == 300, "every resample should be valid here"
    head = report["headline"]
    assert head["name"] == "mean AUROC over the 14 pathologies", f"headline name: {head['name']}"
    assert head["classes"] == list(PATHOLOGIES), "headline should average the 14 pathologies"
    expected = np.mean([report["per_class"][n]["auroc"]["value"] for n in PATHOLOGIES])
    assert head["value"] == pytest.approx(expected), "headline = mean of the 14 class AUROCs"
    assert head["ci_low"] <= head["value"] <= head["ci_high"], "headline CI should contain it"


def test_bootstrap_draws_patients_and_keeps_their_images_together():
    groups = np.array([7, 7, 7, 3, 3, 9, 1, 1, 1, 1])
    counts, inverse = bootstrap_counts(groups, 500, np.random.default_rng(0))
    assert counts.shape == (500, 4), f"expected one count per distinct patient, got {counts.shape}"
    assert (counts.sum(axis=1) == 4).all(), "each resample should draw as many patients as exist"
    weights = counts[:, inverse]
    for patient in np.unique(groups):
        rows = weights[:, groups == patient]
        assert (rows == rows[:, :1]).all(), f"patient {patient}'s images should share a weight"


def test_duplicating_a_patients_images_does_not_narrow_the_interval():
    """Four images per patient carry no more information than one: the by-patient
    interval stays the same, whereas counting them as independent patients would shrink it."""
    rng = np.random.default_rng(4)
    n = 200
    y, probs = _synthetic(rng, n, n_classes=14)
    labels = list(PATHOLOGIES)

    def width(y, probs, groups):
        report = per_class_metrics(y, probs, np.full(14, 0.5), groups, labels=labels,
                                   n_boot=400, rng=np.random.default_rng(0))
        return report["headline"]["ci_high"] - report["headline"]["ci_low"]

    single = width(y, probs, np.arange(n))
    y4, probs4 = np.repeat(y, 4, axis=0), np.repeat(probs, 4, axis=0)
    same_patient = width(y4, probs4, np.repeat(np.arange(n), 4))
    as_independent = width(y4, probs4, np.arange(4 * n))
    assert same_patient == pytest.approx(single, rel=1e-9), (
        f"expected the same interval width {single:.4f} with duplicated images of the same "
        f"patients, got {same_patient:.4f}")
    assert as_independent < 0.7 * single, (
        f"control: treating copies as independent should shrink the width "
        f"(expected < {0.7 * single:.4f}, got {as_independent:.4f})")


def test_class_without_positives_is_reported_undefined_not_a_crash():
    rng = np.random.default_rng(5)
    y, probs = _synthetic(rng, 120)
    hernia = LABELS.index("Hernia")
    y[:, hernia] = 0
    report = per_class_metrics(y, probs, np.full(15, 0.5), np.arange(120), labels=LABELS,
                               n_boot=50, rng=np.random.default_rng(0))
    entry = report["per_class"]["Hernia"]
    assert entry["auroc"]["value"] is None, "AUROC without positives should be None"
    assert "0 positive" in entry["auroc"]["reason"], f"reason: {entry['auroc']['reason']}"
    assert entry["auprc"]["value"] is None, "AUPRC without positives should be None"
    assert entry["recall"] is None and entry["recall_reason"] == "no positive cases", (
        "recall without positives should be None with a reason")
    assert report["macro"]["auroc"]["classes_left_out"] == ["Hernia"], "macro should name it"
    assert "Hernia" not in report["headline"]["classes"], "headline should leave Hernia out"
    assert "13 of the 14" in report["headline"]["name"], (
        f"headline name should say 13 of 14, got {report['headline']['name']!r}")


def test_rare_class_skips_resamples_without_positives_and_says_how_many():
    y = np.zeros((60, 1), dtype=int)
    y[0, 0] = 1  # one positive patient: about 1/e of resamples miss it
    probs = np.linspace(0.0, 1.0, 60)[:, None]
    report = per_class_metrics(y, probs, np.array([0.5]), np.arange(60), labels=["Hernia"],
                               n_boot=400, rng=np.random.default_rng(0))
    valid = report["per_class"]["Hernia"]["auroc"]["n_valid_resamples"]
    assert 150 < valid < 350, f"expected ~63% of 400 resamples valid, got {valid}"


def test_macro_and_micro_averages():
    y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    probs = np.array([[0.9, 0.2], [0.1, 0.8], [0.7, 0.3], [0.4, 0.6]])
    report = per_class_metrics(y, probs, np.array([0.5, 0.5]), np.arange(4),
                               labels=["Atelectasis", "Mass"], n_boot=20,
                               rng=np.random.default_rng(0))
    # Atelectasis: perfect (AUROC 1); Mass: positives 0.8, 0.3 vs negatives 0.2, 0.6 -> 3/4
    assert report["macro"]["auroc"]["value"] == pytest.approx((1.0 + 0.75) / 2), "macro AUROC"
    pooled = roc_auc_score(y.ravel(), probs.ravel())
    assert report["micro"]["auroc"]["value"] == pytest.approx(pooled), "micro = pooled AUROC"
    # decisions at 0.5: Atelectasis TP2 FP0 FN0; Mass TP1 FP1 FN1 -> pooled TP3 FP1 FN1
    assert report["micro"]["f1"] == pytest.approx(6 / 8), "micro F1 = 2TP/(2TP+FP+FN)"
    assert report["macro"]["f1"]["value"] == pytest.approx((1.0 + 0.5) / 2), "macro F1"


def test_accuracy_is_defined_and_beside_the_always_negative_baseline():
    y = np.array([[1, 0, 0], [0, 0, 0], [0, 1, 0], [0, 0, 0]])
    predicted = np.array([[1, 0, 0], [0, 0, 0], [0, 0, 0], [1, 0, 0]])
    summary = accuracy_summary(y, predicted)
    assert summary["element_wise_accuracy"] == pytest.approx(10 / 12), "10 of 12 decisions right"
    assert summary["element_wise_accuracy_always_negative"] == pytest.approx(10 / 12), (
        "all-negative gets the 10 negative decisions right")
    assert summary["exact_match_accuracy"] == pytest.approx(2 / 4), "images 1 and 2 fully right"
    assert summary["exact_match_accuracy_always_negative"] == pytest.approx(2 / 4), (
        "all-negative is exactly right on the two images without findings")
    assert "decisions" in summary["definitions"]["element_wise_accuracy"], "definition given"


def test_thresholds_maximise_f1_or_youden_on_the_data_given():
    y = np.array([[0], [0], [1], [0], [1], [1]])
    probs = np.array([[0.1], [0.2], [0.3], [0.4], [0.6], [0.7]])
    f1_threshold, notes = choose_thresholds(y, probs, "f1")
    # >= 0.3 -> TP3 FP1: F1 6/7 (best); >= 0.6 -> TP2 FP0 FN1: 4/5
    assert f1_threshold[0] == pytest.approx(0.3), f"max-F1 threshold: got {f1_threshold[0]}"
    youden, _ = choose_thresholds(y, probs, "youden")
    # >= 0.6: J = 2/3 - 0; >= 0.3: J = 1 - 1/3 = 2/3: tie -> the higher threshold
    assert youden[0] == pytest.approx(0.6), f"max-J threshold (ties -> higher): got {youden[0]}"
    assert notes == [], f"no notes expected, got {notes}"


def test_thresholds_fall_back_for_a_class_with_one_label_value():
    y = np.array([[0, 1], [0, 0], [0, 1]])
    probs = np.array([[0.2, 0.9], [0.3, 0.1], [0.4, 0.8]])
    thresholds, notes = choose_thresholds(y, probs, labels=["Hernia", "Mass"])
    assert thresholds[0] == 0.5, f"expected the 0.5 fallback, got {thresholds[0]}"
    assert len(notes) == 1 and notes[0].startswith("Hernia"), f"expected a note, got {notes}"
    assert thresholds[1] == pytest.approx(0.8), f"Mass max-F1 threshold: got {thresholds[1]}"


def test_thresholds_depend_only_on_the_validation_data_passed():
    """The chooser sees the validation arrays and nothing else: changing test data,
    which it never receives, cannot move the thresholds; changing validation data can."""
    rng = np.random.default_rng(6)
    y_val, p_val = _synthetic(rng, 300)
    first, _ = choose_thresholds(y_val, p_val)
    again, _ = choose_thresholds(y_val.copy(), p_val.copy())
    assert np.array_equal(first, again), "same validation data should give the same thresholds"
    moved, _ = choose_thresholds(y_val, p_val ** 2)
    assert not np.allclose(first, moved), "different validation scores should move thresholds"


def test_paired_comparison_of_identical_models_is_zero():
    rng = np.random.default_rng(7)
    y, probs = _synthetic(rng, 150, n_classes=14)
    result = compare_auroc(y, probs, probs, np.arange(150), labels=list(PATHOLOGIES), n_boot=100,
                           rng=np.random.default_rng(0))
    mean = result["mean_auroc_difference"]
    assert mean["value"] == 0.0 and mean["ci_low"] == 0.0 and mean["ci_high"] == 0.0, (
        f"identical models should differ by exactly 0, got {mean}")
    better = compare_auroc(y, probs, rng.random(probs.shape), np.arange(150),
                           labels=list(PATHOLOGIES), n_boot=100, rng=np.random.default_rng(0))
    assert better["mean_auroc_difference"]["ci_low"] > 0.0, (
        "an informative model vs random scores should have a CI of the difference above 0")


def test_a_class_without_validation_signal_is_not_flagged_on_every_image():
    """Max-F1 on a constant or inverted score would flag every image; such classes get 0.5."""
    rng = np.random.default_rng(3)
    y = (rng.random((300, 3)) < 0.2).astype(int)
    probs = np.column_stack([
        np.full(300, 0.05),  # collapsed calibration: one constant probability
        np.where(y[:, 1] == 1, 0.1, 0.6) + rng.random(300) * 0.01,  # inverted ranking
        0.5 * rng.random(300) + 0.3 * y[:, 2],  # real signal
    ])
    thresholds, notes = choose_thresholds(y, probs, labels=["constant", "inverted", "useful"])
    assert thresholds[0] == 0.5 and thresholds[1] == 0.5, (
        f"classes with validation AUROC <= 0.5 should fall back to 0.5, got {thresholds[:2]}")
    assert (probs[:, 0] >= thresholds[0]).sum() == 0, "the constant class must flag no image"
    flagged = int((probs[:, 2] >= thresholds[2]).sum())
    assert 0 < flagged < 300, f"the useful class keeps a max-F1 threshold that flags some images, got {flagged}"
    assert len(notes) == 2 and all("no signal" in note for note in notes), (
        f"each fallback should be explained in a note, got {notes}")
