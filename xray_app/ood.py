"""Out-of-distribution gate: is this image like the chest radiographs the model was trained on?

The model's penultimate features (the ``(2048,)`` global average pool of layer4, see
:meth:`~xray_app.model.ChestXrayResNet.pool`) of the *training* images are summarised by
their mean ``mu`` and a Ledoit-Wolf-shrunk covariance ``S``.  An image's score is its
Mahalanobis distance to them::

    score = sqrt((f - mu)^T S^-1 (f - mu)) = || W (f - mu) ||,   W = W^T,  W W = S^-1

``W = S^(-1/2)`` is not stored as a dense ``(2048, 2048)`` matrix (16 MB, a third of the
bundled model) but in its exact compact form: fitted on N training images, ``S`` is
``delta mu I`` plus a term of rank ``k = min(N, D)``, so ``W = outside I + basis^T diag(coef) basis`` with
``basis`` ``(k, D)`` of orthonormal rows.  ``model.safetensors`` holds (float32)
``ood.mean`` ``(D,)``, ``ood.basis`` ``(k, D)``, ``ood.coef`` ``(k,)`` and ``ood.outside``
``(1,)``, and the score is computed without ever forming ``W``::

    z = f - mean;  w = outside z + ((z @ basis^T) * coef) @ basis;  score = ||w||

``config.json``'s ``ood`` entry holds the method and the two levels, chosen on validation
radiographs by :mod:`training.fit_ood`:

* ``score <= warn``: ``"ok"``;
* ``warn < score <= refuse``: ``"warn"``: the prediction is shown with a warning;
* ``score > refuse``: ``"refuse"``: no prediction is shown.

This module is app-side: numpy/torch only.  The statistics are fitted in
:mod:`training.fit_ood` (which uses scikit-learn); scoring lives here so that the app, the
command line and the training-side evaluation compute exactly the same number.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from xray_app.preprocess import ImageInputError

METHOD = "mahalanobis"
MEAN_KEY = "mean"
BASIS_KEY = "basis"
COEF_KEY = "coef"
OUTSIDE_KEY = "outside"
TENSOR_KEYS = (MEAN_KEY, BASIS_KEY, COEF_KEY, OUTSIDE_KEY)
DENSE_WHITENING_KEY = "whitening"  # the older dense (D, D) form: no longer read or written
LEVELS = ("ok", "warn", "refuse")


class OodConfigError(ValueError):
    """The checkpoint's ``ood`` entry and its tensors do not fit together."""


class OutOfDistributionError(ImageInputError):
    """The gate refused the image: ``OutOfDistributionError(name, result.message)``.

    A subclass of :class:`~xray_app.preprocess.ImageInputError`, so the app and the
    command line report it like any other unusable input (``"name: message"``).
    """


@dataclass(frozen=True)
class OodResult:
    """The gate's verdict for one image."""

    score: float  # Mahalanobis distance to the training features, >= 0
    level: str  # "ok", "warn" or "refuse"
    message: str  # "" when ok; otherwise one sentence for the user

    @property
    def refused(self) -> bool:
        return self.level == "refuse"


def mahalanobis_score(
    features: torch.Tensor,
    mean: torch.Tensor,
    basis: torch.Tensor,
    coef: torch.Tensor,
    outside: torch.Tensor | float,
) -> torch.Tensor:
    """``(N, D)`` pooled features -> ``(N,)`` float32 Mahalanobis distances (>= 0).

    ``mean`` ``(D,)``, ``basis`` ``(k, D)`` with orthonormal rows, ``coef`` ``(k,)``,
    ``outside`` ``(1,)`` or a scalar: the whitening matrix
    ``W = outside I + basis^T diag(coef) basis`` (symmetric, ``W W`` = the precision
    matrix), applied in ``O(N k D)`` without forming it.
    """
    if features.ndim != 2 or features.shape[1] != mean.shape[0]:
        raise ValueError(
            f"expected (N, {mean.shape[0]}) pooled features, got shape {tuple(features.shape)}"
        )
    centred = features.detach().float().cpu() - mean.float()
    basis = basis.float()
    whitened = torch.as_tensor(outside, dtype=torch.float32) * centred
    whitened = whitened + ((centred @ basis.T) * coef.float()) @ basis
    return torch.linalg.vector_norm(whitened, dim=1)


def level_of(score: float, warn: float, refuse: float) -> str:
    """``"ok"`` up to ``warn``, ``"warn"`` up to ``refuse``, else ``"refuse"``."""
    if score > refuse:
        return "refuse"
    if score > warn:
        return "warn"
    return "ok"


def message_for(level: str, score: float, warn: float, refuse: float) -> str:
    """The user-facing sentence for a level (empty for ``"ok"``)."""
    if level == "refuse":
        return (
            f"This image does not look like a chest radiograph (out-of-distribution score "
            f"{score:.1f}, refusal level {refuse:.1f}); no prediction is shown. Please upload a "
            "frontal (PA or AP) chest X-ray."
        )
    if level == "warn":
        return (
            f"This image is unlike the chest radiographs the model was trained on "
            f"(out-of-distribution score {score:.1f}, warning level {warn:.1f}); the results "
            "below may be unreliable. Check that it is a frontal chest X-ray."
        )
    return ""


