"""What the web demo shows, drawn from a prediction: text, table rows and images.

Pure functions of a :class:`~xray_app.predictor.Prediction` (or the weights' config):
no Gradio events, no state.  Sentences about the bundled model come from
:mod:`xray_app.model_facts`; files are written by :mod:`xray_app.exports`.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from xray_app import explain, exports
from xray_app.model_card_view import md_escape
from xray_app.model_facts import measured_accuracy, training_data_summary

if TYPE_CHECKING:
    from xray_app.gate import GateResult
    from xray_app.predictor import Finding, Prediction

GALLERY_MAX_SIDE = 384  # heatmap tiles: a 5-column gallery shows them ~250-370 CSS px wide; the large view has full resolution
GALLERY_JPEG_QUALITY = 88
LARGE_MAX_SIDE = 2048  # the large view: full resolution up to this side
DEFAULT_OPACITY = 0.5


# --------------------------------------------------------------------------- text
def model_banner_html(config: Any, model_info: dict[str, Any]) -> str:
    """HTML banner: UNTRAINED warning (if so), the disclaimer, model name and training data."""
    data = training_data_summary(config.provenance or {})
    accuracy = measured_accuracy(config.provenance or {})
    measured = f"<br><b>Measured:</b> {html.escape(accuracy)}" if accuracy else ""
    parts = []
    if not config.trained:
        parts.append(
            '<div id="untrained-banner" style="background:#b00020;color:#fff;padding:10px 14px;'
            'border-radius:6px;font-weight:700;font-size:1.1em;margin-bottom:8px">'
            "&#9888; UNTRAINED WEIGHTS: this model is a random initialisation. Its outputs "
            "and heatmaps are meaningless; use it only to test the software.</div>"
        )
    parts.append(
        '<div id="model-banner" style="border-left:5px solid #c77700;background:#fff7e6;'
        'color:#222;padding:8px 14px;border-radius:4px">'
        "<b>Research demo &mdash; not a medical device.</b> Not cleared or approved for "
        "clinical use; do not use it for diagnosis or treatment decisions.<br>"
        f"<b>Model:</b> {html.escape(str(config.name))} "
        f"(sha256 <code>{html.escape(str(model_info.get('sha256', ''))[:12])}</code>) "
        f"&middot; <b>trained on:</b> {html.escape(str(data))}{measured}</div>"
    )
    return "\n".join(parts)


def caption(finding: Finding) -> str:
    """Gallery caption, e.g. ``Pleural effusion — 0.62 (threshold 0.41) ▲ above``."""
    mark = "▲ above" if finding.positive else "▽ below"
    return f"{finding.display_name} — {finding.probability:.2f} (threshold {finding.threshold:.2f}) {mark}"


def findings_rows(prediction: Prediction) -> list[list[Any]]:
    """Rows of the findings table, highest probability first.  A class that showed no
    signal on held-out images says so instead of being judged against its fallback
    threshold."""
    return [
        [
            finding.display_name,
            f"{finding.probability:.3f}",
            f"{finding.threshold:.3f}",
            "no signal" if finding.no_signal else ("▲ yes" if finding.positive else "no"),
        ]
        for finding in prediction.sorted_findings()
    ]


def study_notes(prediction: Prediction) -> str:
    """Markdown beside the table: warnings first, then what was read (safe DICOM fields only)."""
    lines = [f"**⚠ Warning:** {md_escape(warning)}" for warning in prediction.warnings]
    if prediction.gate is not None:
        lines.append(f"Input gate: {md_escape(gate_summary(prediction.gate))}.")
    image = prediction.image
    lines.append(f"Image: {image.width} × {image.height} px, {md_escape(image.format)}.")
    if image.dicom:
        fields = " · ".join(f"{md_escape(k)}: {md_escape(v)}" for k, v in image.dicom.items())
        lines.append(f"DICOM header (non-identifying fields only): {fields}.")
    positives = [f.display_name for f in prediction.sorted_findings() if f.positive]
    lines.append(
        "Above threshold: " + (", ".join(positives) if positives else "none of the 15 outputs") + "."
    )
    silent = [f.display_name for f in prediction.findings if f.no_signal]
    if silent:
        lines.append("No signal on held-out images (read these as unknown, whatever their "
                     "number): " + ", ".join(silent) + ".")
    return "\n\n".join(lines)


def gate_summary(gate: GateResult | None) -> str:
    """The input gate's verdict in a few words: ``"lateral (warn; view 0.93)"``."""
    if gate is None:
        return ""
    if gate.check is None:
        return gate.verdict
    return f"{gate.verdict} ({gate.level}; {gate.check} {gate.score:.2f})"


