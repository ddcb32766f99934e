"""Prior-shift correction: probabilities moved from the calibration sample to a population."""

from __future__ import annotations

import json

import numpy as np
import pytest

from xray_app.labels import LABELS
from xray_app.population import (
    Population,
    PopulationError,
    PriorShift,
    logit,
    move_thresholds,
    read_population,
    sigmoid,
)


def _population(name: str, value: float) -> Population:
    return Population(name, (value,) * len(LABELS))


def test_offset_is_the_difference_of_prior_log_odds():
    shift = PriorShift(_population("nih", 0.05), _population("sample", 0.25))
    expected = np.log(0.05 / 0.95) - np.log(0.25 / 0.75)
    assert np.allclose(shift.offsets(), expected), "offset must be logit(pop) - logit(sample)"


def test_bayes_rule_on_a_two_class_mixture():
    """A calibrated probability on a sample with prevalence 0.5, moved to prevalence 0.1,
    equals the exact posterior computed from the class-conditional densities."""
    likelihood_ratio = np.array([0.2, 1.0, 3.0, 9.0])  # p(x|y=1) / p(x|y=0) of four films
    p_sample = likelihood_ratio * 0.5 / (likelihood_ratio * 0.5 + 0.5)
    p_population = likelihood_ratio * 0.1 / (likelihood_ratio * 0.1 + 0.9)
    offset = logit(0.1) - logit(0.5)
    assert np.allclose(sigmoid(logit(p_sample) + offset), p_population), \
        "prior shift must reproduce Bayes' rule under label shift"


def test_moved_threshold_keeps_the_same_films_flagged():
    rng = np.random.default_rng(0)
    p = rng.uniform(0.01, 0.99, size=(200, len(LABELS)))
    thresholds = rng.uniform(0.1, 0.9, size=len(LABELS))
    offsets = PriorShift(_population("pop", 0.02), _population("sample", 0.3)).offsets()
    moved_p = sigmoid(logit(p) + offsets)
    assert np.array_equal(moved_p >= move_thresholds(thresholds, offsets), p >= thresholds), \
        "a shifted threshold must flag exactly the films the original flagged"


def test_round_trip_through_config_dict():
    shift = PriorShift(_population("nih", 0.05), _population("sample", 0.25))
    again = PriorShift.from_dict(json.loads(json.dumps(shift.to_dict())))
    assert again == shift, "config.json's population record must read back unchanged"


@pytest.mark.parametrize("value", [0.0, 1.0, -0.1, float("nan")])
def test_prevalence_outside_the_open_unit_interval_is_refused(value):
    with pytest.raises(PopulationError, match="strictly between 0 and 1"):
        _population("bad", value)


def test_missing_label_is_named(tmp_path):
    table = {label: 0.1 for label in LABELS[:-1]}
    path = tmp_path / "hospital.json"
    path.write_text(json.dumps({"name": "hospital", "prevalence": table}))
    with pytest.raises(PopulationError, match="No Finding"):
        read_population(path)


def test_record_without_sample_is_refused():
    with pytest.raises(PopulationError, match="sample"):
        PriorShift.from_dict(_population("nih", 0.1).to_dict())
