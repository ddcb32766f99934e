"""Raking (iterative proportional fitting): weights that move a sample to a population.

Our labelled films are an enriched sample: about a quarter Pneumonia against 1.3% of all
NIH films, and a quarter No Finding against 54%.  A figure averaged over them (a mean
probability, flags per normal film, a PPV) describes that sample, not any population.
Raking gives each film a weight so that the weighted share of every margin equals the
population's (Deming and Stephan, Ann. Math. Stat. 1940; the survey statistician's
"raking ratio" estimator): for each margin in turn the weights of each category are
scaled to hit its target share, and the cycle repeats until every margin is met.

A margin is a categorical variable with a target share per category: each of the 15
labels (present / absent), and optionally e.g. view position within a label.  Weights are
normalised to mean 1, so their sum is the sample size.  The price is variance, reported
as Kish's effective sample size ``(sum w)^2 / sum w^2``: a weighted figure over N films
is about as precise as an unweighted one over that many.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Margin",
    "RakingError",
    "RakingResult",
    "effective_sample_size",
    "label_margins",
    "rake",
    "rake_labels",
    "rakeable",
]


class RakingError(ValueError):
    """Margins that no weighting of this sample can meet."""


@dataclass(frozen=True)
class Margin:
    """One categorical margin: ``codes`` ``(N,)`` ints in ``[0, K)`` and ``target`` ``(K,)``
    shares summing to 1 (a category with target 0 gets weight 0)."""

    name: str
    codes: np.ndarray
    target: np.ndarray

    def __post_init__(self) -> None:
        codes = np.asarray(self.codes)
        target = np.asarray(self.target, dtype=np.float64)
        if codes.ndim != 1 or not np.issubdtype(codes.dtype, np.integer):
            raise RakingError(f"margin {self.name!r}: codes must be a 1-d integer array")
        if target.ndim != 1 or np.any(target < 0) or not np.isclose(target.sum(), 1.0):
            raise RakingError(f"margin {self.name!r}: target shares must be >= 0 and sum to 1")
        if codes.size and (codes.min() < 0 or codes.max() >= target.size):
            raise RakingError(f"margin {self.name!r}: codes outside [0, {target.size})")
        empty = [k for k in range(target.size) if target[k] > 0 and not np.any(codes == k)]
        if empty:
            raise RakingError(
                f"margin {self.name!r}: categories {empty} have a target share but no film "
                "in the sample, so no weighting can reach it"
            )


@dataclass(frozen=True)
class RakingResult:
    """``weights`` ``(N,)`` float64, mean 1; ``max_error`` the largest gap between a
    weighted share and its target after the last cycle."""

    weights: np.ndarray
    iterations: int
    converged: bool
    max_error: float

    @property
    def effective_size(self) -> float:
        return effective_sample_size(self.weights)


def effective_sample_size(weights: np.ndarray) -> float:
    """Kish's effective sample size ``(sum w)^2 / sum w^2`` (N for equal weights)."""
    w = np.asarray(weights, dtype=np.float64)
    return float(w.sum() ** 2 / np.square(w).sum())


def label_margins(labels: np.ndarray, prevalence: Sequence[float],
                  names: Sequence[str]) -> list[Margin]:
    """One present/absent margin per label column: ``labels`` ``(N, C)`` in {0, 1},
    ``prevalence`` ``(C,)`` the population's share of films with each label."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.shape[1] != len(prevalence) or len(names) != len(prevalence):
        raise RakingError(
            f"labels {labels.shape} do not match {len(prevalence)} prevalences / {len(names)} names"
        )
    return [
        Margin(name, (labels[:, c] > 0).astype(np.int64), np.array([1.0 - p, p]))
        for c, (name, p) in enumerate(zip(names, prevalence, strict=True))
    ]


def _shares(weights: np.ndarray, margin: Margin) -> np.ndarray:
    sums = np.bincount(margin.codes, weights=weights, minlength=margin.target.size)
    return sums / weights.sum()


def _errors(weights: np.ndarray, margins: Sequence[Margin]) -> float:
    return max(float(np.abs(_shares(weights, m) - m.target).max()) for m in margins)


def rake(margins: Sequence[Margin], base_weights: np.ndarray | None = None, *,
         tolerance: float = 1e-8, max_iterations: int = 2000) -> RakingResult:
    """Weights (mean 1) whose weighted shares meet every margin's target.

    ``base_weights`` ``(N,)`` (default equal) are the design weights raking starts from.
    Stops when no share is off by more than ``tolerance`` or after ``max_iterations``
    cycles (``converged`` False then: margins that contradict each other in this sample,
    e.g. a category combination the population needs and the sample lacks).
    """
    if not margins:
        raise RakingError("raking needs at least one margin")
    n = margins[0].codes.size
    if any(m.codes.size != n for m in margins):
        raise RakingError("every margin must code the same films")
    weights = np.ones(n) if base_weights is None else np.asarray(base_weights, dtype=np.float64).copy()
    if weights.shape != (n,) or np.any(weights < 0) or weights.sum() <= 0:
        raise RakingError("base weights must be (N,) non-negative with a positive sum")
    error = _errors(weights, margins)
    iteration = 0
    while error > tolerance and iteration < max_iterations:
        for margin in margins:
            shares = _shares(weights, margin)
            factor = np.divide(margin.target, shares, out=np.zeros_like(shares), where=shares > 0)
            weights = weights * factor[margin.codes]
        iteration += 1
        error = _errors(weights, margins)
    weights = weights * (n / weights.sum())
    return RakingResult(weights, iteration, error <= tolerance, error)


def rakeable(labels: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """``(C,)`` bool: labels with positive and negative films (of positive weight), the only
    ones whose share raking can move."""
    labels = np.asarray(labels) > 0
    present = labels if weights is None else labels[np.asarray(weights) > 0]
    return present.any(axis=0) & (~present).any(axis=0)


def rake_labels(labels: np.ndarray, prevalence: np.ndarray, names: Sequence[str],
                base_weights: np.ndarray | None = None,
                extra: Sequence[Margin] = ()) -> RakingResult:
    """Raking over every label the (weighted) films can be raked on, plus ``extra``
    margins; with nothing to rake on, the films keep their base weights (mean 1)."""
    keep = rakeable(labels, base_weights)
    margins = [*label_margins(np.asarray(labels)[:, keep], np.asarray(prevalence)[keep],
                              [name for name, k in zip(names, keep, strict=True) if k]), *extra]
    if not margins:
        weights = np.ones(len(labels)) if base_weights is None else np.asarray(base_weights, dtype=np.float64)
        return RakingResult(weights * len(weights) / weights.sum(), 0, True, 0.0)
    return rake(margins, base_weights)