def large_caption(prediction: Prediction, class_index: int, method: str) -> str:
    """Markdown line above the slider: which class, its numbers, and the method."""
    return f"**{caption(prediction.findings[class_index])}** · heatmap method: {method}"


def batch_row(name: str, prediction: Prediction) -> list[str]:
    """One row of the batch table: file, status, flagged findings, top finding, notes, gate."""
    ranked = prediction.sorted_findings()
    positives = ", ".join(f.display_name for f in ranked if f.positive) or "none"
    top = f"{ranked[0].display_name} {ranked[0].probability:.2f}"
    return [name, "ok", positives, top, "; ".join(prediction.warnings), gate_summary(prediction.gate)]


# --------------------------------------------------------------------------- images
def gallery_overlay(gray: np.ndarray, cam: np.ndarray, finding: Finding, channels: str = "rgb") -> np.ndarray:
    """One gallery tile: ``cam`` over ``gray`` at the default opacity, its strength set by
    how far the finding's probability is from its threshold."""
    return explain.overlay(
        gray,
        cam,
        strength=explain.display_strength(finding.probability, finding.threshold),
        opacity=DEFAULT_OPACITY,
        channels=channels,
    )


def gallery_files(prediction: Prediction, order: Sequence[int], cache_dir: str | Path) -> list[tuple[str, str]]:
    """The 15 heatmap tiles (long side <= :data:`GALLERY_MAX_SIDE`), in ``order``, written
    as JPEG files in a fresh folder of ``cache_dir``: ``(path, caption)`` pairs."""
    gray = explain.shrink(prediction.image.pixels, GALLERY_MAX_SIDE)  # once, not 15 times
    directory = exports.fresh_folder(cache_dir)
    findings = prediction.findings

    def drawing(index: int):
        return lambda: gallery_overlay(gray, prediction.cams[index], findings[index], channels="bgr")

    jobs = [(directory / f"{rank:02d}-{findings[i].label}.jpg", drawing(i)) for rank, i in enumerate(order)]
    paths = exports.write_jpegs(jobs, GALLERY_JPEG_QUALITY)
    return [(str(path), caption(findings[i])) for path, i in zip(paths, order, strict=True)]


def original_and_overlay(
    prediction: Prediction, class_index: int, cam: np.ndarray, opacity: float
) -> tuple[np.ndarray, np.ndarray]:
    """(original, overlay) ``(H, W, 3)`` uint8 at full resolution (long side <=
    :data:`LARGE_MAX_SIDE`), the same size: ``cam`` of ``class_index`` over the radiograph."""
    finding = prediction.findings[class_index]
    overlay = explain.overlay(
        prediction.image.pixels,
        cam,
        strength=explain.display_strength(finding.probability, finding.threshold),
        opacity=float(opacity),
        max_side=LARGE_MAX_SIDE,
    )
    return _to_rgb_u8(prediction.image.pixels, overlay.shape[:2]), overlay


def _to_rgb_u8(gray: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``(H, W)`` float [0, 1] -> ``shape`` ``(h, w, 3)`` uint8 greyscale."""
    if gray.shape != shape:
        gray = cv2.resize(gray.astype(np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_AREA)
    u8 = np.clip(gray * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return np.repeat(u8[..., None], 3, axis=2)
