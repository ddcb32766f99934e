"""Input gate: what kind of image is this, before any finding is shown?

Two checks look at every image, both from the forward pass that gives the findings:

* ``"view"``: a linear (multinomial logistic) head that tells a frontal chest radiograph
  from a lateral chest film, a CT slice and other images (photographs, documents, MR
  slices).  Its input is the model's penultimate features (the ``(2048,)`` global average
  pool of the image as given, :meth:`~xray_app.model.ChestXrayResNet.pool`) followed by a
  few cheap statistics of the model input itself (:func:`image_statistics`: a coarse
  thumbnail, column and row profiles, the grey-level histogram, left-right and top-bottom
  symmetry, edge strength), each standardised by the fit data's mean and spread.  Its
  score is the probability that the image is *not* a frontal chest film,
  ``1 - p(frontal)``, in [0, 1];
* ``"feature_distance"``: the Mahalanobis distance of the penultimate features to the
  training radiographs (:mod:`xray_app.ood`), which catches what the view head was never
  shown.

:func:`combine` turns the two into one :class:`GateResult`: the verdict ``"frontal"``,
``"lateral"``, ``"other_modality"`` or ``"unknown"`` (an image far from the training
radiographs that the view head does not recognise), the check that fired (``None`` when
none did), its score and the level ``"ok"``, ``"warn"`` (findings shown with the gate's
message) or ``"refuse"`` (no findings).

Storage (written by :mod:`training.fit_gate`): ``model.safetensors`` holds float32
``ood.view.mean`` ``(F,)``, ``ood.view.scale`` ``(F,)``, ``ood.view.weight`` ``(C, F)`` and
``ood.view.bias`` ``(C,)``, ``F = 2048 + N_STATISTICS``; ``config.json``'s ``gate`` entry
holds the class names in logit order (``"frontal"`` first), the two levels on the score,
how they were chosen and the held-out figures.  App-side: numpy/torch only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from xray_app.ood import OodResult, OutOfDistributionError

METHOD = "view-logistic"
TENSOR_PREFIX = "view."  # model.safetensors stores them as ood.view.*
MEAN_KEY, SCALE_KEY, WEIGHT_KEY, BIAS_KEY = (
    f"{TENSOR_PREFIX}{name}" for name in ("mean", "scale", "weight", "bias")
)
TENSOR_KEYS = (MEAN_KEY, SCALE_KEY, WEIGHT_KEY, BIAS_KEY)
FRONTAL = "frontal"
# the view head's classes -> the verdict the JSON reports
VERDICT_OF_CLASS = {"frontal": "frontal", "lateral": "lateral", "ct": "other_modality",
                    "other": "other_modality"}
VERDICTS = ("frontal", "lateral", "other_modality", "unknown")
LEVELS = ("ok", "warn", "refuse")
VIEW_CHECK = "view"
DISTANCE_CHECK = "feature_distance"

THUMBNAIL = 8  # coarse layout: 8 x 8 block means
PROFILE = 16  # column and row profiles: 16 bins each
HISTOGRAM_BINS = 16
SYMMETRY_SIZE = 32  # symmetry and edges are measured on a 32 x 32 version
N_STATISTICS = THUMBNAIL * THUMBNAIL + 2 * PROFILE + HISTOGRAM_BINS + 2 + 2 + 3
STATISTIC_NAMES = (
    *(f"thumb_{r}_{c}" for r in range(THUMBNAIL) for c in range(THUMBNAIL)),
    *(f"column_profile_{i}" for i in range(PROFILE)),
    *(f"row_profile_{i}" for i in range(PROFILE)),
    *(f"histogram_{i}" for i in range(HISTOGRAM_BINS)),
    "symmetry_left_right", "symmetry_top_bottom",
    "mean", "std",
    "edge_horizontal", "edge_vertical", "edge_fine",
)

_KIND_PHRASES = {
    "lateral": "a lateral chest film; the model reads frontal (PA/AP) chest films only",
    "ct": "a CT slice, not a radiograph; the model reads frontal (PA/AP) chest films only",
    "other": "a photograph, document or other non-radiograph image; the model reads "
    "frontal (PA/AP) chest films only",
}


class GateConfigError(ValueError):
    """The checkpoint's ``gate`` entry and its tensors do not fit together."""


