"""Held-out figures of the gate per kind of image: separation from NIH frontal films and
the share flagged and refused, by the view check alone and by the whole gate."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from training.gating.features import FeatureSet
from training.gating.items import KINDS
from training.metrics.auroc import auroc
from xray_app.gate import ViewResult, combine
from xray_app.ood import OodGate


def separation(negatives: np.ndarray, positives: np.ndarray) -> float | None:
    """AUROC of a score for ``positives`` against ``negatives`` (ties count half);
    None (a JSON null) when either is empty."""
    value = auroc(np.r_[np.zeros(negatives.size), np.ones(positives.size)], np.r_[negatives, positives])
    return None if np.isnan(value) else value


def held_out_figures(
    data: FeatureSet, scores: np.ndarray, warn: float, refuse: float, ood: OodGate | None
) -> dict[str, Any]:
    """Per kind: n, AUROC against NIH frontal films, flagged/refused by the view check and
    by the whole gate (view + feature distance, :func:`xray_app.gate.combine`)."""
    kinds = np.array(data.kinds)
    distance = ood.assess(torch.from_numpy(data.pooled)) if ood is not None else [None] * len(kinds)
    levels = []
    for score, dist in zip(scores, distance, strict=True):
        level = "refuse" if score > refuse else "warn" if score > warn else "ok"
        # the kind does not change the level; only the level is counted here
        levels.append(combine(ViewResult(float(score), "lateral", level, "", {}), dist).level)
    levels = np.array(levels)
    nih = scores[kinds == "nih_frontal"]
    figures: dict[str, Any] = {}
    for kind in KINDS:
        mask = kinds == kind
        count = int(mask.sum())
        if count == 0:
            continue
        view_flagged = int((scores[mask] > warn).sum())
        gate_flagged = int((levels[mask] != "ok").sum())
        figures[kind] = {
            "n": count,
            "auroc_vs_nih_frontal": None if kind == "nih_frontal" else separation(nih, scores[mask]),
            "view_flagged": view_flagged,
            "view_refused": int((scores[mask] > refuse).sum()),
            "gate_flagged": gate_flagged,
            "gate_refused": int((levels[mask] == "refuse").sum()),
            "gate_flagged_share": gate_flagged / count,
        }
    return figures
