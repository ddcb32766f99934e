"""training.fitting.losses: focal weighted loss reduces to weighted BCE; stays finite; weight rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.fitting.losses import FocalWeightedLoss, class_weights


def test_gamma_zero_neutral_alpha_equals_weighted_bce():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 15, generator=generator) * 3
    targets = (torch.rand(8, 15, generator=generator) > 0.7).float()
    weights = torch.rand(15, generator=generator) * 5 + 0.5
    focal = FocalWeightedLoss(alpha=0.5, gamma=0.0, pos_weight=weights)(logits, targets)
    bce = torch.nn.BCEWithLogitsLoss(pos_weight=weights)(logits, targets)
    assert torch.allclose(focal, bce, rtol=1e-6, atol=1e-7), f"expected {bce.item()}, got {focal.item()}"


def test_gradients_finite_for_extreme_logits():
    logits = torch.tensor([[1e4, -1e4, 80.0, -80.0, 0.0]], requires_grad=True)
    targets = torch.tensor([[0.0, 1.0, 1.0, 0.0, 1.0]])
    for gamma in (0.0, 0.5, 2.0, 5.0):
        loss = FocalWeightedLoss(alpha=0.25, gamma=gamma, pos_weight=torch.full((5,), 10.0))(logits, targets)
        (grad,) = torch.autograd.grad(loss, logits)
        assert torch.isfinite(loss), f"expected a finite loss at gamma {gamma}, got {loss}"
        assert torch.isfinite(grad).all(), f"expected finite gradients at gamma {gamma}, got {grad}"


def test_focusing_shrinks_easy_examples_more_than_hard_ones():
    targets = torch.ones(1, 2)
    logits = torch.tensor([[4.0, -1.0]])  # easy positive, hard positive
    bce = FocalWeightedLoss(gamma=0.0)
    focal = FocalWeightedLoss(gamma=2.0)
    easy_ratio = focal(logits[:, :1], targets[:, :1]) / bce(logits[:, :1], targets[:, :1])
    hard_ratio = focal(logits[:, 1:], targets[:, 1:]) / bce(logits[:, 1:], targets[:, 1:])
    assert easy_ratio < 0.01 < hard_ratio, f"expected easy {easy_ratio} << hard {hard_ratio}"


def test_class_weights_are_negatives_over_positives_capped():
    labels = np.zeros((100, 3), dtype=np.float32)
    labels[:50, 0] = 1  # 50 % -> 1
    labels[:20, 1] = 1  # 20 % -> 4
    labels[:1, 2] = 1  # 1 % -> 99, capped at 10
    weights = class_weights(labels, max_class_weight=10.0)
    assert weights.tolist() == pytest.approx([1.0, 4.0, 10.0]), f"expected [1, 4, 10], got {weights}"
    repeated = class_weights(labels, np.where(labels[:, 1] > 0, 4.0, 1.0), max_class_weight=10.0)
    assert repeated[1] == pytest.approx(1.0), f"expected 4x repeats of a 20 % class to balance it, got {repeated[1]}"
