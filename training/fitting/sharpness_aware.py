"""Sharpness-aware minimisation (``--sam-rho RHO``; Foret et al., "Sharpness-Aware
Minimization for Efficiently Improving Generalization", ICLR 2021).

Each step takes the gradient not at the weights ``w`` but at the worst nearby point of a
ball of radius ``rho``, to first order ``w + rho * g / ||g||``:

    g = grad L(w);   e = rho * g / ||g||;   step with grad L(w + e), applied at w

so the optimiser prefers weights whose whole neighbourhood has a low loss. Foret et al.
report gains without pretraining and under label noise (CIFAR from scratch; noisy CIFAR
labels), both of which describe training on 1,753 NIH films from random weights with
labels mined from reports. Each step costs two forward and two backward passes.

The second forward pass leaves the batch-norm running statistics alone: they describe the
weights ``w`` that are kept, and the batch was already counted by the first pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn


@torch.no_grad()
def _ascend(parameters: list[nn.Parameter], rho: float) -> list[torch.Tensor]:
    """Move each parameter with a gradient by ``rho * grad / ||grad||`` (the norm over all
    of them); return copies of the weights as they were, in ``parameters``' order."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        raise ValueError("sharpness-aware step: no parameter has a gradient")
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
    scale = rho / (norm + 1e-12)
    kept = [p.detach().clone() for p in parameters]
    for p in parameters:
        if p.grad is not None:
            p.add_((p.grad * scale).to(p.dtype))
    return kept


@torch.no_grad()
def _restore(parameters: list[nn.Parameter], kept: list[torch.Tensor]) -> None:
    for p, weights in zip(parameters, kept, strict=True):
        p.copy_(weights)


@contextmanager
def frozen_batch_norm_statistics(model: nn.Module) -> Iterator[None]:
    """Forward passes inside leave every batch-norm layer's running mean and variance as
    they were (momentum 0 for the duration)."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [layer.momentum for layer in layers]
    for layer in layers:
        layer.momentum = 0.0
    try:
        yield
    finally:
        for layer, momentum in zip(layers, saved, strict=True):
            layer.momentum = momentum


def sharpness_aware_backward(model: nn.Module, loss_of: Callable[[], torch.Tensor], rho: float) -> torch.Tensor:
    """Fill the gradients of ``model``'s parameters with SAM's: ``loss_of()`` (a forward pass
    of the batch and its loss) is differentiated at the weights, the weights moved by
    ``rho`` along the normalised gradient, differentiated again there, and put back exactly.
    Returns the loss at the weights themselves (the one to log)."""
    if rho <= 0:
        raise ValueError(f"the SAM radius must be positive, got {rho}")
    parameters = [p for p in model.parameters() if p.requires_grad]
    for p in parameters:
        p.grad = None
    loss = loss_of()
    loss.backward()
    kept = _ascend(parameters, rho)
    for p in parameters:
        p.grad = None
    with frozen_batch_norm_statistics(model):
        loss_of().backward()
    _restore(parameters, kept)
    return loss
