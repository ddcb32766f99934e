"""Figures weighted back to a population: what the model would do on its mix of films.

Our held-out films are an enriched sample, so their flags per normal film, PPVs and mean
probabilities describe that sample.  :func:`population_figures` rakes the films to the
population's 15 label prevalences (:mod:`training.metrics.raking`) and reports, with
patient-bootstrap intervals (each resample re-raked from its patient counts):

* AUROC per class and its mean over the 14 pathologies;
* sensitivity and specificity at the operating points;
* PPV and NPV at the population's prevalence;
* flags per normal film, the share of normal films with any flag, and the share of films
  with a pathology that get at least one correct flag;
* mean probability over prevalence per class: 1 when the probabilities are calibrated to
  the population.

The same figures unweighted (the sample's own) are reported beside them by
:func:`sample_figures`, and the raking's effective sample size says how much precision
the weighting costs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from training.metrics.auroc import auroc
from training.metrics.bootstrap import bootstrap_counts, interval
from training.metrics.operating_points import flag_rates, predictive_values
from training.metrics.raking import rake_labels, rakeable
from xray_app.labels import LABELS, PATHOLOGIES
from xray_app.population import Population

__all__ = ["population_figures", "sample_figures", "sample_figures_by_source"]

_FLAG_FIGURES = ("flags_per_normal_film", "normal_films_with_any_flag",
                 "abnormal_films_with_a_correct_flag", "flags_per_film")


def _figures(labels: np.ndarray, probabilities: np.ndarray, flags: np.ndarray,
             weights: np.ndarray, prevalence: np.ndarray) -> dict[str, float]:
    """Flat ``{name: value}`` of every figure for one weighting of the films."""
    rates = flag_rates(flags, labels, weights)
    out = {name: rates[name] for name in _FLAG_FIGURES}
    aurocs = []
    for c, label in enumerate(LABELS):
        per = rates["per_class"][label]
        out[f"{label}/auroc"] = auroc(labels[:, c], probabilities[:, c], weights)
        if label in PATHOLOGIES:
            aurocs.append(out[f"{label}/auroc"])
        out[f"{label}/sensitivity"] = per["sensitivity"]
        out[f"{label}/specificity"] = per["specificity"]
        out[f"{label}/ppv"], out[f"{label}/npv"] = predictive_values(
            per["sensitivity"], per["specificity"], float(prevalence[c]))
        mean_p = float(np.average(probabilities[:, c], weights=weights))
        out[f"{label}/mean_probability"] = mean_p
        out[f"{label}/probability_ratio"] = mean_p / float(prevalence[c])
    out["mean_auroc"] = float(np.nanmean(aurocs)) if np.isfinite(aurocs).any() else float("nan")
    ratios = [out[f"{label}/probability_ratio"] for label in PATHOLOGIES]
    out["median_probability_ratio"] = float(np.median(ratios))
    return out


def _nest(point: dict[str, float], boot: dict[str, np.ndarray], prevalence: np.ndarray) -> dict[str, Any]:
    """``{"per_class": {label: {figure: interval}}, figure: interval, ...}``."""
    per_class: dict[str, dict[str, Any]] = {label: {"prevalence": float(prevalence[c])}
                                            for c, label in enumerate(LABELS)}
    result: dict[str, Any] = {"per_class": per_class}
    for name, value in point.items():
        entry = interval(value if np.isfinite(value) else None, boot[name])
        entry = {k: entry[k] for k in ("value", "ci_low", "ci_high")}
        if "/" in name:
            label, figure = name.split("/")
            per_class[label][figure] = entry
        else:
            result[name] = entry
    return result


def _bootstrap(labels, probabilities, flags, groups, prevalence, n_boot, seed, rerake):
    counts, inverse = bootstrap_counts(groups, n_boot, np.random.default_rng(seed))
    draws: dict[str, list[float]] = {}
    for row in counts:
        weights = row[inverse].astype(np.float64)
        if rerake:
            weights = rake_labels(labels, prevalence, LABELS, weights).weights
        for name, value in _figures(labels, probabilities, flags, weights, prevalence).items():
            draws.setdefault(name, []).append(value)
    return {name: np.asarray(values) for name, values in draws.items()}


def population_figures(labels: np.ndarray, probabilities: np.ndarray, flags: np.ndarray,
                       groups: np.ndarray, population: Population, *,
                       n_boot: int = 300, seed: int = 0) -> dict[str, Any]:
    """Every figure weighted to ``population`` by raking over the 15 labels.

    ``labels`` ``(N, 15)`` 0/1; ``probabilities`` ``(N, 15)`` on the population's scale;
    ``flags`` ``(N, 15)`` bool (e.g. cross-fitted); ``groups`` ``(N,)`` patient ids.
    """
    labels = np.asarray(labels) > 0
    prevalence = population.as_array()
    raked = rake_labels(labels, prevalence, LABELS)
    point = _figures(labels, probabilities, flags, raked.weights, prevalence)
    boot = _bootstrap(labels, probabilities, flags, groups, prevalence, n_boot, seed, rerake=True)
    return {
        "population": population.name,
        "weighting": {
            "method": "raking (iterative proportional fitting) over the 15 labels' prevalences",
            "n_images": int(labels.shape[0]),
            "effective_sample_size": raked.effective_size,
            "labels_not_raked": [label for label, k in zip(LABELS, rakeable(labels), strict=True)
                                 if not k],
            "converged": raked.converged,
            "max_error": raked.max_error,
        },
        **_nest(point, boot, prevalence),
    }


def sample_figures(labels: np.ndarray, probabilities: np.ndarray, flags: np.ndarray,
                   groups: np.ndarray, *, n_boot: int = 300, seed: int = 0) -> dict[str, Any]:
    """The same figures on the films as they are (PPV/NPV and probability ratios at the
    sample's own prevalence)."""
    labels = np.asarray(labels) > 0
    prevalence = np.clip(labels.mean(axis=0), 1e-9, 1 - 1e-9)
    point = _figures(labels, probabilities, flags, np.ones(len(labels)), prevalence)
    boot = _bootstrap(labels, probabilities, flags, groups, prevalence, n_boot, seed, rerake=False)
    return {"population": "the films themselves (unweighted)",
            "n_images": int(labels.shape[0]), **_nest(point, boot, prevalence)}


def sample_figures_by_source(sources: Any, labels: np.ndarray, probabilities: np.ndarray,
                             flags: np.ndarray, groups: np.ndarray, *, n_boot: int = 300,
                             seed: int = 0) -> dict[str, dict[str, Any]]:
    """:func:`sample_figures` on the films of each source folder apart, by folder name
    (sorted); ``sources`` names each film's folder, None for a film in none of them (left
    out).  Folders picked differently flag differently: this reports them apart."""
    names = np.asarray(sources, dtype=object)
    labels, probabilities = np.asarray(labels), np.asarray(probabilities)
    flags, groups = np.asarray(flags), np.asarray(groups)
    out = {}
    for name in sorted({n for n in names.tolist() if n is not None}):
        rows = np.flatnonzero(names == name)
        out[name] = sample_figures(labels[rows], probabilities[rows], flags[rows], groups[rows],
                                   n_boot=n_boot, seed=seed)
    return out
