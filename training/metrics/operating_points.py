"""Operating points chosen for a clinician: thresholds at a stated rate of false flags.

A flag is a claim a clinician may act on, so the threshold of each finding is set by what
its flags cost on films that do not have it, never by F1 on an enriched sample (which
rewards flagging often when a finding is common in the sample).  Two rules:

``false-flags`` (the default, budget ``B``)
    Each of the 14 pathologies gets the threshold at which ``B / 14`` of No-Finding films
    are flagged with it: specificity ``1 - B / 14`` on normal films.  Summed over the
    pathologies a normal film then carries at most ``B`` false flags on average, and at
    most a share ``B`` of normal films carries any (fewer, since flags coincide).
``specificity`` (``S``)
    Each pathology gets the threshold with specificity ``S`` among films without it.

"No Finding" gets the threshold with specificity ``no_finding_specificity`` among films
with a pathology (how rarely an abnormal film is called normal), and is flagged only when
no pathology is (:func:`xray_app.flags.flag_findings`).

Thresholds are chosen on held-out (out-of-fold) calibrated probabilities, never on the
test split.  Rates measured on the very films a threshold was chosen on flatter it, so
:func:`cross_fitted_flags` chooses on the other folds and flags each fold with those: the
rates reported with the thresholds come from those flags.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from xray_app.flags import flag_findings
from xray_app.labels import LABELS, NO_FINDING_INDEX, PATHOLOGIES
from xray_app.population import logit, sigmoid

__all__ = [
    "RULE_KINDS",
    "OperatingRule",
    "OperatingPointError",
    "choose_thresholds",
    "cross_fitted_flags",
    "flag_rates",
    "predictive_values",
    "threshold_at_specificity",
]

RULE_KINDS = ("false-flags", "specificity")


class OperatingPointError(ValueError):
    """A rule or data from which no operating point can be chosen."""


@dataclass(frozen=True)
class OperatingRule:
    """How the thresholds are chosen (see the module docstring)."""

    kind: str = "false-flags"
    target: float = 0.40
    no_finding_specificity: float = 0.95

    def __post_init__(self) -> None:
        if self.kind not in RULE_KINDS:
            raise OperatingPointError(f"operating rule must be one of {RULE_KINDS}, not {self.kind!r}")
        if self.kind == "false-flags" and not 0.0 < self.target < len(PATHOLOGIES):
            raise OperatingPointError(
                f"a false-flag budget must lie in (0, {len(PATHOLOGIES)}) flags per normal film"
            )
        if self.kind == "specificity" and not 0.0 < self.target < 1.0:
            raise OperatingPointError("a specificity must lie in (0, 1)")
        if not 0.0 < self.no_finding_specificity < 1.0:
            raise OperatingPointError("the No-Finding specificity must lie in (0, 1)")

    @property
    def pathology_specificity(self) -> float:
        """The specificity each pathology's threshold is set to (on the rule's negatives)."""
        if self.kind == "false-flags":
            return 1.0 - self.target / len(PATHOLOGIES)
        return self.target

    def describe(self) -> str:
        """One sentence for people: how the thresholds were set."""
        spec = f"{100 * self.pathology_specificity:.1f}%"
        nf = f"{100 * self.no_finding_specificity:.0f}%"
        if self.kind == "false-flags":
            pathologies = (
                f"each of the 14 pathologies at {spec} specificity on No-Finding films, so a "
                f"normal film carries at most {self.target:g} false flags on average"
            )
        else:
            pathologies = f"each of the 14 pathologies at {spec} specificity on films without it"
        return (f"{pathologies}; No Finding at {nf} specificity on films with a pathology, "
                "and never flagged beside one")

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.kind, "target": self.target,
                "pathology_specificity": self.pathology_specificity,
                "no_finding_specificity": self.no_finding_specificity,
                "description": self.describe()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OperatingRule:
        return cls(str(data["method"]), float(data["target"]), float(data["no_finding_specificity"]))


def threshold_at_specificity(negative_probabilities: np.ndarray, specificity: float) -> float:
    """The threshold ``t`` at which at least ``specificity`` of these negatives lie below
    ``t`` (flag: ``p >= t``), placed halfway in log-odds between the highest negative left
    below it and the next one up, so it does not sit on a film's own score.

    ``negative_probabilities`` ``(M,)`` in (0, 1), ``M >= 1``.
    """
    p = np.sort(np.clip(np.asarray(negative_probabilities, dtype=np.float64), 1e-12, 1 - 1e-12))
    if p.size == 0:
        raise OperatingPointError("no negative films to set a specificity on")
    allowed = math.floor((1.0 - specificity) * p.size + 1e-9)  # false flags permitted
    below = p.size - allowed  # films that must stay below t; the top `allowed` may be flagged
    z = logit(p)
    highest_below = z[below - 1] if below >= 1 else -np.inf
    if allowed == 0:
        return float(sigmoid(highest_below + 1e-6))
    lowest_flagged = z[below]
    if lowest_flagged <= highest_below:  # a tie across the cut: keep the tied films below
        return float(sigmoid(np.nextafter(highest_below, np.inf)))
    if not np.isfinite(highest_below):
        return float(sigmoid(lowest_flagged - 1e-6))
    return float(sigmoid(0.5 * (highest_below + lowest_flagged)))


def _negatives(labels: np.ndarray, rule: OperatingRule, c: int) -> np.ndarray:
    """``(N,)`` bool: the films whose scores class ``c``'s threshold is set on."""
    any_pathology = np.delete(labels, NO_FINDING_INDEX, axis=1).any(axis=1)
    if c == NO_FINDING_INDEX:
        return any_pathology
    if rule.kind == "false-flags":
        return labels[:, NO_FINDING_INDEX] > 0
    return labels[:, c] == 0


