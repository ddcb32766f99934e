"""The feature-distance check: mean and Ledoit-Wolf-shrunk whitening of training
features, the Mahalanobis distance through the app's own function, its warn / refuse
levels and how well it separates radiographs from other images."""

from __future__ import annotations

import numpy as np
import torch

from training.metrics.auroc import auroc
from xray_app.ood import BASIS_KEY, COEF_KEY, MEAN_KEY, OUTSIDE_KEY, mahalanobis_score

WARN_QUANTILE = 0.99
REFUSE_FACTOR = 2.0


def fit_feature_stats(features: np.ndarray) -> dict[str, torch.Tensor]:
    """Mean and compact whitening matrix of ``(N, D)`` training features (N >= 2).

    The covariance is Ledoit-Wolf-shrunk towards a scaled identity,
    ``S = (1 - delta) C + delta mu I`` (``C`` the empirical covariance, ``mu = tr(C) / D``,
    ``delta`` from :func:`sklearn.covariance.ledoit_wolf_shrinkage`), which keeps it
    invertible when N < D (2048) and stabilises the small eigenvalues.

    ``W = S^(-1/2)`` (symmetric, ``W W^T = S^-1``) is returned in its exact compact form
    ``W = outside I + basis^T diag(coef) basis``: float32 tensors ``{"mean": (D,),
    "basis": (k, D), "coef": (k,), "outside": (1,)}`` with ``k = min(N, D)``.  ``basis``
    holds ``S``'s eigenvectors (orthonormal rows) with shrunk eigenvalues ``s``, ``coef =
    1 / sqrt(s) - outside``, and ``outside = 1 / sqrt(delta mu)`` is ``W`` on the
    complement of the data's span.  When N < D only a thin SVD of the N x D data is
    needed; when N >= D the basis is all D eigenvectors (the complement is empty).  The
    arithmetic is float64; only the result is rounded.
    """
    from sklearn.covariance import ledoit_wolf_shrinkage

    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"need (N >= 2, D) features, got shape {features.shape}")
    n, d = features.shape
    mean = features.mean(axis=0)
    centred = features - mean
    delta = float(ledoit_wolf_shrinkage(centred, assume_centered=True))
    if n < d:
        _, singular, basis = np.linalg.svd(centred, full_matrices=False)  # basis (N, D)
        eigenvalues = singular**2 / n
    else:
        eigenvalues, vectors = np.linalg.eigh(centred.T @ centred / n)
        basis = vectors.T
    floor_value = delta * float((centred**2).sum()) / (n * d)  # delta * mu
    shrunk = (1.0 - delta) * eigenvalues + floor_value
    if floor_value <= 0 and (basis.shape[0] < d or shrunk.min() <= 0):
        raise ValueError("the feature covariance is singular (constant features?)")
    shrunk = np.maximum(shrunk, shrunk.max() * 1e-12)
    outside = 1.0 / np.sqrt(floor_value) if floor_value > 0 else 0.0
    coef = 1.0 / np.sqrt(shrunk) - outside
    return {
        MEAN_KEY: torch.from_numpy(mean.astype(np.float32)),
        BASIS_KEY: torch.from_numpy(np.ascontiguousarray(basis, dtype=np.float32)),
        COEF_KEY: torch.from_numpy(coef.astype(np.float32)),
        OUTSIDE_KEY: torch.tensor([outside], dtype=torch.float32),
    }


def ood_score(features: np.ndarray, stats: dict[str, torch.Tensor]) -> np.ndarray:
    """``(N, D)`` features -> ``(N,)`` Mahalanobis distances (the app's function)."""
    scores = mahalanobis_score(
        torch.as_tensor(np.asarray(features, dtype=np.float32)),
        stats[MEAN_KEY], stats[BASIS_KEY], stats[COEF_KEY], stats[OUTSIDE_KEY],
    )
    return scores.numpy()


def choose_levels(
    val_scores: np.ndarray,
    *,
    warn_quantile: float = WARN_QUANTILE,
    refuse_factor: float = REFUSE_FACTOR,
) -> tuple[float, float]:
    """``(warn, refuse)`` from the scores of held-out (validation) radiographs.

    ``warn`` = the ``warn_quantile`` quantile (1 % of genuine radiographs warned);
    ``refuse`` = ``median + refuse_factor * (warn - median)``: far beyond anything seen
    among genuine radiographs, so a refusal is very unlikely to hit a real chest film.
    """
    scores = np.asarray(val_scores, dtype=np.float64).ravel()
    if scores.size == 0 or not np.isfinite(scores).all():
        raise ValueError("need at least one finite validation score to choose levels")
    if refuse_factor < 1:
        raise ValueError(f"refuse_factor must be >= 1, got {refuse_factor}")
    median = float(np.median(scores))
    warn = float(np.quantile(scores, warn_quantile))
    return warn, median + refuse_factor * (warn - median)


def separation_auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """AUROC of the score for out-of-distribution (positive) vs radiographs (negative)."""
    y = np.r_[np.zeros(len(in_scores)), np.ones(len(out_scores))]
    return auroc(y, np.r_[in_scores, out_scores])
