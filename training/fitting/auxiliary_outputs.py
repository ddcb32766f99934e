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

A trait can instead be *hidden* (``--folder-adversary-weight A``): its output sits behind a
gradient reversal (Ganin et al., JMLR 2016), so that the output learns to tell the trait while
the network's features are pushed, with weight A, to make it impossible. The one hidden trait
is ``folder``: among No-Finding films only, which of two source folders a film came from
(:func:`folder_column`). In ``images_extra/`` nearly every normal film is a copy from one
public collection with a tone and softness of its own (``training.source_audit``), so a
network can call a film normal by recognising the copy; restricted to normal films, whose
15 labels are all the same, the folder says nothing about the findings, and hiding it takes
nothing from them (a class-conditional adversary, as in Li et al., ECCV 2018). Films with a
finding, or in neither folder, carry NaN in that column and are left out of its loss.
With ``--folder-adversary-within-view`` the hidden output is split by view position:
``folder_pa`` among normal PA films, ``folder_ap`` among normal AP films, so that the view,
which the two folders' normal films differ in too, is not hidden with the folder.

Only training sees the extra outputs. The exported checkpoint is the 15-output network in
the app's format, unchanged; the auxiliary outputs' weights live in ``last.ckpt`` (to
resume) and nowhere else. The training targets carry the traits as columns after the 15
findings (:func:`with_auxiliary_columns`); validation keeps the 15 NIH labels.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from training.data.prevalence import is_ap
from xray_app.labels import NO_FINDING_INDEX, NUM_LABELS
from xray_app.model import ChestXrayResNet

if TYPE_CHECKING:
    from training.fitting.config import TrainConfig

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
FOLDER_WITHIN_VIEW = ("folder_pa", "folder_ap")  # the hidden folder among normal PA, then AP films
# behind a gradient reversal: learnt by the output, hidden from the features
HIDDEN_TRAITS = ("folder", *FOLDER_WITHIN_VIEW)


def auxiliary_weights(view_weight: float, patient_weight: float, folder_adversary_weight: float = 0.0,
                      within_view: bool = False) -> dict[str, float]:
    """The traits trained and their loss weights, in column order: the view when
    ``view_weight`` > 0, then sex, age and follow-up number each at ``patient_weight`` > 0,
    then, always last, the hidden ``folder`` at ``folder_adversary_weight`` > 0, or with
    ``within_view`` ``folder_pa`` and ``folder_ap`` each so weighted."""
    weights = {"view": view_weight} if view_weight > 0 else {}
    if patient_weight > 0:
        weights.update(dict.fromkeys(PATIENT_TRAITS, patient_weight))
    if folder_adversary_weight > 0:
        weights.update(dict.fromkeys(FOLDER_WITHIN_VIEW if within_view else ("folder",), folder_adversary_weight))
    return weights


def configured_traits(cfg: TrainConfig) -> dict[str, float]:
    """:func:`auxiliary_weights` as a run's options set them."""
    return auxiliary_weights(cfg.view_loss_weight, cfg.patient_loss_weight, cfg.folder_adversary_weight,
                             cfg.folder_adversary_within_view)


def metadata_traits(names: Sequence[str]) -> list[str]:
    """Those of ``names`` whose targets come from the metadata (all but the hidden ones)."""
    return [name for name in names if name not in HIDDEN_TRAITS]


def folder_column(sources: Sequence[str | None], folders: Sequence[str], labels: np.ndarray,
                  ap: np.ndarray | None = None) -> np.ndarray:
    """The hidden ``folder`` target, ``(N, 1)`` float32: for a No-Finding film (``labels``
    ``(N, 15)``, 0/1) 0 if it came from ``folders[0]``, 1 if from ``folders[1]``; NaN for a
    film with a finding or from neither folder (no loss). ``sources``: each film's folder name
    (:func:`training.data.images.source_of`). Given ``ap`` (``(N,)`` bool, the film is AP),
    ``(N, 2)``: the same target among PA films (``folder_pa``), then among AP films
    (``folder_ap``), NaN in the other view's column."""
    if len(folders) != 2:
        raise ValueError(f"the folder adversary tells two source folders apart, got {len(folders)}: {list(folders)}")
    if len(sources) != len(labels):
        raise ValueError(f"{len(sources)} films' folders but {len(labels)} rows of labels")
    normal = np.asarray(labels)[:, NO_FINDING_INDEX] == 1
    column = np.full(len(sources), np.nan, dtype=np.float32)
    for value, folder in enumerate(folders):
        column[normal & np.array([source == folder for source in sources], dtype=bool)] = value
    if ap is None:
        return column[:, None]
    ap = np.asarray(ap, dtype=bool)
    if len(ap) != len(column):
        raise ValueError(f"{len(column)} films but {len(ap)} view positions")
    return np.stack([np.where(ap, np.nan, column), np.where(ap, column, np.nan)], axis=1).astype(np.float32)


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


