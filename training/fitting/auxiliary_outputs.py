"""Auxiliary outputs trained beside the 15 findings, from the metadata: view position
(``--view-loss-weight W``) and the patient's sex, age and follow-up number
(``--patient-loss-weight P``).

NIH films are taken AP (often at the bedside, in sicker patients) or PA, and how often
each view carries a finding differs between NIH as a whole and the folders we train on
(in ``images_extra/`` normal films are more often AP than abnormal ones, across NIH the
reverse). Sex, age and the film's follow-up number differ between normal and abnormal
films too, and differently in each folder (in ``images_extra/`` the median follow-up
number is 2 for normal films and 7 for the others; in ``images/`` 37% of normal films
are of men against 53% of abnormal ones). A network may then use such traits as a
proxy for the findings. Here a linear output per trait on the same pooled features learns
the trait itself:

    loss = findings loss (15 outputs) + sum over traits of weight * BCE(trait logit, target)

so that the trait is a feature the network represents openly. Every target lies in
[0, 1] (:data:`AUXILIARY_TARGETS`), so one binary cross-entropy serves them all. Whether
an output helps the findings is measured (docs/experiments.md), not assumed.

Only training sees the extra outputs. The exported checkpoint is the 15-output network in
the app's format, unchanged; the auxiliary outputs' weights live in ``last.ckpt`` (to
resume) and nowhere else. The training targets carry the traits as columns after the 15
findings (:func:`with_auxiliary_columns`); validation keeps the 15 NIH labels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from training.data.prevalence import is_ap
from xray_app.labels import NUM_LABELS
from xray_app.model import ChestXrayResNet

FIRST_AUXILIARY_COLUMN = NUM_LABELS  # the traits' targets and logits come after the 15 findings
AGE_SCALE = 100.0  # years: the age target is age / 100, clipped to [0, 1]
FOLLOW_UP_SCALE = 100  # the follow-up target is log(1 + n) / log(1 + 100), clipped to [0, 1]


def _male(frame: pd.DataFrame) -> np.ndarray:
    return (frame["Patient Gender"].astype(str).str.upper() == "M").to_numpy(np.float32)


def _age(frame: pd.DataFrame) -> np.ndarray:
    return np.clip(pd.to_numeric(frame["Patient Age"]).to_numpy(np.float32) / AGE_SCALE, 0.0, 1.0)


def _follow_up(frame: pd.DataFrame) -> np.ndarray:
    number = np.maximum(pd.to_numeric(frame["Follow-up #"]).to_numpy(np.float64), 0.0)
    return np.minimum(np.log1p(number) / np.log1p(FOLLOW_UP_SCALE), 1.0).astype(np.float32)


AUXILIARY_TARGETS: dict[str, Callable[[pd.DataFrame], np.ndarray]] = {
    "view": lambda frame: is_ap(frame).astype(np.float32),  # AP = 1, PA = 0
    "sex": _male,  # male = 1
    "age": _age,
    "follow_up": _follow_up,
}
PATIENT_TRAITS = ("sex", "age", "follow_up")


def auxiliary_weights(view_weight: float, patient_weight: float) -> dict[str, float]:
    """The traits trained and their loss weights, in column order: the view when
    ``view_weight`` > 0, then sex, age and follow-up number each at ``patient_weight`` > 0."""
    weights = {"view": view_weight} if view_weight > 0 else {}
    if patient_weight > 0:
        weights.update(dict.fromkeys(PATIENT_TRAITS, patient_weight))
    return weights


def auxiliary_columns(rows: pd.DataFrame, names: Sequence[str]) -> np.ndarray:
    """``(N, len(names))`` float32 targets in [0, 1] of the traits ``names`` for the
    metadata rows ``rows`` (one per film, in the films' order)."""
    unknown = [name for name in names if name not in AUXILIARY_TARGETS]
    if unknown:
        raise ValueError(f"unknown auxiliary output(s) {unknown}; known: {list(AUXILIARY_TARGETS)}")
    return np.stack([AUXILIARY_TARGETS[name](rows) for name in names], axis=1)


def with_auxiliary_columns(targets: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """``(N, 15)`` training targets + ``(N, K)`` trait targets -> ``(N, 15 + K)`` float32."""
    if len(targets) != len(columns):
        raise ValueError(f"{len(targets)} target rows but {len(columns)} rows of auxiliary targets")
    return np.concatenate([np.asarray(targets, dtype=np.float32), np.asarray(columns, np.float32)], axis=1)


class WithAuxiliaryOutputs(nn.Module):
    """``network`` plus a ``Linear(features, K)`` on its pooled features, one output per
    trait of ``names``: ``(N, 3, S, S)`` -> ``(N, 15 + K)`` logits, the 15 findings exactly
    as ``network`` makes them, then the K traits in ``names``' order."""

    def __init__(self, network: ChestXrayResNet, names: Sequence[str]) -> None:
        super().__init__()
        if not names:
            raise ValueError("expected at least one auxiliary output")
        self.names = tuple(names)
        self.network = network
        self.auxiliary = nn.Linear(network.fc.in_features, len(self.names))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.network.pool(self.network.forward_features(x))
        findings = self.network.fc(self.network.dropout(pooled))
        return torch.cat([findings, self.auxiliary(pooled)], dim=1)


class AuxiliaryLoss(nn.Module):
    """``findings(logits[:, :15], targets[:, :15]) + sum_k weight_k * BCE(logits[:, 15 + k],
    targets[:, 15 + k])`` on the ``15 + K`` columns of :class:`WithAuxiliaryOutputs`."""

    def __init__(self, findings: nn.Module, weights: Sequence[float]) -> None:
        super().__init__()
        if not weights or any(weight <= 0 for weight in weights):
            raise ValueError(f"expected one positive loss weight per auxiliary output, got {list(weights)}")
        self.findings = findings
        self.register_buffer("weights", torch.tensor([float(w) for w in weights]), persistent=False)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        columns = NUM_LABELS + len(self.weights)
        if logits.shape[1] != columns or targets.shape[1] != columns:
            raise ValueError(f"expected {columns} columns (15 findings, then {len(self.weights)} "
                             f"auxiliary), got logits {tuple(logits.shape)} and targets {tuple(targets.shape)}")
        first = FIRST_AUXILIARY_COLUMN
        per_output = F.binary_cross_entropy_with_logits(
            logits[:, first:].float(), targets[:, first:].float(), reduction="none").mean(dim=0)
        return self.findings(logits[:, :first], targets[:, :first]) + (self.weights * per_output).sum()