def choose_thresholds(probabilities: np.ndarray, labels: np.ndarray, rule: OperatingRule) -> np.ndarray:
    """``(15,)`` thresholds from ``(N, 15)`` held-out calibrated probabilities and their
    ``(N, 15)`` 0/1 labels, by ``rule``."""
    probabilities, labels = _checked(probabilities, labels)
    thresholds = np.empty(len(LABELS))
    for c in range(len(LABELS)):
        negatives = _negatives(labels, rule, c)
        if not negatives.any():
            raise OperatingPointError(f"{LABELS[c]}: no films to set its specificity on")
        specificity = (rule.no_finding_specificity if c == NO_FINDING_INDEX
                       else rule.pathology_specificity)
        thresholds[c] = threshold_at_specificity(probabilities[negatives, c], specificity)
    return thresholds


def cross_fitted_flags(probabilities: np.ndarray, labels: np.ndarray, folds: np.ndarray,
                       rule: OperatingRule) -> np.ndarray:
    """``(N, 15)`` bool flags where each fold's films are flagged with thresholds chosen on
    the other folds' films (``folds`` ``(N,)`` ints, at least two distinct values)."""
    probabilities, labels = _checked(probabilities, labels)
    folds = np.asarray(folds)
    if folds.shape != (probabilities.shape[0],) or np.unique(folds).size < 2:
        raise OperatingPointError("cross-fitting needs a fold for every film and at least two folds")
    flags = np.zeros(probabilities.shape, dtype=bool)
    for fold in np.unique(folds):
        inside = folds == fold
        thresholds = choose_thresholds(probabilities[~inside], labels[~inside], rule)
        flags[inside] = flag_findings(probabilities[inside], thresholds)
    return flags


def _weighted_mean(values: np.ndarray, weights: np.ndarray, where: np.ndarray) -> float:
    total = weights[where].sum()
    return float((values[where] * weights[where]).sum() / total) if total > 0 else float("nan")


def flag_rates(flags: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> dict[str, Any]:
    """What flags did on labelled films, optionally weighted (e.g. raked to a population).

    ``flags`` and ``labels`` ``(N, 15)``; ``weights`` ``(N,)`` non-negative or None.
    Per class: ``sensitivity`` (share of films with it that are flagged with it),
    ``specificity`` (films without it, not flagged with it) and ``normal_specificity``
    (No-Finding films not flagged with it; for No Finding: films with a pathology not
    called normal).  Overall: ``flags_per_normal_film`` (pathology flags on No-Finding
    films, mean), ``normal_films_with_any_flag``, ``abnormal_films_with_a_correct_flag``
    (films with a pathology where at least one of theirs is flagged) and
    ``flags_per_film``.
    """
    flags = np.asarray(flags, dtype=bool)
    labels = np.asarray(labels) > 0
    w = np.ones(len(flags)) if weights is None else np.asarray(weights, dtype=np.float64)
    normal = labels[:, NO_FINDING_INDEX]
    abnormal = np.delete(labels, NO_FINDING_INDEX, axis=1).any(axis=1)
    pathology_flags = np.delete(flags, NO_FINDING_INDEX, axis=1)
    pathology_labels = np.delete(labels, NO_FINDING_INDEX, axis=1)
    per_class = {}
    for c, label in enumerate(LABELS):
        rule_negatives = abnormal if c == NO_FINDING_INDEX else normal
        per_class[label] = {
            "sensitivity": _weighted_mean(flags[:, c], w, labels[:, c]),
            "specificity": _weighted_mean(~flags[:, c], w, ~labels[:, c]),
            "normal_specificity": _weighted_mean(~flags[:, c], w, rule_negatives),
            "flag_rate": _weighted_mean(flags[:, c], w, np.ones(len(w), dtype=bool)),
        }
    everyone = np.ones(len(w), dtype=bool)
    return {
        "per_class": per_class,
        "flags_per_normal_film": _weighted_mean(pathology_flags.sum(axis=1), w, normal),
        "normal_films_with_any_flag": _weighted_mean(pathology_flags.any(axis=1), w, normal),
        "abnormal_films_with_a_correct_flag": _weighted_mean(
            (pathology_flags & pathology_labels).any(axis=1), w, abnormal),
        "flags_per_film": _weighted_mean(pathology_flags.sum(axis=1), w, everyone),
        "labels_per_film": _weighted_mean(pathology_labels.sum(axis=1), w, everyone),
    }


def predictive_values(sensitivity: float, specificity: float, prevalence: float) -> tuple[float, float]:
    """``(PPV, NPV)`` of a flag with these rates where the finding has this prevalence."""
    tp = sensitivity * prevalence
    fp = (1.0 - specificity) * (1.0 - prevalence)
    tn = specificity * (1.0 - prevalence)
    fn = (1.0 - sensitivity) * prevalence
    ppv = tp / (tp + fp) if tp + fp > 0 else float("nan")
    npv = tn / (tn + fn) if tn + fn > 0 else float("nan")
    return ppv, npv


def _checked(probabilities: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels)
    if probabilities.ndim != 2 or probabilities.shape[1] != len(LABELS) or labels.shape != probabilities.shape:
        raise OperatingPointError(
            f"need (N, {len(LABELS)}) probabilities and labels, got {probabilities.shape} and {labels.shape}"
        )
    return probabilities, labels > 0