class _ReverseGradient(torch.autograd.Function):
    """Identity forward; the gradient's sign turned backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return -grad


def reverse_gradient(x: torch.Tensor) -> torch.Tensor:
    """``x`` unchanged; whatever gradient reaches it goes back with its sign turned."""
    return _ReverseGradient.apply(x)


class WithAuxiliaryOutputs(nn.Module):
    """``network`` plus linear outputs on its pooled features, one per trait of ``names``:
    ``(N, 3, S, S)`` -> ``(N, 15 + K)`` logits, the 15 findings exactly as ``network`` makes
    them, then the K traits in ``names``' order. ``auxiliary`` (``Linear(features, open)``)
    serves the open traits; ``adversary`` (``Linear(features, hidden)``) the hidden ones
    (:data:`HIDDEN_TRAITS`, which must come last), on the pooled features behind
    :func:`reverse_gradient`. Either is None when it has no trait."""

    def __init__(self, network: ChestXrayResNet, names: Sequence[str]) -> None:
        super().__init__()
        if not names:
            raise ValueError("expected at least one auxiliary output")
        self.names = tuple(names)
        open_names = metadata_traits(self.names)
        if list(self.names[:len(open_names)]) != open_names:
            raise ValueError(f"hidden traits {list(HIDDEN_TRAITS)} must come after the others, got {list(names)}")
        self.network = network
        features = network.fc.in_features
        hidden = len(self.names) - len(open_names)
        self.auxiliary = nn.Linear(features, len(open_names)) if open_names else None
        self.adversary = nn.Linear(features, hidden) if hidden else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.network.pool(self.network.forward_features(x))
        outputs = [self.network.fc(self.network.dropout(pooled))]
        if self.auxiliary is not None:
            outputs.append(self.auxiliary(pooled))
        if self.adversary is not None:
            outputs.append(self.adversary(reverse_gradient(pooled)))
        return torch.cat(outputs, dim=1)

    def heads_state(self) -> dict[str, Any]:
        """The outputs' weights (not the network's), for ``last.ckpt``."""
        return {"state": self.auxiliary.state_dict() if self.auxiliary is not None else None,
                **({"adversary": self.adversary.state_dict()} if self.adversary is not None else {})}

    def load_heads_state(self, saved: Mapping[str, Any]) -> None:
        """Undo :meth:`heads_state`."""
        if self.auxiliary is not None:
            self.auxiliary.load_state_dict(saved["state"])
        if self.adversary is not None:
            self.adversary.load_state_dict(saved["adversary"])


class AuxiliaryLoss(nn.Module):
    """``findings(logits[:, :15], targets[:, :15]) + sum_k weight_k * BCE(logits[:, 15 + k],
    targets[:, 15 + k])`` on the ``15 + K`` columns of :class:`WithAuxiliaryOutputs`; each
    trait's BCE is the mean over the films whose target is not NaN (0 when none is)."""

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
        trait_targets = targets[:, first:].float()
        known = ~torch.isnan(trait_targets)
        per_film = F.binary_cross_entropy_with_logits(
            logits[:, first:].float(), torch.where(known, trait_targets, 0.0), reduction="none")
        per_output = (per_film * known).sum(dim=0) / known.sum(dim=0).clamp(min=1)
        return self.findings(logits[:, :first], targets[:, :first]) + (self.weights * per_output).sum()
