"""Predictor: calibrated probabilities, decisions and all-class heatmaps for radiographs.

One :meth:`Predictor.predict` call decodes a file (:mod:`xray_app.preprocess`), runs the
network once and returns a :class:`Prediction` with the 15 probabilities, the per-class
thresholds and positive flags, and a Grad-CAM heatmap for **every** class, computed
from the same forward pass (:func:`xray_app.explain.class_activation_maps`), and the
input gate's verdict (:mod:`xray_app.gate`: is this a frontal chest film?), also from
that pass; an image the gate refuses raises instead of returning findings.  Other
heatmap methods for one chosen class come from :meth:`Predictor.explain`.

Thread safety (Gradio calls the one shared Predictor from several worker threads):

* every method that creates or runs tensors (construction included) runs on the one
  process-wide compute thread of :mod:`xray_app.compute` and the caller waits for it:
  PyTorch's OpenMP teams are per calling thread, and several of them on a small CPU
  make every forward pass slower (see that module);
* the fast path uses no hooks and keeps no per-request state on the object: it calls
  ``model.forward_features`` and ``model.forward_head`` under ``torch.inference_mode``;
* pytorch-grad-cam methods register hooks, so they run on a *twin* of the model (new
  module objects sharing the same parameter tensors, so no extra memory) that the fast
  path never touches, one call at a time under a lock, each in its own ``with`` block;
* after construction nothing changes the model: parameters are frozen
  (``requires_grad_(False)``; library methods take gradients with respect to a copy of
  the input), it stays in eval mode, and no ``.grad`` is ever written.

Devices: CUDA when available (``channels_last``, bfloat16 autocast for the trunk; the
head, the calibration and the heatmaps are computed in float32 from the features), CPU
otherwise.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from xray_app import explain
from xray_app.compute import run_on_compute_thread
from xray_app.flags import flag_findings
from xray_app.gate import (
    GateRefusedError,
    GateResult,
    ViewGate,
    combine,
    gate_features,
    image_statistics,
    unit_images,
)
from xray_app.labels import DISPLAY_NAMES, LABELS, NUM_LABELS
from xray_app.model import (
    LoadedCheckpoint,
    ModelConfig,
)
from xray_app.model_facts import training_data_summary
from xray_app.ood import OodGate, OodResult, OutOfDistributionError
from xray_app.population import Population, PopulationError, PriorShift, move_thresholds
from xray_app.preprocess import DecodedImage, ImageInputError, Source, preprocess, to_model_input
from xray_app.scoring import pooled_features, score_batch
from xray_app.weights import resolve_weights

# "Probably not a chest radiograph" heuristics on the decoded image.
# Colourfulness is the mean over pixels of (max channel - min channel) in [0, 1].  Grey
# radiographs stored as RGB/RGBA (three of the shared NIH originals) measure 0.0 and
# JPEG chroma noise on grey images stays around 0.01-0.02; 0.08 (a mean spread of 20 of
# 255 levels) is crossed by photographs, screenshots and colour-annotated images.
COLOURFULNESS_LIMIT = 0.08
# Long side over short side.  Chest film and detector formats are 35 x 43 cm (1.23),
# 35 x 35 (1.0), 24 x 30 (1.25); 1.6 leaves room for cropped scans and flags panoramic
# dental films, stitched spine/leg images and screenshots of whole screens.
ASPECT_RATIO_LIMIT = 1.6
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX", "DR", "RG"})
LATERAL_VIEWS = frozenset({"LL", "RL", "LAT", "LATERAL", "LLD", "RLD"})
UNTRAINED_WARNING = (
    "UNTRAINED MODEL: these weights are a random initialisation (config.json says "
    "trained: false); every probability, decision and heatmap is meaningless. "
    "Not for any clinical or research use."
)


@dataclass(frozen=True)
class Finding:
    """One output of the model for one image.

    ``label`` is the NIH name in logit order (``"Pleural_Thickening"``), ``display_name``
    the name for people; ``probability`` is calibrated when the checkpoint carries a
    calibration (and moved to the config's population); ``positive`` follows
    :func:`xray_app.flags.flag_findings`.  ``no_signal``: on held-out
    images the model's score for this class showed no relation to the label
    (``training.calibrate``), so its threshold is a fallback, not a chosen operating point.
    """

    label: str
    display_name: str
    probability: float
    threshold: float
    positive: bool
    no_signal: bool = False


@dataclass(frozen=True, eq=False)  # eq=False: arrays have no single truth value; identity equality
class Prediction:
    """Everything the model says about one image.  Arrays are read-only.

    ``name``: the file's base name only (never a directory, which may name a patient).
    ``logits``: ``(15,)`` float32 in logit order (:data:`xray_app.labels.LABELS`).
    ``probabilities``: ``(15,)`` float32 in [0, 1]; ``sigmoid(scale * logit + bias + shift)``
    where ``scale, bias`` are the config's calibration (none: 1, 0) and ``shift`` moves them
    to the config's population (:mod:`xray_app.population`; none: 0).
    ``thresholds``: ``(15,)`` float32, the per-class operating points on that scale.
    ``positive``: ``(15,)`` bool, :func:`xray_app.flags.flag_findings` (pathologies at or
    above their threshold; No Finding only when no pathology is flagged).
    ``cams``: ``(15, S, S)`` float32 in [0, 1], Grad-CAM of each class at the model's input
    size S, normalised per class exactly like pytorch-grad-cam (ReLU, min-max,
    ``cv2.resize``, min-max); draw them with :func:`xray_app.explain.overlay` and
    :func:`xray_app.explain.display_strength`.
    ``image``: the decoded full-resolution greyscale image.
    ``warnings``: human-readable caveats, e.g. untrained weights, probably not a chest
    radiograph (colour, aspect ratio, DICOM modality/body part/lateral view), the input
    gate's warning.
    ``gate``: the input gate's verdict (:class:`~xray_app.gate.GateResult`: frontal,
    lateral, other modality or unknown, the check that fired, its score and level);
    ``None`` for weights without a gate.  A refused image never becomes a Prediction:
    :class:`~xray_app.gate.GateRefusedError` is raised instead.
    """

    name: str
    logits: np.ndarray
    probabilities: np.ndarray
    thresholds: np.ndarray
    positive: np.ndarray
    cams: np.ndarray
    image: DecodedImage
    warnings: tuple[str, ...] = ()
    ood_score: float | None = None  # distance to the training radiographs (see xray_app.ood)
    gate: GateResult | None = None  # the input gate's verdict (see xray_app.gate)
    no_signal: frozenset[str] = frozenset()  # labels without signal on held-out images

    @property
    def findings(self) -> list[Finding]:
        """The 15 findings in logit order."""
        return [
            Finding(
                label=LABELS[i],
                display_name=DISPLAY_NAMES[i],
                probability=float(self.probabilities[i]),
                threshold=float(self.thresholds[i]),
                positive=bool(self.positive[i]),
                no_signal=LABELS[i] in self.no_signal,
            )
            for i in range(len(LABELS))
        ]

    def sorted_findings(self) -> list[Finding]:
        """The 15 findings by probability, highest first (ties keep logit order)."""
        return sorted(self.findings, key=lambda finding: -finding.probability)


def input_warnings(image: DecodedImage) -> tuple[str, ...]:
    """Warnings that ``image`` is probably not a frontal chest radiograph (see the limits above)."""
    found: list[str] = []
    if image.colourfulness > COLOURFULNESS_LIMIT:
        found.append(
            f"probably not a chest radiograph: the image is in colour (colourfulness "
            f"{image.colourfulness:.2f} > {COLOURFULNESS_LIMIT}); the model only knows "
            "greyscale X-ray films"
        )
    if image.aspect_ratio > ASPECT_RATIO_LIMIT:
        found.append(
            f"probably not a chest radiograph: its aspect ratio is {image.aspect_ratio:.2f}:1 "
            f"(> {ASPECT_RATIO_LIMIT}:1; chest films are close to square), and it was "
            "stretched to a square for the model"
        )
    modality = image.dicom.get("Modality", "").upper()
    if modality and modality not in RADIOGRAPH_MODALITIES:
        found.append(
            f"the DICOM modality is {modality}, not a projection radiograph (CR/DX); "
            "the model was trained on chest radiographs only"
        )
    body_part = image.dicom.get("BodyPartExamined", "").upper()
    if body_part and not any(word in body_part for word in ("CHEST", "THORAX", "LUNG")):
        found.append(
            f"the DICOM header names the body part {body_part!r}, not the chest; "
            "the model was trained on chest radiographs only"
        )
    if image.dicom.get("ViewPosition", "").upper() in LATERAL_VIEWS:
        found.append(
            "lateral view: the model was trained on frontal (PA/AP) chest films only"
        )
    return tuple(found)


class BatchOutput(NamedTuple):
    """What :meth:`Predictor.infer` returns for ``N`` model inputs."""

    logits: np.ndarray  # (N, 15) float32
    probabilities: np.ndarray  # (N, 15) float32, calibrated when the config says so
    cams: np.ndarray  # (N, 15, S, S) float32 in [0, 1]
    ood: list[OodResult | None]  # one feature-distance verdict per image; None without one
    gate: list[GateResult | None]  # the input gate per image; None without either check


class Predictor:
    """Runs one checkpoint; safe to share between threads (see the module docstring).

    ``Predictor(checkpoint, device=None)`` takes ownership of ``checkpoint.model`` (moves it
    to ``device``, freezes it).  ``device=None`` means CUDA when available, else CPU; a
    CUDA device on a machine without CUDA raises ``ValueError``.
    Attributes: ``config`` (:class:`~xray_app.model.ModelConfig`), ``device``,
    ``model_info`` = ``{"name", "sha256", "trained", "data"}`` (``data``: a one-line
    provenance summary from the config), ``score_cam_batch_size``.
    """

    def __init__(
        self,
        checkpoint: LoadedCheckpoint,
        *,
        device: str | torch.device | None = None,
        score_cam_batch_size: int | None = None,
        population: Population | None = None,
    ) -> None:
        run_on_compute_thread(self._setup, checkpoint, device, score_cam_batch_size, population)

    def _setup(
        self,
        checkpoint: LoadedCheckpoint,
        device: str | torch.device | None,
        score_cam_batch_size: int | None,
        population: Population | None,
    ) -> None:
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} was asked for but CUDA is not available here")
        self.config: ModelConfig = checkpoint.config
        self.sha256 = checkpoint.sha256
        self._cuda = self.device.type == "cuda"
        model = checkpoint.model.eval().requires_grad_(False).to(self.device)
        if self._cuda:
            model = model.to(memory_format=torch.channels_last)
        self._model = model
        # Same parameter and buffer tensors, new module objects: library hooks go on the
        # twin's modules, so the fast path never sees them.
        shared = {id(t): t for t in chain(model.parameters(), model.buffers())}
        self._hooked_twin = copy.deepcopy(model, memo=shared)
        self._explain_lock = threading.Lock()
        self._autocast_dtype = (
            torch.bfloat16 if self._cuda and torch.cuda.is_bf16_supported() else torch.float16
        )
        self._fc_weight = model.fc.weight.detach().float()
        offsets, thresholds = self._population_scale(population)
        self._thresholds = thresholds.astype(np.float32)
        self._thresholds.setflags(write=False)
        calibration = self.config.calibration or {"scale": [1.0] * len(offsets), "bias": [0.0] * len(offsets)}
        self._calibration = (
            torch.tensor(calibration["scale"], dtype=torch.float32, device=self.device),
            torch.tensor(np.asarray(calibration["bias"]) + offsets, dtype=torch.float32, device=self.device),
        )
        self.score_cam_batch_size = score_cam_batch_size or (128 if self._cuda else 32)
        provenance = self.config.provenance or {}
        self.model_info: dict[str, Any] = {
            "name": self.config.name,
            "sha256": self.sha256,
            "trained": bool(self.config.trained),
            "data": training_data_summary(provenance),
        }
        self._model_warnings = () if self.config.trained else (UNTRAINED_WARNING,)
        self._ood = OodGate.from_checkpoint(checkpoint)  # None when config.json has no ood entry
        self._view_gate = ViewGate.from_checkpoint(checkpoint)  # None without a gate entry
        fitted = (self.config.provenance or {}).get("validation_fit") or {}
        self.no_signal = frozenset(fitted.get("no_signal") or ())  # from training.calibrate

    def _population_scale(self, population: Population | None) -> tuple[np.ndarray, np.ndarray]:
        """``(C,)`` log-odds offsets added to the calibrated logits and the ``(C,)``
        thresholds on the resulting probability scale.

        The config's ``population`` record moves probabilities calibrated on the training
        sample to its population; its thresholds are on that scale.  ``population`` (a
        prevalence table given at start-up) replaces the config's: probabilities and
        thresholds move together, so the same films stay flagged.
        """
        thresholds = np.asarray(self.config.thresholds, dtype=np.float64)
        record = self.config.population
        if record is None:
            if population is not None:
                raise PopulationError(
                    "these weights record no calibration sample (config.json has no "
                    "'population'), so their probabilities cannot be moved to another population"
                )
            self.population = None
            return np.zeros(len(thresholds)), thresholds
        shift = PriorShift.from_dict(record, self.config.labels)
        if population is not None:
            moved = shift.to(population)
            thresholds = move_thresholds(thresholds, moved.offsets() - shift.offsets())
            shift = moved
        self.population = shift.population
        return shift.offsets(), thresholds

    @classmethod
    def from_weights(
        cls, weights: str | Path | None = None, *, device: str | torch.device | None = None,
        population: Population | None = None,
    ) -> Predictor:
        """Resolve weights like :func:`xray_app.weights.resolve_weights` and load them;
        ``population`` replaces the config's (probabilities and thresholds move together).

        Raises :class:`~xray_app.weights.WeightsNotFoundError`,
        :class:`~xray_app.model.CheckpointError` or
        :class:`~xray_app.population.PopulationError`; never falls back to random weights.
        """
        checkpoint = run_on_compute_thread(resolve_weights(weights).load, device="cpu")
        return cls(checkpoint, device=device, population=population)

    # ------------------------------------------------------------------ inference
    def infer(self, batch: torch.Tensor) -> BatchOutput:
        """The fast path on model inputs: ``(N, 3, S, S)`` -> logits, probabilities, CAMs.

        Returns ``(N, 15)`` float32 logits, ``(N, 15)`` float32 (calibrated) probabilities,
        ``(N, 15, S, S)`` float32 heatmaps in [0, 1], all from one forward pass, and the
        feature-distance verdict and the input gate's verdict per image (``None`` when the
        checkpoint has no such check).
        When the config asks for ``mirror_average`` that pass holds each image and its
        mirror image; logits are their mean and each heatmap is Grad-CAM of that mean.
        """
        return run_on_compute_thread(self._infer, batch)

    def _infer(self, batch: torch.Tensor) -> BatchOutput:
        mirror = self.config.mirror_average
        with torch.inference_mode():
            scores = score_batch(self._model, batch.to(self.device, non_blocking=True),
                                 mirror_average=mirror, feature_maps=True,
                                 autocast_dtype=self._autocast_dtype if self._cuda else None,
                                 channels_last=self._cuda)
            logits, features = scores.logits, scores.feature_maps
            if self._calibration is not None:
                scale, bias = self._calibration
                probabilities = torch.sigmoid(scale * logits + bias)
            else:
                probabilities = torch.sigmoid(logits)
            cams = explain.class_activation_maps(features, self._fc_weight, batch.shape[-1],
                                                 mirror_average=mirror)
            ood, gate = self._gate(batch, pooled_features(self._model, scores))
            return BatchOutput(
                logits.cpu().numpy().astype(np.float32),
                probabilities.cpu().numpy().astype(np.float32),
                cams,
                ood,
                gate,
            )

    def _gate(
        self, batch: torch.Tensor, pooled: torch.Tensor
    ) -> tuple[list[OodResult | None], list[GateResult | None]]:
        """Both checks of the input gate for ``(N, 3, S, S)`` inputs and their ``(N, 2048)``
        pooled features (of the images as given: the statistics never see the mirrors)."""
        n = batch.shape[0]
        ood = self._ood.assess(pooled) if self._ood is not None else [None] * n
        if self._view_gate is None:
            views = [None] * n
        else:
            preprocess_config = self.config.preprocess
            unit = unit_images(batch.cpu(), preprocess_config.mean[0], preprocess_config.std[0])
            views = self._view_gate.assess(gate_features(pooled, image_statistics(unit)))
        gate = [
            None if view is None and distance is None else combine(view, distance)
            for view, distance in zip(views, ood, strict=True)
        ]
        return ood, gate

    def predict(self, source: Source, *, name: str | None = None) -> Prediction:
        """Decode ``source`` (path, bytes or binary file) and predict.

        ``name`` is used in messages and as :attr:`Prediction.name` (base name only).
        Raises :class:`~xray_app.preprocess.ImageInputError` (a subclass naming the file and
        the problem) for input that cannot be used.
        """
        return run_on_compute_thread(self._predict, source, name)

    def _predict(self, source: Source, name: str | None) -> Prediction:
        tensor, image = preprocess(source, self.config.preprocess, name=name)
        out = self.infer(tensor.unsqueeze(0))
        return self._prediction(image, out.logits[0], out.probabilities[0], out.cams[0], out.ood[0],
                                out.gate[0])

    def predict_batch(
        self,
        sources: Sequence[Source],
        *,
        names: Sequence[str | None] | None = None,
        batch_size: int = 8,
    ) -> list[Prediction | ImageInputError]:
        """Predict many inputs, ``batch_size`` images per forward pass.

        Returns one entry per source, in order: a :class:`Prediction`, or the
        :class:`~xray_app.preprocess.ImageInputError` that made that input unusable (the
        others are still predicted).  Results equal :meth:`predict`'s up to float rounding.
        """
        if names is not None and len(names) != len(sources):
            raise ValueError(f"{len(names)} names for {len(sources)} sources")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        return run_on_compute_thread(self._predict_batch, sources, names, batch_size)

    def _predict_batch(
        self, sources: Sequence[Source], names: Sequence[str | None] | None, batch_size: int
    ) -> list[Prediction | ImageInputError]:
        results: list[Prediction | ImageInputError] = []
        for start in range(0, len(sources), batch_size):
            chunk = sources[start : start + batch_size]
            chunk_names = names[start : start + batch_size] if names else [None] * len(chunk)
            decoded: list[tuple[torch.Tensor, DecodedImage] | ImageInputError] = []
            for source, name in zip(chunk, chunk_names, strict=True):
                try:
                    decoded.append(preprocess(source, self.config.preprocess, name=name))
                except ImageInputError as error:
                    decoded.append(error)
            good = [item for item in decoded if not isinstance(item, ImageInputError)]
            outputs = iter(())
            if good:
                out = self.infer(torch.stack([t for t, _ in good]))
                outputs = iter(zip(out.logits, out.probabilities, out.cams, out.ood, out.gate,
                                   strict=True))
            for item in decoded:
                if isinstance(item, ImageInputError):
                    results.append(item)
                else:
                    try:
                        results.append(self._prediction(item[1], *next(outputs)))
                    except OutOfDistributionError as error:
                        results.append(error)
        return results

    def _prediction(
        self,
        image: DecodedImage,
        logits: np.ndarray,
        probabilities: np.ndarray,
        cams: np.ndarray,
        ood: OodResult | None = None,
        gate: GateResult | None = None,
    ) -> Prediction:
        if gate is not None and gate.refused:
            raise GateRefusedError(Path(image.name).name, gate)
        gate_warning = (gate.message,) if gate is not None and gate.level == "warn" else ()
        positive = flag_findings(probabilities, self._thresholds)
        for array in (logits, probabilities, positive, cams):
            array.setflags(write=False)
        return Prediction(
            name=Path(image.name).name,
            logits=logits,
            probabilities=probabilities,
            thresholds=self._thresholds,
            positive=positive,
            cams=cams,
            image=image,
            warnings=self._model_warnings + input_warnings(image) + gate_warning,
            ood_score=None if ood is None else ood.score,
            gate=gate,
            no_signal=self.no_signal,
        )

    # ------------------------------------------------------------------ other methods
    def explain(self, prediction: Prediction, class_index: int, method: str) -> np.ndarray:
        """One class's heatmap by ``method`` (a name in :data:`xray_app.explain.METHODS`).

        Returns ``(S, S)`` float32 in [0, 1] at the model input size.  The fast method
        returns ``prediction.cams[class_index]`` at no cost; the others run pytorch-grad-cam
        on the prediction's image as given (never its mirror image, even when the
        probabilities average both), one call at a time (a lock), each in its own ``with``
        block.  Raises ``ValueError`` for an unknown method or class index.
        """
        method = explain.resolve_method(method)
        if not 0 <= int(class_index) < NUM_LABELS:
            raise ValueError(f"class_index must be in 0..{NUM_LABELS - 1}, got {class_index}")
        if method == explain.FAST_METHOD:
            return prediction.cams[class_index]
        return run_on_compute_thread(self._library_map, prediction, int(class_index), method)

    def _library_map(self, prediction: Prediction, class_index: int, method: str) -> np.ndarray:
        preprocess_config = self.config.preprocess
        x = to_model_input(
            prediction.image.pixels,
            preprocess_config.input_size,
            preprocess_config.mean,
            preprocess_config.std,
        ).unsqueeze(0).to(self.device)
        if self._cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with self._explain_lock:
            return explain.library_cam(
                self._hooked_twin,
                self._hooked_twin.layer4,
                x,
                int(class_index),
                method,
                batch_size=self.score_cam_batch_size,
            )