@dataclass(frozen=True, eq=False)  # tensors: compare by identity
class OodGate:
    """Mean, compact whitening (basis, coef, outside) and levels of one checkpoint."""

    mean: torch.Tensor  # (D,) float32
    basis: torch.Tensor  # (k, D) float32, orthonormal rows, k <= D
    coef: torch.Tensor  # (k,) float32
    outside: torch.Tensor  # (1,) float32
    warn: float
    refuse: float

    @classmethod
    def from_parts(
        cls, extra_tensors: Mapping[str, torch.Tensor], ood_config: Mapping[str, Any] | None
    ) -> OodGate | None:
        """The gate of a checkpoint (``LoadedCheckpoint.extra_tensors`` and ``config.ood``).

        Returns ``None`` when the checkpoint has no ``ood`` entry (an older checkpoint: the
        caller decides what to say); raises :class:`OodConfigError` when the entry is there
        but inconsistent (a half-written checkpoint must not silently disable the gate).
        """
        if not ood_config:
            return None
        method = ood_config.get("method")
        if method != METHOD:
            raise OodConfigError(f"config.json ood.method is {method!r}; expected {METHOD!r}")
        missing = [k for k in TENSOR_KEYS if k not in extra_tensors]
        if missing:
            hint = (
                " (it has the older dense ood.whitening: re-run python -m training.fit_ood)"
                if DENSE_WHITENING_KEY in extra_tensors else ""
            )
            raise OodConfigError(
                f"config.json has an ood entry but model.safetensors lacks tensor(s) "
                f"{['ood.' + k for k in missing]}{hint}"
            )
        mean, basis, coef, outside = (extra_tensors[k].float() for k in TENSOR_KEYS)
        _check_shapes(mean, basis, coef, outside)
        try:
            warn, refuse = float(ood_config["warn"]), float(ood_config["refuse"])
        except (KeyError, TypeError, ValueError):
            raise OodConfigError("config.json ood entry needs numeric 'warn' and 'refuse'") from None
        if not 0.0 <= warn <= refuse:
            raise OodConfigError(f"ood levels must satisfy 0 <= warn <= refuse, got {warn}, {refuse}")
        return cls(
            mean=mean, basis=basis, coef=coef, outside=outside.reshape(1), warn=warn, refuse=refuse
        )

    @classmethod
    def from_checkpoint(cls, checkpoint: Any) -> OodGate | None:
        """Same as :meth:`from_parts` for a :class:`~xray_app.model.LoadedCheckpoint`."""
        return cls.from_parts(checkpoint.extra_tensors, checkpoint.config.ood)

    def scores(self, pooled: torch.Tensor) -> torch.Tensor:
        """``(N, D)`` pooled features -> ``(N,)`` distances."""
        return mahalanobis_score(pooled, self.mean, self.basis, self.coef, self.outside)

    def assess(self, pooled: torch.Tensor) -> list[OodResult]:
        """``(N, D)`` pooled features -> one :class:`OodResult` per image."""
        results = []
        for score in self.scores(pooled).tolist():
            level = level_of(score, self.warn, self.refuse)
            results.append(OodResult(score, level, message_for(level, score, self.warn, self.refuse)))
        return results


def _check_shapes(
    mean: torch.Tensor, basis: torch.Tensor, coef: torch.Tensor, outside: torch.Tensor
) -> None:
    """Raise :class:`OodConfigError` unless the tensors are ``(D,), (k, D), (k,), (1,)``, k <= D."""
    if mean.ndim != 1:
        raise OodConfigError(f"ood.mean has shape {tuple(mean.shape)}; expected (D,)")
    dim = mean.shape[0]
    if basis.ndim != 2 or basis.shape[1] != dim or basis.shape[0] > dim:
        raise OodConfigError(
            f"ood.basis has shape {tuple(basis.shape)}; expected (k, {dim}) with k <= {dim} "
            f"(ood.mean has {dim} features)"
        )
    rank = basis.shape[0]
    if tuple(coef.shape) != (rank,):
        raise OodConfigError(
            f"ood.coef has shape {tuple(coef.shape)}; expected ({rank},), one per ood.basis row"
        )
    if outside.numel() != 1 or outside.ndim > 1:
        raise OodConfigError(f"ood.outside has shape {tuple(outside.shape)}; expected (1,)")
    if not all(bool(torch.isfinite(t).all()) for t in (mean, basis, coef, outside)):
        raise OodConfigError("ood tensors contain NaN or infinite values")
    if float(outside.reshape(())) < 0:
        raise OodConfigError(f"ood.outside must be >= 0, got {float(outside.reshape(()))}")


def assess_ood(
    pooled: torch.Tensor,
    extra_tensors: Mapping[str, torch.Tensor],
    ood_config: Mapping[str, Any] | None,
) -> list[OodResult] | None:
    """One-call form: ``None`` when the checkpoint has no OOD statistics."""
    gate = OodGate.from_parts(extra_tensors, ood_config)
    return None if gate is None else gate.assess(pooled)
