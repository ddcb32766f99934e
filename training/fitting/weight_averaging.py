"""Weight averaging: an exponential moving average of the weights (updated after every
optimiser step) and stochastic weight averaging (equal weights, taken at epoch ends).
Either average, not the raw weights, is what a run validates, selects and exports."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn
from torch.utils.data import DataLoader

from training.fitting.runtime import Runtime, autocast, to_device
from xray_app.model import ChestXrayResNet


class WeightAverage:
    """Exponential moving average of a model's weights and batch-norm buffers.

    On a few hundred images the raw weights swing from one epoch to the next (and the
    validation AUROC with them); the average moves smoothly.  ``update()`` after
    each optimiser step; ``module`` is the averaged network.
    """

    def __init__(self, model: ChestXrayResNet, decay: float) -> None:
        self.source = model
        self.average = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)

    @property
    def module(self) -> ChestXrayResNet:
        return self.average.module

    def update(self) -> None:
        self.average.update_parameters(self.source)

    def state_dict(self) -> dict[str, Any]:
        return self.average.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.average.load_state_dict(state)


class StochasticWeightAverage:
    """Equal-weight average of a model's weights taken at epoch ends (SWA, Izmailov et
    al. 2018).  Batch-norm statistics are not averaged: :meth:`network` recomputes them
    for the averaged weights with one pass over ``loader`` (the training images), since
    statistics gathered under other weights do not fit it.
    """

    def __init__(self, model: ChestXrayResNet) -> None:
        self.source = model
        self.average = AveragedModel(model)

    @property
    def count(self) -> int:
        return int(self.average.n_averaged.item())

    def update(self) -> None:
        self.average.update_parameters(self.source)

    def network(self, loader: DataLoader, runtime: Runtime) -> ChestXrayResNet:
        """A copy of the averaged network with its batch-norm statistics recomputed."""
        network = copy.deepcopy(self.average.module)
        with torch.no_grad(), autocast(runtime):
            update_bn((to_device(images, runtime) for images, _ in loader), network)
        network.eval()
        return network

    def state_dict(self) -> dict[str, Any]:
        return self.average.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.average.load_state_dict(state)
