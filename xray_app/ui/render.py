"""What the web demo shows, drawn from a prediction: text, table rows and images.

Pure functions of a :class:`~xray_app.predictor.Prediction` (or the weights' config):
no Gradio events, no state.  Sentences about the loaded model come from
:mod:`xray_app.model_facts`; files are written by :mod:`xray_app.exports`.  A finding is
compared with its operating point in one wording (:data:`xray_app.flags.ABOVE` /
:data:`~xray_app.flags.BELOW`) in the table, the captions and the notes.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from xray_app import explain, exports
from xray_app.flags import ABOVE, BELOW, percent
from xray_app.gate import DISTANCE_CHECK, VIEW_CHECK
from xray_app.labels import LABELS, NO_FINDING_INDEX
from xray_app.model_card_view import md_escape
from xray_app.model_facts import UNTRAINED_NOTICE, first_screen

if TYPE_CHECKING:
    from xray_app.gate import GateResult
    from xray_app.predictor import Finding, Prediction

GALLERY_MAX_SIDE = 384  # heatmap tiles: a 5-column gallery shows them ~250-370 CSS px wide; the large view has full resolution
GALLERY_JPEG_QUALITY = 88
LARGE_MAX_SIDE = 2048  # the large view: full resolution up to this side
DEFAULT_OPACITY = 0.5
GATE_VERDICT_WORDS = {  # xray_app.gate's verdicts, in plain words
    "frontal": "a frontal chest film, the kind the model reads",
    "lateral": "a lateral chest film; the model reads frontal (PA/AP) films only",
    "other_modality": "another kind of image, not a chest radiograph",
    "unknown": "unlike the radiographs the model was trained on",
}
GATE_CHECK_WORDS = {VIEW_CHECK: "view score", DISTANCE_CHECK: "distance to the training radiographs"}


# --------------------------------------------------------------------------- text
def model_banner_html(config: Any, model_info: dict[str, Any], population: Mapping[str, Any] | None = None) -> str:
    """HTML banner: UNTRAINED warning (if so), the disclaimer, the model's name, and the
    first screen (:func:`xray_app.model_facts.first_screen`: what the model is worth, what
    a flag means, the population of the probabilities).  ``population`` overrides
    ``config.population`` (a prevalence table given at start-up)."""
    provenance = config.provenance or {}
    facts = first_screen(provenance, config.operating_points, population or config.population)
    parts = []
    if not config.trained:
        parts.append(
            '<div id="untrained-banner" style="background:#b00020;color:#fff;padding:10px 14px;'
            'border-radius:6px;font-weight:700;font-size:1.1em;margin-bottom:8px">'
            f"&#9888; {html.escape(UNTRAINED_NOTICE)}</div>"
        )
    parts.append(
        '<div id="model-banner" style="border-left:5px solid #c77700;background:#fff7e6;'
        'color:#222;padding:8px 14px;border-radius:4px">'
        "<b>Research demo &mdash; not a medical device.</b> Not cleared or approved for "
        "clinical use; do not use it for diagnosis or treatment decisions.<br>"
        f"<b>Model:</b> {html.escape(str(config.name))} "
        f"(sha256 <code>{html.escape(str(model_info.get('sha256', ''))[:12])}</code>)"
        f'<p id="first-screen" style="margin:6px 0 0">{html.escape(" ".join(facts), quote=False)}</p></div>'
    )
    return "\n".join(parts)


def comparison(finding: Finding, *, threshold: bool = False) -> str:
    """A finding against its operating point, in the one wording of :mod:`xray_app.flags`
    (``threshold``: with the operating point's value); a class without signal on held-out
    images says so instead of being judged."""
    point = f" ({percent(finding.threshold)})" if threshold else ""
    if finding.no_signal:
        return "no signal on held-out images"
    if finding.positive:
        return f"▲ {ABOVE}{point}"
    if finding.probability >= finding.threshold:  # No Finding beside a flagged pathology
        return f"{ABOVE}{point}, not flagged beside a flagged pathology"
    return f"▽ {BELOW}{point}"


def caption(finding: Finding) -> str:
    """Gallery caption, e.g. ``Effusion — 0.62 ▲ at or above its operating point (0.41)``."""
    return f"{finding.display_name} — {percent(finding.probability)} {comparison(finding, threshold=True)}"


def ranked_pathologies(prediction: Prediction) -> list[Finding]:
    """The 14 pathologies (not No Finding): flagged ones first, each group by probability."""
    ranked = [f for f in prediction.sorted_findings() if f.label != LABELS[NO_FINDING_INDEX]]
    return [f for f in ranked if f.positive] + [f for f in ranked if not f.positive]


def findings_rows(prediction: Prediction) -> list[list[Any]]:
    """Rows of the findings table: the 14 pathologies, flagged first, by probability."""
    return [
        [f.display_name, percent(f.probability), percent(f.threshold), comparison(f)]
        for f in ranked_pathologies(prediction)
    ]


def findings_summary(prediction: Prediction) -> str:
    """Markdown above the table: the flagged pathologies, then No Finding on its own line."""
    flagged = [f for f in ranked_pathologies(prediction) if f.positive]
    if flagged:
        names = ", ".join(f"{md_escape(f.display_name)} {percent(f.probability)}" for f in flagged)
        first = f"**Flagged ({len(flagged)} of 14):** {names}; each {ABOVE}."
    else:
        first = f"**Flagged:** none of the 14 findings is {ABOVE}."
    none = prediction.findings[NO_FINDING_INDEX]
    second = f"**{md_escape(none.display_name)}:** {percent(none.probability)}, {comparison(none, threshold=True)}."
    return f"{first}\n\n{second}"


def study_notes(prediction: Prediction, gate_levels: Mapping[str, tuple[float, float]] | None = None) -> str:
    """Markdown beside the table: warnings first, the input check in plain words (scores
    and levels in a details element), then what was read (safe DICOM fields only)."""
    lines = [f"**⚠ Warning:** {md_escape(warning)}" for warning in prediction.warnings]
    if prediction.gate is not None:
        lines.append(md_escape(gate_verdict(prediction.gate)))
        lines.append(gate_details(prediction.gate, gate_levels or {}))
    image = prediction.image
    lines.append(f"Image: {image.width} × {image.height} px, {md_escape(image.format)}.")
    if image.dicom:
        fields = " · ".join(f"{md_escape(k)}: {md_escape(v)}" for k, v in image.dicom.items())
        lines.append(f"DICOM header (non-identifying fields only): {fields}.")
    silent = [f.display_name for f in prediction.findings if f.no_signal]
    if silent:
        lines.append("No signal on held-out images (read these as unknown, whatever their "
                     "number): " + ", ".join(silent) + ".")
    return "\n\n".join(lines)


def gate_verdict(gate: GateResult) -> str:
    """The input check's verdict in plain words, e.g. ``"Input check: this looks like a
    lateral chest film; the model reads frontal (PA/AP) films only. Its findings are shown
    but probably meaningless."``"""
    seen = GATE_VERDICT_WORDS.get(gate.verdict, GATE_VERDICT_WORDS["unknown"])
    if gate.level == "ok":
        return f"Input check: this looks like {seen}."
    if gate.level == "refuse":
        return f"Input check: this looks like {seen}. No findings are shown."
    return f"Input check: this looks like {seen}. Its findings are shown but probably meaningless."


def gate_details(gate: GateResult, levels: Mapping[str, tuple[float, float]]) -> str:
    """HTML ``<details>`` with each check's score and, when known, its warning and
    refusal levels (``levels``: check -> (warn, refuse), see :func:`gate_levels`)."""
    parts = []
    for check, score in gate.scores.items():
        text = f"{GATE_CHECK_WORDS.get(check, check)} {score:.3f}"
        if check in levels:
            warn, refuse = levels[check]
            text += f" (warning at {warn:.3f}, refusal at {refuse:.3f})"
        parts.append(html.escape(text))
    return ("<details><summary>Input check scores</summary>"
            + ("; ".join(parts) or "none recorded") + "</details>")


def gate_levels(config: Any) -> dict[str, tuple[float, float]]:
    """The input check's (warn, refuse) levels per check, from ``config.gate`` (the view
    head) and ``config.ood`` (the feature distance); checks without levels are left out."""
    levels = {}
    for check, entry in ((VIEW_CHECK, config.gate), (DISTANCE_CHECK, config.ood)):
        if entry and entry.get("warn") is not None and entry.get("refuse") is not None:
            levels[check] = (float(entry["warn"]), float(entry["refuse"]))
    return levels


def gate_summary(gate: GateResult | None) -> str:
    """The input gate's verdict in a few words for the batch table: ``"lateral (warn; view 0.93)"``."""
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
    positives = ", ".join(f.display_name for f in ranked_pathologies(prediction) if f.positive) or "none"
    top = f"{ranked[0].display_name} {percent(ranked[0].probability)}"
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