class GateRefusedError(OutOfDistributionError):
    """The gate refused the image; ``.gate`` holds its :class:`GateResult`."""

    def __init__(self, filename: str, result: GateResult) -> None:
        super().__init__(filename, result.message)
        self.gate = result


# --------------------------------------------------------------------------- statistics
def unit_images(batch: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """``(N, 3, S, S)`` normalised model inputs -> ``(N, S, S)`` grey images in [0, 1].

    The model input is a grey image repeated in three channels; channel 0 undone with its
    ``mean`` and ``std`` gives it back, so the statistics need nothing but the batch.
    """
    return (batch[:, 0].float() * std + mean).clamp(0.0, 1.0)


def image_statistics(unit: torch.Tensor) -> torch.Tensor:
    """``(N, S, S)`` grey images in [0, 1] -> ``(N, N_STATISTICS)`` float32.

    Physical cues that separate the kinds whatever the hospital: the coarse layout
    (8 x 8 thumbnail; column and row profiles: a frontal film has two dark lungs either
    side of a bright mediastinum), the grey-level histogram (the black surround of a CT
    slice, the white page of a document), the correlation of the image with its left-right
    and top-bottom mirror images (a frontal film is close to left-right symmetric, a
    lateral film is not), mean and spread, and mean absolute differences of neighbouring
    pixels (edge strength: CT slices and graphics are sharper than projection films).
    """
    if unit.ndim != 3:
        raise ValueError(f"expected (N, S, S) grey images, got shape {tuple(unit.shape)}")
    x = unit.float().unsqueeze(1)
    n = x.shape[0]
    thumb = F.adaptive_avg_pool2d(x, THUMBNAIL).reshape(n, -1)
    columns = F.adaptive_avg_pool2d(x, (1, PROFILE)).reshape(n, -1)
    rows = F.adaptive_avg_pool2d(x, (PROFILE, 1)).reshape(n, -1)
    small = F.adaptive_avg_pool2d(x, SYMMETRY_SIZE).squeeze(1)
    flat = small.reshape(n, -1)
    bins = (flat * HISTOGRAM_BINS).long().clamp(0, HISTOGRAM_BINS - 1)
    histogram = F.one_hot(bins, HISTOGRAM_BINS).float().mean(dim=1)
    symmetry = torch.stack(
        [_correlation(small, small.flip(-1)), _correlation(small, small.flip(-2))], dim=1
    )
    moments = torch.stack([flat.mean(dim=1), flat.std(dim=1)], dim=1)
    edges = torch.stack(
        [
            (small[:, :, 1:] - small[:, :, :-1]).abs().mean(dim=(1, 2)),
            (small[:, 1:, :] - small[:, :-1, :]).abs().mean(dim=(1, 2)),
            (x[:, 0, :, 1:] - x[:, 0, :, :-1]).abs().mean(dim=(1, 2)),
        ],
        dim=1,
    )
    return torch.cat([thumb, columns, rows, histogram, symmetry, moments, edges], dim=1)


def _correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each ``(N, h, w)`` pair, ``(N,)``; 0 for a flat image."""
    a = a.reshape(a.shape[0], -1)
    b = b.reshape(b.shape[0], -1)
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    denominator = (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-8)
    return (a * b).sum(dim=1) / denominator


def gate_features(pooled: torch.Tensor, statistics: torch.Tensor) -> torch.Tensor:
    """``(N, 2048)`` pooled features + ``(N, N_STATISTICS)`` -> ``(N, F)`` float32 view-head input."""
    if pooled.shape[0] != statistics.shape[0]:
        raise ValueError(f"{pooled.shape[0]} feature rows for {statistics.shape[0]} statistic rows")
    return torch.cat([pooled.detach().float().cpu(), statistics.detach().float().cpu()], dim=1)


# --------------------------------------------------------------------------- results
@dataclass(frozen=True)
class ViewResult:
    """The view head's verdict for one image."""

    score: float  # 1 - p(frontal), in [0, 1]
    kind: str  # most probable non-frontal class ("lateral", "ct", "other")
    level: str  # "ok", "warn" or "refuse"
    message: str  # "" when ok; otherwise one sentence for the user
    probabilities: dict[str, float]  # per class, logit order


@dataclass(frozen=True)
class GateResult:
    """What the input gate says about one image (see the module docstring)."""

    verdict: str  # "frontal", "lateral", "other_modality" or "unknown"
    check: str | None  # "view", "feature_distance" or None when no check fired
    score: float  # the score of the check that fired; the view score when none did
    level: str  # "ok", "warn" or "refuse"
    message: str = ""  # "" when ok; otherwise one sentence for the user
    scores: dict[str, float] = field(default_factory=dict)  # every check's score

    @property
    def refused(self) -> bool:
        return self.level == "refuse"

    def to_json(self) -> dict[str, Any]:
        """``{"verdict", "check", "score", "level", "scores"}`` (floats rounded to 4 digits)."""
        return {
            "verdict": self.verdict,
            "check": self.check,
            "score": round(float(self.score), 4),
            "level": self.level,
            "scores": {name: round(float(value), 4) for name, value in self.scores.items()},
        }


def view_message(kind: str, level: str, score: float, warn: float, refuse: float) -> str:
    """The user-facing sentence for a view-head verdict (empty for ``"ok"``)."""
    phrase = _KIND_PHRASES.get(kind, _KIND_PHRASES["other"])
    if level == "refuse":
        return (
            f"This looks like {phrase} (input gate: view score {score:.3f} above the refusal "
            f"level {refuse:.3f}); no prediction is shown. Please upload a frontal chest X-ray."
        )
    if level == "warn":
        return (
            f"This looks like {phrase} (input gate: view score {score:.3f} above the warning "
            f"level {warn:.3f}); its findings are probably meaningless."
        )
    return ""


def combine(view: ViewResult | None, distance: OodResult | None) -> GateResult:
    """One verdict from the view head and the feature-distance gate (either may be absent).

    The higher level wins; at equal levels the view head names what it saw.  An image only
    the feature distance flags is ``"unknown"``: far from the training radiographs, but
    not recognised as a lateral film or another modality.
    """
    scores: dict[str, float] = {}
    if view is not None:
        scores[VIEW_CHECK] = view.score
    if distance is not None:
        scores[DISTANCE_CHECK] = distance.score
    view_rank = LEVELS.index(view.level) if view is not None else 0
    distance_rank = LEVELS.index(distance.level) if distance is not None else 0
    if view is not None and view_rank > 0 and view_rank >= distance_rank:
        verdict = VERDICT_OF_CLASS.get(view.kind, "other_modality")
        return GateResult(verdict, VIEW_CHECK, view.score, view.level, view.message, scores)
    if distance is not None and distance_rank > 0:
        return GateResult("unknown", DISTANCE_CHECK, distance.score, distance.level,
                          distance.message, scores)
    score = view.score if view is not None else (distance.score if distance else 0.0)
    return GateResult(FRONTAL, None, score, "ok", "", scores)


# --------------------------------------------------------------------------- the head
@dataclass(frozen=True, eq=False)  # tensors: compare by identity
class ViewGate:
    """Standardisation, linear head and levels of one checkpoint's view gate."""

    classes: tuple[str, ...]  # logit order, "frontal" first
    mean: torch.Tensor  # (F,) float32
    scale: torch.Tensor  # (F,) float32, > 0
    weight: torch.Tensor  # (C, F) float32
    bias: torch.Tensor  # (C,) float32
    warn: float
    refuse: float

    @classmethod
    def from_parts(
        cls, extra_tensors: Mapping[str, torch.Tensor], gate_config: Mapping[str, Any] | None
    ) -> ViewGate | None:
        """The gate of a checkpoint (``LoadedCheckpoint.extra_tensors`` and ``config.gate``).

        ``None`` without a ``gate`` entry; :class:`GateConfigError` when the entry is there
        but does not fit its tensors (a half-written checkpoint must not disable the gate).
        """
        if not gate_config:
            return None
        if gate_config.get("method") != METHOD:
            raise GateConfigError(
                f"config.json gate.method is {gate_config.get('method')!r}; expected {METHOD!r}"
            )
        missing = [f"ood.{key}" for key in TENSOR_KEYS if key not in extra_tensors]
        if missing:
            raise GateConfigError(
                f"config.json has a gate entry but model.safetensors lacks tensor(s) {missing}"
            )
        classes = tuple(str(c) for c in gate_config.get("classes") or ())
        if not classes or classes[0] != FRONTAL or set(classes) - set(VERDICT_OF_CLASS):
            raise GateConfigError(
                f"config.json gate.classes must start with 'frontal' and name only "
                f"{sorted(VERDICT_OF_CLASS)}, got {list(classes)}"
            )
        mean, scale, weight, bias = (extra_tensors[key].float() for key in TENSOR_KEYS)
        _check_shapes(len(classes), mean, scale, weight, bias)
        try:
            warn, refuse = float(gate_config["warn"]), float(gate_config["refuse"])
        except (KeyError, TypeError, ValueError):
            raise GateConfigError("config.json gate entry needs numeric 'warn' and 'refuse'") from None
        if not 0.0 <= warn <= refuse <= 1.0:
            raise GateConfigError(f"gate levels must satisfy 0 <= warn <= refuse <= 1, got {warn}, {refuse}")
        return cls(classes, mean, scale, weight, bias, warn, refuse)

    @classmethod
    def from_checkpoint(cls, checkpoint: Any) -> ViewGate | None:
        """Same as :meth:`from_parts` for a :class:`~xray_app.model.LoadedCheckpoint`."""
        return cls.from_parts(checkpoint.extra_tensors, checkpoint.config.gate)

    def probabilities(self, features: torch.Tensor) -> torch.Tensor:
        """``(N, F)`` :func:`gate_features` -> ``(N, C)`` class probabilities (softmax)."""
        if features.ndim != 2 or features.shape[1] != self.mean.shape[0]:
            raise ValueError(
                f"expected (N, {self.mean.shape[0]}) gate features, got {tuple(features.shape)}"
            )
        standard = (features.float() - self.mean) / self.scale
        return torch.softmax(standard @ self.weight.T + self.bias, dim=1)

    def assess(self, features: torch.Tensor) -> list[ViewResult]:
        """``(N, F)`` gate features -> one :class:`ViewResult` per image."""
        results = []
        for row in self.probabilities(features).tolist():
            score = 1.0 - row[0]
            others = range(1, len(self.classes))
            kind = self.classes[max(others, key=lambda i: row[i])] if len(self.classes) > 1 else FRONTAL
            level = "refuse" if score > self.refuse else "warn" if score > self.warn else "ok"
            message = view_message(kind, level, score, self.warn, self.refuse)
            probabilities = {name: float(p) for name, p in zip(self.classes, row, strict=True)}
            results.append(ViewResult(score, kind, level, message, probabilities))
        return results


def _check_shapes(
    n_classes: int, mean: torch.Tensor, scale: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> None:
    """Raise :class:`GateConfigError` unless the tensors are ``(F,), (F,), (C, F), (C,)``."""
    width = mean.shape[0] if mean.ndim == 1 else -1
    expected = {MEAN_KEY: (width,), SCALE_KEY: (width,), WEIGHT_KEY: (n_classes, width),
                BIAS_KEY: (n_classes,)}
    for key, tensor in zip(TENSOR_KEYS, (mean, scale, weight, bias), strict=True):
        if mean.ndim != 1 or tuple(tensor.shape) != expected[key]:
            raise GateConfigError(
                f"ood.{key} has shape {tuple(tensor.shape)}; expected {expected[key]} "
                f"({n_classes} classes, ood.{MEAN_KEY} of shape (F,))"
            )
    if not all(bool(torch.isfinite(t).all()) for t in (mean, scale, weight, bias)):
        raise GateConfigError("gate tensors contain NaN or infinite values")
    if bool((scale <= 0).any()):
        raise GateConfigError(f"ood.{SCALE_KEY} must be positive")
