"""The view head: multinomial logistic regression on the gate's inputs, its view scores
through the app's own code, out-of-fold scores over grouped folds, and the warn / refuse
levels chosen from them."""

from __future__ import annotations

import numpy as np
import torch

from training.gating.features import FeatureSet
from training.gating.items import CLASSES
from xray_app.gate import BIAS_KEY, MEAN_KEY, SCALE_KEY, WEIGHT_KEY, ViewGate

NIH_WARN_QUANTILE = 0.98
OTHER_FRONTAL_WARN_QUANTILE = 0.90
LEVEL_RULE = (
    f"warn = max({NIH_WARN_QUANTILE:.0%} quantile of the NIH frontal films' out-of-fold view "
    f"scores, {OTHER_FRONTAL_WARN_QUANTILE:.0%} quantile of the other hospitals' frontal "
    "films' out-of-fold view scores); refuse = max(warn, highest out-of-fold view score of "
    "any fit frontal film): grouped K-fold over the fit set, held-out images never used"
)


def fit_head(features: np.ndarray, labels: np.ndarray, c: float, seed: int) -> dict[str, torch.Tensor]:
    """Standardisation + multinomial logistic regression -> the ``ood.view.*`` tensors.

    ``features`` ``(N, F)``, ``labels`` ``(N,)`` indices into
    :data:`~training.gating.items.CLASSES`; classes are balanced (each class weighs the
    same in the loss, however many images it has).
    """
    from sklearn.linear_model import LogisticRegression

    mean = features.mean(axis=0)
    scale = features.std(axis=0)
    scale = np.where(scale > 1e-6, scale, 1.0)
    model = LogisticRegression(C=c, class_weight="balanced", max_iter=2000, random_state=seed)
    model.fit((features - mean) / scale, labels)
    weight = np.zeros((len(CLASSES), features.shape[1]), np.float32)
    bias = np.full(len(CLASSES), -30.0, np.float32)  # a class absent from the fit: never chosen
    weight[model.classes_] = model.coef_
    bias[model.classes_] = model.intercept_
    return {
        MEAN_KEY: torch.from_numpy(mean.astype(np.float32)),
        SCALE_KEY: torch.from_numpy(scale.astype(np.float32)),
        WEIGHT_KEY: torch.from_numpy(weight),
        BIAS_KEY: torch.from_numpy(bias),
    }


def view_scores(tensors: dict[str, torch.Tensor], features: np.ndarray) -> np.ndarray:
    """``(N,)`` view scores ``1 - p(frontal)`` with the app's own code."""
    gate = ViewGate(CLASSES, tensors[MEAN_KEY], tensors[SCALE_KEY], tensors[WEIGHT_KEY],
                    tensors[BIAS_KEY], warn=1.0, refuse=1.0)
    return 1.0 - gate.probabilities(torch.from_numpy(features))[:, 0].numpy()


def out_of_fold_scores(data: FeatureSet, *, folds: int, c: float, seed: int) -> np.ndarray:
    """``(N,)`` view score of every image of ``data`` from a head fitted without its group
    (grouped K-fold, ``folds`` folds shuffled with ``seed``; heads as :func:`fit_head`)."""
    from sklearn.model_selection import GroupKFold

    scores = np.full(len(data.kinds), np.nan)
    splitter = GroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train, test in splitter.split(data.features, data.labels, np.array(data.groups)):
        tensors = fit_head(data.features[train], data.labels[train], c, seed)
        scores[test] = view_scores(tensors, data.features[test])
    return scores


def choose_levels(nih_scores: np.ndarray, other_frontal_scores: np.ndarray) -> tuple[float, float]:
    """``(warn, refuse)`` from out-of-fold view scores of frontal films (see :data:`LEVEL_RULE`)."""
    if nih_scores.size == 0 or other_frontal_scores.size == 0:
        raise ValueError("levels need out-of-fold scores of NIH and of other frontal films")
    warn = max(float(np.quantile(nih_scores, NIH_WARN_QUANTILE)),
               float(np.quantile(other_frontal_scores, OTHER_FRONTAL_WARN_QUANTILE)))
    refuse = max(warn, float(np.max(np.r_[nih_scores, other_frontal_scores])))
    return warn, min(refuse, 1.0)

