"""Population-weighted figures: raked to a population's label mix, with the sample's beside."""

from __future__ import annotations

import numpy as np
import pytest

from training.metrics.population_figures import population_figures, sample_figures
from xray_app.flags import flag_findings
from xray_app.labels import LABELS, NO_FINDING_INDEX
from xray_app.population import Population


def _films(n: int = 500, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, len(LABELS))) < 0.2).astype(int)
    labels[rng.random(n) < 0.3] = 0
    labels[:, NO_FINDING_INDEX] = ~labels[:, :NO_FINDING_INDEX].any(axis=1)
    probabilities = np.clip(0.2 + 0.4 * labels + rng.normal(0, 0.1, labels.shape), 0.01, 0.99)
    return labels, probabilities, flag_findings(probabilities, np.full(len(LABELS), 0.5)), np.arange(n) // 2


def test_population_equal_to_the_sample_changes_nothing():
    labels, p, flags, groups = _films()
    own = Population("the sample", tuple(labels.mean(axis=0)))
    weighted = population_figures(labels, p, flags, groups, own, n_boot=20)
    plain = sample_figures(labels, p, flags, groups, n_boot=20)
    assert weighted["weighting"]["effective_sample_size"] == pytest.approx(len(labels)), \
        "no reweighting is needed, so no precision is lost"
    for figure in ("flags_per_normal_film", "mean_auroc"):
        assert weighted[figure]["value"] == pytest.approx(plain[figure]["value"]), figure


def test_weighted_mean_probability_matches_a_calibrated_population():
    """Probabilities equal to the population's prevalence on average give ratio 1."""
    labels, _, flags, groups = _films()
    prevalence = np.full(len(LABELS), 0.05)
    prevalence[NO_FINDING_INDEX] = 0.5
    population = Population("somewhere", tuple(prevalence))
    p = np.where(labels > 0, 0.9, 0.1)  # not calibrated: ratio must say so
    figures = population_figures(labels, p, flags, groups, population, n_boot=10)
    ratio = figures["per_class"]["Effusion"]["probability_ratio"]["value"]
    expected = (0.9 * 0.05 + 0.1 * 0.95) / 0.05
    assert ratio == pytest.approx(expected, rel=1e-6), "weighted mean p / prevalence"
    assert figures["weighting"]["effective_sample_size"] < len(labels), "weighting costs precision"
    low, high = figures["flags_per_normal_film"]["ci_low"], figures["flags_per_normal_film"]["ci_high"]
    assert low <= figures["flags_per_normal_film"]["value"] <= high, "the point lies in its interval"


def test_nih_population_comes_from_every_film_of_the_metadata(shared_data):
    from training.data.prevalence import population_from_metadata

    population = population_from_metadata(shared_data / "nih" / "Data_Entry_2017_v2020.csv.gz")
    assert "112,120" in population.name, f"the population names its size: {population.name}"
    shares = dict(zip(population.labels, population.prevalence, strict=True))
    assert 0.53 < shares["No Finding"] < 0.54 and 0.012 < shares["Pneumonia"] < 0.013, \
        "NIH's published label shares: No Finding 53.8%, Pneumonia 1.3%"
