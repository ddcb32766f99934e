"""The one AUROC of the project: numpy, tie-aware, optionally weighted.

AUROC is the Mann-Whitney statistic: the probability that a positive image scores
above a negative one, a tie counting one half.  With ``sample_weight`` every
(positive, negative) pair counts by the product of their weights, so an integer weight
is the same as repeating the image that many times; that is how a patient bootstrap
(weights = how often a patient was drawn) and a population-weighted report (weights =
population share over sample share) are scored.  It equals scikit-learn's
``roc_auc_score`` with the same ``sample_weight`` (a test checks it), without importing
it.

Training's validation, tuning, cross-validation, evaluation, the threshold choice, the
input-gate and out-of-distribution fits, and through their reports the model card, all
call this module.

Computed from tie groups: images sorted by descending score, equal scores grouped, and
the weighted positives and negatives of each group summed; a positive beats the
negatives of every lower group and ties with those of its own.  The group sums are
public (:func:`tie_groups`, :func:`group_sums`) so that the evaluation's average
precision and its bootstrap reuse one sort for many weightings.
"""

from __future__ import annotations

import numpy as np


def tie_groups(score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(order, starts)``: the descending sort order of ``score`` ``(N,)`` and the start
    index (into the sorted scores) of each of the G runs of equal scores."""
    order = np.argsort(-np.asarray(score, dtype=np.float64), kind="stable")
    ranked = np.asarray(score)[order]
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]]) if ranked.size else np.zeros(0, int)
    return order, starts


def group_sums(
    positive: np.ndarray, starts: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted positives and negatives per tie group: two ``(B, G)`` float64 arrays.

    ``positive`` ``(N,)`` bool and ``weights`` ``(B, N)`` non-negative are already in
    descending score order; ``starts`` are the first indices of the G tie groups.
    Positives are gathered on their own (they are usually few) and the negatives are the
    rest of each group.
    """
    total = np.add.reduceat(weights, starts, axis=1).astype(np.float64)
    pos = np.zeros_like(total)
    columns = np.flatnonzero(positive)
    if columns.size:
        group = np.searchsorted(starts, columns, side="right") - 1
        first = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
        pos[:, group[first]] = np.add.reduceat(weights[:, columns], first, axis=1)
    return pos, total - pos


def auroc_from_sums(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """``(B,)`` AUROC from :func:`group_sums`' ``(B, G)`` sums (ties count one half);
    NaN where a row has no positive or no negative weight."""
    n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
    neg_below = n_neg[:, None] - np.cumsum(neg, axis=1)  # negatives with a strictly lower score
    wins = (pos * (neg_below + 0.5 * neg)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = wins / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), value, np.nan)


def auroc(y_true: np.ndarray, score: np.ndarray, sample_weight: np.ndarray | None = None) -> float:
    """AUROC of ``score`` ``(N,)`` (any monotone score) for ``y_true`` ``(N,)`` in {0, 1},
    each image weighted by ``sample_weight`` ``(N,)`` >= 0 (default 1).

    Ties count one half.  NaN when there is no positive or no negative (weight).
    """
    y_true = np.asarray(y_true).ravel()
    score = np.asarray(score, dtype=np.float64).ravel()
    if y_true.shape != score.shape:
        raise ValueError(f"y_true {y_true.shape} and score {score.shape} must be the same (N,)")
    weights = np.ones(y_true.size) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64).ravel()
    if weights.shape != y_true.shape:
        raise ValueError(f"sample_weight {weights.shape} must be ({y_true.size},)")
    if weights.size and weights.min() < 0:
        raise ValueError("sample_weight must be non-negative")
    if y_true.size == 0:
        return float("nan")
    order, starts = tie_groups(score)
    pos, neg = group_sums(y_true[order].astype(bool), starts, weights[order][None, :])
    return float(auroc_from_sums(pos, neg)[0])


def per_class_auroc(
    y_true: np.ndarray, scores: np.ndarray, sample_weight: np.ndarray | None = None
) -> np.ndarray:
    """``(C,)`` AUROC of each column: ``y_true`` ``(N, C)`` in {0, 1}, ``scores`` ``(N, C)``,
    ``sample_weight`` ``(N,)`` shared by every class; NaN for a class without both a
    positive and a negative image."""
    y_true, scores = np.asarray(y_true), np.asarray(scores)
    if y_true.shape != scores.shape or y_true.ndim != 2:
        raise ValueError(f"y_true {y_true.shape} and scores {scores.shape} must be the same (N, C)")
    return np.array([auroc(y_true[:, c], scores[:, c], sample_weight)
                     for c in range(y_true.shape[1])], dtype=np.float64)


def roc_points(
    y_true: np.ndarray, score: np.ndarray, sample_weight: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The ROC curve whose area :func:`auroc` is: ``(fpr, tpr)``, each ``(G + 1,)`` from
    (0, 0), one point per tie group of ``score`` in descending order (a tie group is a
    straight segment, which is why ties count one half).  Needs a positive and a negative."""
    y_true = np.asarray(y_true).ravel()
    weights = np.ones(y_true.size) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64).ravel()
    order, starts = tie_groups(score)
    pos, neg = group_sums(y_true[order].astype(bool), starts, weights[order][None, :])
    if pos.sum() <= 0 or neg.sum() <= 0:
        raise ValueError("a ROC curve needs a positive and a negative image")
    tpr = np.r_[0.0, np.cumsum(pos[0]) / pos.sum()]
    fpr = np.r_[0.0, np.cumsum(neg[0]) / neg.sum()]
    return fpr, tpr
