"""An auxiliary AP/PA output trained beside the 15 findings (``--view-loss-weight W``).

NIH films are taken AP (often at the bedside, in sicker patients) or PA, and how often
each view carries a finding differs between NIH as a whole and the folders we train on
(in ``images_extra/`` normal films are more often AP than abnormal ones, across NIH the
reverse). A network may then use view position as a proxy for the findings. Here a second
linear output on the same pooled features learns the view itself:

    loss = findings loss (15 outputs) + W * BCE(view logit, film is AP)

so that view position is a feature the network represents openly. Whether that helps the
findings is measured (docs/experiments.md), not assumed.

Only training sees the extra output. The exported checkpoint is the 15-output network in
the app's format, unchanged; the view output's weights live in ``last.ckpt`` (to resume)
and nowhere else. The training targets carry the view as a 16th column
(:func:`with_view_column`); validation keeps the 15 NIH labels.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xray_app.labels import NUM_LABELS
from xray_app.model import ChestXrayResNet

VIEW_COLUMN = NUM_LABELS  # the index of the view target and logit: after the 15 findings


class WithViewOutput(nn.Module):
    """``network`` plus a ``Linear(features, 1)`` view output on its pooled features:
    ``(N, 3, S, S)`` -> ``(N, 16)`` logits, the 15 findings exactly as ``network`` makes
    them, then the view (AP = 1)."""

    def __init__(self, network: ChestXrayResNet) -> None:
        super().__init__()
        self.network = network
        self.view = nn.Linear(network.fc.in_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.network.pool(self.network.forward_features(x))
        findings = self.network.fc(self.network.dropout(pooled))
        return torch.cat([findings, self.view(pooled)], dim=1)


class ViewAuxiliaryLoss(nn.Module):
    """``findings(logits[:, :15], targets[:, :15]) + weight * BCE(logits[:, 15], targets[:, 15])``
    on the 16-column logits and targets of :class:`WithViewOutput`."""

    def __init__(self, findings: nn.Module, weight: float) -> None:
        super().__init__()
        if weight <= 0:
            raise ValueError(f"the view loss weight must be positive, got {weight}")
        self.findings = findings
        self.weight = float(weight)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] != NUM_LABELS + 1 or targets.shape[1] != NUM_LABELS + 1:
            raise ValueError(f"expected {NUM_LABELS + 1} columns (15 findings, then the view), "
                             f"got logits {tuple(logits.shape)} and targets {tuple(targets.shape)}")
        view = F.binary_cross_entropy_with_logits(logits[:, VIEW_COLUMN].float(),
                                                  targets[:, VIEW_COLUMN].float())
        return self.findings(logits[:, :VIEW_COLUMN], targets[:, :VIEW_COLUMN]) + self.weight * view


def with_view_column(targets: np.ndarray, is_ap: np.ndarray) -> np.ndarray:
    """``(N, 15)`` training targets + ``(N,)`` booleans -> ``(N, 16)`` float32, AP = 1."""
    if len(targets) != len(is_ap):
        raise ValueError(f"{len(targets)} target rows but {len(is_ap)} view positions")
    column = np.asarray(is_ap, dtype=np.float32)[:, None]
    return np.concatenate([np.asarray(targets, dtype=np.float32), column], axis=1)
