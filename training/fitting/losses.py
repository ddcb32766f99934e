"""Focal weighted loss for multi-label logits, and the per-class weight rule.

Per-class weight rule (:func:`class_weights`): for class ``c`` with expected positive
fraction ``f_c`` in the training split *as the balanced sampler presents it*,

    w_c = min(max_class_weight, (1 - f_c) / f_c)

i.e. ``BCEWithLogitsLoss``'s ``pos_weight`` convention (negatives / positives), so a
positive of a rare class counts as much as all its negatives together, but never more
than ``max_class_weight`` times a negative.  Classes more common than 50 % get a weight
below 1; a class with no positive in the training split gets weight 1 (it has no
positive term to weight).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def class_weights(
    labels: np.ndarray, sample_weights: np.ndarray | None = None, *, max_class_weight: float
) -> np.ndarray:
    """``(C,)`` float32 positive-class weights from ``(N, C)`` 0/1 ``labels``.

    ``sample_weights`` ``(N,)`` (the sampler's expected repeats) weight each image's
    contribution to the frequencies; None counts every image once.
    """
    if max_class_weight <= 0:
        raise ValueError(f"max_class_weight must be positive, got {max_class_weight}")
    weights = np.ones(len(labels)) if sample_weights is None else np.asarray(sample_weights, float)
    total = float(weights.sum())
    positives = (labels * weights[:, None]).sum(axis=0)
    result = np.ones(labels.shape[1], dtype=np.float64)
    has = positives > 0
    result[has] = (total - positives[has]) / positives[has]
    return np.minimum(result, max_class_weight).astype(np.float32)


class FocalWeightedLoss(nn.Module):
    """Sigmoid focal loss with per-class positive weights, averaged over all N x C terms.

    For logit ``x``, target ``y`` in {0, 1}, ``p = sigmoid(x)``, class weight ``w``:

        loss = -[ 2a * w * y * (1 - p)^gamma * log(p) + 2(1 - a) * (1 - y) * p^gamma * log(1 - p) ]

    ``alpha`` (``a``) in (0, 1) trades positives against negatives; 0.5 is neutral (the
    factor 2 keeps the scale of BCE), so ``alpha=0.5, gamma=0`` is exactly
    ``BCEWithLogitsLoss(pos_weight=w)``.  ``gamma`` >= 0 down-weights easy examples.
    Computed in float32 from log-sigmoids, so extreme logits give finite gradients.

    Shapes: ``logits`` ``(N, C)`` any float dtype, ``targets`` ``(N, C)`` in [0, 1];
    returns a scalar float32.
    """

    def __init__(
        self, *, alpha: float = 0.5, gamma: float = 2.0, pos_weight: torch.Tensor | None = None
    ) -> None:
        super().__init__()
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"focal alpha must be in (0, 1), got {alpha}")
        if gamma < 0:
            raise ValueError(f"focal gamma must be >= 0, got {gamma}")
        self.alpha = float(alpha)
        self.gamma = float(gamma)
        self.register_buffer("pos_weight", None if pos_weight is None else pos_weight.float())

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        targets = targets.float()
        log_p = F.logsigmoid(logits)
        log_not_p = F.logsigmoid(-logits)
        positive = -targets * log_p
        negative = -(1.0 - targets) * log_not_p
        if self.gamma > 0:
            # (1 - p)^gamma = exp(gamma * log(1 - p)): no 0 ** gamma, no NaN gradient
            positive = positive * torch.exp(self.gamma * log_not_p)
            negative = negative * torch.exp(self.gamma * log_p)
        if self.pos_weight is not None:
            positive = positive * self.pos_weight.to(positive.device)  # validation runs on CPU logits
        loss = 2.0 * self.alpha * positive + 2.0 * (1.0 - self.alpha) * negative
        return loss.mean()
