"""The clinician web demo: ``build_demo(predictor) -> gr.Blocks``.

Thin by design: every number comes from the :class:`~xray_app.predictor.Predictor` it
receives, every heatmap image from :mod:`xray_app.explain`, the JSON from
:mod:`xray_app.report` (the same builder as ``python -m xray_app.predict --json``).  This
module only lays the results out.

Handlers are small module-level functions that take the predictor (or a study) as an
argument, so tests call them without a browser; :func:`build_demo` wires them to
components with thin closures.  Nothing about a request lives in a module global: the
analysed study of each browser session is kept in a ``gr.State`` (:class:`Study`), which
re-renders the large view when the class, method or opacity changes without running the
network again.

Privacy and load: analytics are off, uploads and generated files sit in Gradio's cache
only until ``delete_cache`` removes them (:data:`DELETE_CACHE`), only the safe DICOM
fields are shown (a DICOM upload's UIDs are also read, for its SR download, never shown;
the SR and FHIR downloads name no patient), nothing about a study is logged, and the queue is bounded with one
forward pass at a time (the model already uses every core of the CPU).
"""

from __future__ import annotations

import csv
import html
import json
import re
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import cv2
import gradio as gr
import numpy as np

from xray_app import dicom_sr, explain, exports, fhir, report
from xray_app.labels import DISPLAY_NAMES, LABEL_INDEX, LABELS
from xray_app.model_card_view import md_escape, model_card_markdown
from xray_app.model_facts import measured_accuracy, measured_localisation, training_data_summary
from xray_app.preprocess import ImageInputError
from xray_app.report_sheet import save_report_sheet
from xray_app.weights import BUNDLED_DIR

if TYPE_CHECKING:
    from xray_app.gate import GateResult
    from xray_app.predictor import Prediction, Predictor

TITLE = "Chest X-ray findings: research demo"
EXAMPLE_SUFFIXES = [".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".dicom"]
GALLERY_MAX_SIDE = 384  # heatmap tiles: a 5-column gallery shows them ~250-370 CSS px wide; the large view has full resolution
GALLERY_JPEG_QUALITY = 88
GALLERY_THREADS = 2
LARGE_MAX_SIDE = 2048  # the large view: full resolution up to this side
DEFAULT_OPACITY = 0.5
EXAMPLES_SHOWN = 6
MAX_BATCH_FILES = 100
BATCH_CHUNK = 4  # files per predict_batch call: progress updates stay frequent
QUEUE_MAX_SIZE = 32  # waiting events; more are refused with "queue full"
MODEL_CONCURRENCY = 1  # forward passes at a time: one already uses every CPU core
RENDER_CONCURRENCY = 2  # re-rendering the large view (cheap, except non-fast methods)
CPU_EXCLUDED_METHODS = frozenset({"ScoreCAM"})  # minutes per map on a CPU: blocks everyone
DELETE_CACHE = (60, 600)  # every 60 s delete uploads/outputs older than 10 min; all at exit
STATE_TTL_S = 900  # a session's study is dropped from server memory after 15 min
CSS = """
#heatmaps .caption-label { white-space: normal; max-width: 100%; opacity: 0.92; }
#heatmaps .grid-wrap { height: auto !important; max-height: none !important; }  /* all 15 */
#untrained-banner { letter-spacing: 0.02em; }
"""
# Options of ``launch()`` in Gradio 6 (theme/css/limits moved there from Blocks):
LAUNCH_OPTIONS: dict[str, Any] = {
    "max_file_size": "200mb",  # an uncompressed 16-bit DICOM radiograph is ~20-50 MB
    "state_session_capacity": 200,  # studies kept in memory for at most this many sessions
    "show_error": True,  # gr.Error messages reach the page, not only the log
    "css": CSS,
}
TABLE_HEADERS = ["Finding", "Prob.", "Thresh.", "Above"]
BATCH_HEADERS = ["File", "Status", "Findings above threshold", "Top finding", "Notes", "Input gate"]


# --------------------------------------------------------------------------- state
@dataclass
class Study:
    """One browser session's analysed study (kept in a ``gr.State``).

    ``order``: class indices, highest probability first (the gallery's order).
    ``maps``: heatmaps of other methods already computed, keyed ``(class_index, method)``.
    ``source``: a DICOM upload's UIDs for its SR (never a patient attribute), else None;
    ``source_problem``: why a DICOM upload's SR cannot reference it (missing UIDs), else None.
    """

    prediction: Prediction
    order: tuple[int, ...]
    maps: dict[tuple[int, str], np.ndarray] = field(default_factory=dict)
    source: dicom_sr.SourceReference | None = None
    source_problem: str | None = None

    @classmethod
    def of(cls, prediction: Prediction, path: str | Path | None = None) -> Study:
        """The study of ``prediction``; ``path``: its upload, read for a DICOM's UIDs only."""
        order = tuple(int(i) for i in np.argsort(-np.asarray(prediction.probabilities), kind="stable"))
        source, problem = None, None
        if path is not None:
            try:
                source = exports.source_reference(path, prediction)
            except dicom_sr.SourceHeaderError as error:
                problem = str(error)
        return cls(prediction=prediction, order=order, source=source, source_problem=problem)


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


def caption(finding: Any) -> str:
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
    lines = []
    for warning in prediction.warnings:
        lines.append(f"**⚠ Warning:** {md_escape(warning)}")
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


# --------------------------------------------------------------------------- images
def _to_rgb_u8(gray: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``(H, W)`` float [0, 1] -> ``shape`` ``(h, w, 3)`` uint8 greyscale."""
    if gray.shape != shape:
        gray = cv2.resize(gray.astype(np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_AREA)
    u8 = np.clip(gray * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return np.repeat(u8[..., None], 3, axis=2)


def gallery_items(prediction: Prediction, order: Sequence[int]) -> list[tuple[np.ndarray, str]]:
    """All 15 heatmap overlays (long side <= ``GALLERY_MAX_SIDE``) with captions, in ``order``."""
    gray = explain.shrink(prediction.image.pixels, GALLERY_MAX_SIDE)  # once, not 15 times
    findings = prediction.findings
    return [(_gallery_overlay(gray, prediction.cams[i], findings[i]), caption(findings[i])) for i in order]


def gallery_files(prediction: Prediction, order: Sequence[int], cache_dir: str | Path) -> list[tuple[str, str]]:
    """:func:`gallery_items` written as JPEG files in Gradio's cache: ``(path, caption)``.

    Drawing and encoding run on two threads (OpenCV and NumPy release the GIL): after
    the forward pass they are most of the time ``/predict`` takes on a CPU.
    """
    gray = explain.shrink(prediction.image.pixels, GALLERY_MAX_SIDE)
    directory = _fresh_dir(cache_dir)
    findings = prediction.findings

    def write(rank_index: tuple[int, int]) -> tuple[str, str]:
        rank, index = rank_index
        path = directory / f"{rank:02d}-{findings[index].label}.jpg"
        image = _gallery_overlay(gray, prediction.cams[index], findings[index], channels="bgr")
        cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, GALLERY_JPEG_QUALITY])
        return str(path), caption(findings[index])

    with ThreadPoolExecutor(max_workers=GALLERY_THREADS) as pool:
        return list(pool.map(write, enumerate(order)))


def _gallery_overlay(gray: np.ndarray, cam: np.ndarray, finding: Any, channels: str = "rgb") -> np.ndarray:
    return explain.overlay(
        gray,
        cam,
        strength=explain.display_strength(finding.probability, finding.threshold),
        opacity=DEFAULT_OPACITY,
        channels=channels,
    )


def ui_methods(predictor: Predictor) -> tuple[str, ...]:
    """Heatmap methods offered: all of :data:`explain.METHODS`, except on a CPU those too
    slow to share one (:data:`CPU_EXCLUDED_METHODS`, e.g. ScoreCAM's 2048 forward passes)."""
    on_cpu = getattr(getattr(predictor, "device", None), "type", "cpu") == "cpu"
    return tuple(m for m in explain.METHODS if not (on_cpu and m in CPU_EXCLUDED_METHODS))


def class_map(predictor: Predictor, study: Study, class_index: int, method: str) -> np.ndarray:
    """Heatmap of one class: the precomputed fast Grad-CAM, or ``method`` computed once."""
    if method == explain.FAST_METHOD:
        return study.prediction.cams[class_index]
    allowed = ui_methods(predictor)
    if method not in allowed:
        raise gr.Error(
            f"heatmap method {method!r} is not offered here; choose one of {', '.join(allowed)}",
            print_exception=False,
        )
    key = (class_index, method)
    if key not in study.maps:
        study.maps[key] = predictor.explain(study.prediction, class_index, method)
    return study.maps[key]


def large_view(
    predictor: Predictor, study: Study, class_index: int, method: str, opacity: float
) -> tuple[np.ndarray, np.ndarray]:
    """(original, overlay) at full resolution (long side <= ``LARGE_MAX_SIDE``), same size."""
    finding = study.prediction.findings[class_index]
    overlay = explain.overlay(
        study.prediction.image.pixels,
        class_map(predictor, study, class_index, method),
        strength=explain.display_strength(finding.probability, finding.threshold),
        opacity=float(opacity),
        max_side=LARGE_MAX_SIDE,
    )
    return _to_rgb_u8(study.prediction.image.pixels, overlay.shape[:2]), overlay


def write_large_view(pair: tuple[np.ndarray, np.ndarray], cache_dir: str | Path) -> tuple[str, str]:
    """Files for the slider: the original as lossless greyscale PNG, the overlay as JPEG.

    Written here rather than by Gradio because its default PNG encoder spends ~0.25 s on
    each 1024 px RGB image; a one-channel PNG at low compression takes ~20 ms, and the
    coloured overlay loses nothing a reader needs at JPEG quality 90.
    """
    directory = _fresh_dir(cache_dir)
    original, overlay = directory / "original.png", directory / "heatmap.jpg"
    cv2.imwrite(str(original), pair[0][..., 0], [cv2.IMWRITE_PNG_COMPRESSION, 1])
    cv2.imwrite(str(overlay), pair[1][..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
    return str(original), str(overlay)


def large_caption(study: Study, class_index: int, method: str) -> str:
    """Markdown line above the slider: which class, its numbers, and the method."""
    return f"**{caption(study.prediction.findings[class_index])}** · heatmap method: {method}"




def _safe_stem(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).stem).strip("._") or "study"
    return stem[:80]


def _fresh_dir(cache_dir: str | Path) -> Path:
    """A new folder inside Gradio's cache, so that ``delete_cache`` removes what we write."""
    directory = Path(cache_dir) / f"xray-{uuid.uuid4().hex}"
    directory.mkdir(parents=True)
    return directory


# --------------------------------------------------------------------------- handlers
def analyse(predictor: Predictor, path: str | None, cache_dir: str | Path) -> tuple[Any, ...]:
    """The ``/predict`` event: one file -> (JSON result, gallery, Study).

    The JSON is :func:`xray_app.report.prediction_to_json`, as the command line prints it;
    the gallery holds the 15 captioned heatmaps, highest probability first.  The rest of
    the page (table, large view, downloads) follows from the Study in chained events, so
    the API answers as soon as the heatmaps exist.  Bad input raises ``gr.Error`` with the
    inference core's one-line message.
    """
    if not path:
        return None, [], None
    try:
        prediction = predictor.predict(path, name=Path(path).name)
    except ImageInputError as error:
        raise gr.Error(str(error), title="Cannot analyse this file", print_exception=False) from None
    for warning in prediction.warnings:
        gr.Warning(warning, duration=20)
    study = Study.of(prediction, path)
    result = report.prediction_to_json(prediction, predictor.model_info)
    return result, gallery_files(prediction, study.order, cache_dir), study


def summarise(predictor: Predictor, study: Study | None, cache_dir: str | Path) -> tuple[Any, ...]:
    """Findings table, notes, large-view caption, class selector, method and opacity reset,
    and the large view (slider files) of the most probable class."""
    if study is None:
        return [], "", "", gr.Dropdown(value=None), explain.FAST_METHOD, DEFAULT_OPACITY, None
    findings = study.prediction.findings
    choices = [
        (f"{findings[i].display_name} — {findings[i].probability:.2f}", LABELS[i]) for i in study.order
    ]
    selector = gr.Dropdown(choices=choices, value=LABELS[study.order[0]], interactive=True)
    notes = study_notes(study.prediction)
    top = study.order[0]
    title = large_caption(study, top, explain.FAST_METHOD)
    rows = findings_rows(study.prediction)
    pair = write_large_view(large_view(predictor, study, top, explain.FAST_METHOD, DEFAULT_OPACITY), cache_dir)
    return rows, notes, title, selector, explain.FAST_METHOD, DEFAULT_OPACITY, pair


def downloads(study: Study | None, model_info: dict[str, Any], cache_dir: str | Path) -> tuple[Any, Any]:
    """Write the JSON result and the PNG report sheet into Gradio's cache; their paths."""
    if study is None:
        return None, None
    prediction = study.prediction
    directory = _fresh_dir(cache_dir)
    stem = _safe_stem(prediction.name)
    json_path = directory / f"{stem}.xray.json"
    json_path.write_text(json.dumps(report.prediction_to_json(prediction, model_info), indent=2) + "\n")
    sheet_path = save_report_sheet(prediction, model_info, directory / f"{stem}.report.png")
    return str(json_path), str(sheet_path)


def report_downloads(study: Study | None, model_info: dict[str, Any], cache_dir: str | Path) -> tuple[Any, Any]:
    """Write the DICOM SR and the FHIR DiagnosticReport into Gradio's cache; their paths.

    Demo mode (:mod:`xray_app.exports`): a DICOM upload's SR carries its UIDs and no patient
    attribute.  A DICOM without valid UIDs gets no SR (a warning says why).
    """
    if study is None:
        return None, None
    prediction = study.prediction
    record = report.prediction_to_json(prediction, model_info)
    directory = _fresh_dir(cache_dir)
    stem = _safe_stem(prediction.name)
    sr_path = None
    if study.source_problem:
        gr.Warning(f"No DICOM SR: {study.source_problem}", duration=20)
    else:
        sr = dicom_sr.build_sr(record, model_info, source=study.source)
        sr_path = str(dicom_sr.write_sr(sr, directory / f"{stem}{exports.SR_SUFFIX}"))
    resource = fhir.build_diagnostic_report(record, model_info, source=study.source)
    fhir.validate(resource)
    fhir_path = directory / f"{stem}{exports.FHIR_SUFFIX}"
    fhir_path.write_text(json.dumps(resource, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return sr_path, str(fhir_path)


def rerender(
    predictor: Predictor,
    study: Study | None,
    label: str | None,
    method: str,
    opacity: float,
    cache_dir: str | Path,
) -> tuple[Any, Any, Any]:
    """(slider files, caption, study) for a class/method/opacity change; no forward pass
    for the fast method (its maps came with the prediction)."""
    if study is None or not label:
        return gr.skip(), gr.skip(), study
    class_index = LABEL_INDEX[label]
    pair = large_view(predictor, study, class_index, method, opacity)
    title = large_caption(study, class_index, method)
    return write_large_view(pair, cache_dir), title, study


def select_from_gallery(
    predictor: Predictor,
    study: Study | None,
    position: int,
    method: str,
    opacity: float,
    cache_dir: str | Path,
) -> tuple[Any, Any, Any, Any]:
    """A click on gallery tile ``position``: (class label, slider files, caption, study)."""
    if study is None or not 0 <= position < len(study.order):
        return gr.skip(), gr.skip(), gr.skip(), study
    label = LABELS[study.order[position]]
    return (label, *rerender(predictor, study, label, method, opacity, cache_dir))


def analyse_batch(
    predictor: Predictor,
    paths: Sequence[str] | None,
    cache_dir: str | Path,
    progress: Callable[..., Any] | None = None,
) -> tuple[list[list[str]], str]:
    """Analyse several files: (results table rows, path of a CSV of all 15 probabilities).

    A bad file gets its error message in its row; the others are still analysed.
    """
    paths = list(paths or [])
    if not paths:
        raise gr.Error("Choose one or more files first.", print_exception=False)
    if len(paths) > MAX_BATCH_FILES:
        raise gr.Error(
            f"{len(paths)} files is more than the limit of {MAX_BATCH_FILES} per batch; "
            "please split them.",
            print_exception=False,
        )
    rows: list[list[str]] = []
    records: list[list[Any]] = []
    for start in range(0, len(paths), BATCH_CHUNK):
        if progress is not None:
            progress(start / len(paths), desc=f"Analysed {start} of {len(paths)} files")
        chunk = paths[start : start + BATCH_CHUNK]
        names = [Path(p).name for p in chunk]
        for name, outcome in zip(names, predictor.predict_batch(chunk, names=names), strict=True):
            if isinstance(outcome, ImageInputError):
                gate = getattr(outcome, "gate", None)
                status = "refused" if gate is not None else "error"
                rows.append([name, status, "", "", str(outcome), gate_summary(gate)])
                records.append([name, status, str(outcome), *([""] * len(LABELS))])
                continue
            ranked = outcome.sorted_findings()
            positives = ", ".join(f.display_name for f in ranked if f.positive) or "none"
            top = f"{ranked[0].display_name} {ranked[0].probability:.2f}"
            rows.append([name, "ok", positives, top, "; ".join(outcome.warnings),
                         gate_summary(outcome.gate)])
            records.append(
                [name, "ok", "; ".join(outcome.warnings), *(f"{p:.6f}" for p in outcome.probabilities)]
            )
    if progress is not None:
        progress(1.0, desc=f"Analysed {len(paths)} of {len(paths)} files")
    csv_path = _fresh_dir(cache_dir) / "xray_batch_probabilities.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "status", "message", *LABELS])
        writer.writerows(records)
    return rows, str(csv_path)


def gate_summary(gate: GateResult | None) -> str:
    """The input gate's verdict in a few words: ``"lateral (warn; view 0.93)"``."""
    if gate is None:
        return ""
    if gate.check is None:
        return gate.verdict
    return f"{gate.verdict} ({gate.level}; {gate.check} {gate.score:.2f})"


def example_files(examples_dir: str | Path | None, limit: int = EXAMPLES_SHOWN) -> list[str]:
    """Up to ``limit`` image files (sorted by name) from ``examples_dir``; none if unset."""
    if not examples_dir:
        return []
    directory = Path(examples_dir)
    if not directory.is_dir():
        return []
    suffixes = set(EXAMPLE_SUFFIXES)
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
    return [str(p) for p in files[:limit]]


def example_credit(examples_dir: str | Path | None) -> str:
    """The credit line of the examples: the first paragraph of their ``README.md`` below its
    title (``training.examples`` writes the NIH attribution there); empty without one."""
    readme = Path(examples_dir) / "README.md" if examples_dir else None
    if readme is None or not readme.is_file():
        return ""
    for line in readme.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            return line.strip()
    return ""


# --------------------------------------------------------------------------- layout
class SingleTab(NamedTuple):
    """The components of the single-study tab that handlers read or write."""

    upload: gr.File
    notes: gr.Markdown
    json_download: gr.DownloadButton
    sheet_download: gr.DownloadButton
    sr_download: gr.DownloadButton
    fhir_download: gr.DownloadButton
    view_caption: gr.Markdown
    slider_view: gr.ImageSlider
    class_select: gr.Dropdown
    opacity: gr.Slider
    method_select: gr.Radio
    table: gr.Dataframe
    gallery: gr.Gallery
    result_json: gr.JSON


class BatchTab(NamedTuple):
    files: gr.File
    button: gr.Button
    table: gr.Dataframe
    csv: gr.DownloadButton


def build_demo(
    predictor: Predictor,
    *,
    examples_dir: str | Path | None = None,
    card_paths: Sequence[str | Path] | None = None,
) -> gr.Blocks:
    """The demo for ``predictor``, queued (bounded) and ready for ``launch(**LAUNCH_OPTIONS)``.

    ``examples_dir``: a folder of radiographs to offer as examples, with the credit line of
    its ``README.md`` (the app passes :func:`xray_app.serve.examples_folder`).
    ``card_paths``: where to look for the model card (default: ``weights/README.md``).
    """
    cards = [Path(p) for p in (card_paths or [BUNDLED_DIR / "README.md"])]
    with gr.Blocks(
        title=TITLE, analytics_enabled=False, delete_cache=DELETE_CACHE, fill_width=True
    ) as demo:
        gr.Markdown(f"# {TITLE}")
        gr.HTML(model_banner_html(predictor.config, predictor.model_info), elem_id="banner")
        study_state = gr.State(None, time_to_live=STATE_TTL_S)
        with gr.Tab("Single study", id="single"):
            single = single_tab(example_files(examples_dir), ui_methods(predictor),
                                example_credit(examples_dir),
                                measured_localisation(predictor.config.provenance or {}))
        with gr.Tab("Batch", id="batch"):
            batch = batch_tab()
        with gr.Tab("Model", id="model"):
            gr.Markdown(model_card_markdown(predictor, cards), elem_id="model-card")
        wire_single(predictor, single, study_state)
        wire_batch(predictor, batch, single.gallery.GRADIO_CACHE)
    demo.queue(max_size=QUEUE_MAX_SIZE, default_concurrency_limit=MODEL_CONCURRENCY)
    return demo


def single_tab(examples: Sequence[str], methods: Sequence[str], credit: str = "",
               heatmap_note: str = "") -> SingleTab:
    """Upload, downloads and examples; the large view with its controls; the findings
    table; the gallery of all 15 heatmaps, with ``heatmap_note`` (what they were measured
    to be worth) under it; the JSON."""
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=260):
            upload = gr.File(
                label="Radiograph: PNG, JPEG, TIFF or DICOM (.dcm), drop or click",
                file_types=None,  # DICOM files often have no extension; the core checks
                type="filepath",
                height=150,
                elem_id="upload",
            )
            notes = gr.Markdown(elem_id="study-notes")
            with gr.Row():
                json_download = gr.DownloadButton("JSON result", value=None, size="sm")
                sheet_download = gr.DownloadButton("PNG report sheet", value=None, size="sm")
            with gr.Row():
                sr_download = gr.DownloadButton("DICOM SR", value=None, size="sm")
                fhir_download = gr.DownloadButton("FHIR report", value=None, size="sm")
            if examples:
                gr.Examples(
                    examples=[[p] for p in examples],
                    inputs=[upload],
                    label=f"Examples ({len(examples)}): click one to run it",
                    cache_examples=False,
                    examples_per_page=EXAMPLES_SHOWN,
                    api_visibility="private",
                )
                if credit:
                    gr.Markdown(f"<small>{md_escape(credit)}</small>", elem_id="example-credit")
        with gr.Column(scale=2, min_width=420):
            view_caption = gr.Markdown("Upload a radiograph to see it here.", elem_id="large-caption")
            slider_view = gr.ImageSlider(
                label="Original (left of the handle) / heatmap (right of it)",
                max_height=760,
                interactive=False,
                buttons=["fullscreen", "download"],
                elem_id="large-view",
            )
            with gr.Row():
                class_select = gr.Dropdown(
                    choices=list(zip(DISPLAY_NAMES, LABELS, strict=True)),
                    value=None,
                    label="Class shown large",
                    elem_id="class-select",
                )
                opacity = gr.Slider(0.0, 1.0, value=DEFAULT_OPACITY, step=0.05, label="Heatmap opacity")
            method_select = gr.Radio(
                choices=list(methods),
                value=explain.FAST_METHOD,
                label="Heatmap method",
                info="The fast Grad-CAM comes with the prediction; the others are "
                "computed on demand for the selected class (seconds on a CPU).",
                elem_id="method-select",
            )
        with gr.Column(scale=1, min_width=400):
            table = gr.Dataframe(
                headers=TABLE_HEADERS,
                datatype=["str", "str", "str", "str"],
                column_widths=["43%", "19%", "19%", "19%"],
                label="Findings, highest probability first",
                interactive=False,
                max_height=640,
                elem_id="findings",
            )
    gallery = gr.Gallery(
        label="Heatmaps of all 15 outputs, highest probability first (click one to view it large)",
        columns=5,
        rows=3,
        height="auto",
        object_fit="contain",
        format="jpeg",
        allow_preview=False,
        elem_id="heatmaps",
    )
    if heatmap_note:
        gr.Markdown(f"<small>{md_escape(heatmap_note)}</small>", elem_id="heatmap-note")
    with gr.Accordion("JSON result (as `python -m xray_app.predict --json`)", open=False):
        result_json = gr.JSON(label="result")
    return SingleTab(upload, notes, json_download, sheet_download, sr_download, fhir_download,
                     view_caption, slider_view, class_select, opacity, method_select, table,
                     gallery, result_json)


def batch_tab() -> BatchTab:
    gr.Markdown(
        f"Several files at once (up to {MAX_BATCH_FILES}). A file that cannot be read "
        "gets its reason in its row; the CSV holds all 15 probabilities per file."
    )
    files = gr.File(file_count="multiple", file_types=None, label="Radiographs", elem_id="batch-files")
    button = gr.Button("Analyse all", variant="primary")
    table = gr.Dataframe(headers=BATCH_HEADERS, label="Results", interactive=False)
    return BatchTab(files, button, table, gr.DownloadButton("CSV of all probabilities", value=None))


_PRIVATE = {"api_visibility": "private"}
_CHEAP = {"concurrency_limit": RENDER_CONCURRENCY, "concurrency_id": "render"}


def wire_single(predictor: Predictor, tab: SingleTab, study_state: gr.State) -> None:
    """Events of the single-study tab: closures bind the predictor; the logic is in the
    module-level handlers."""
    cache_dir = tab.gallery.GRADIO_CACHE
    model_info = dict(predictor.model_info)

    def run_predict(path: str | None):
        return analyse(predictor, path, cache_dir)

    def run_summary(study: Study | None):
        return summarise(predictor, study, cache_dir)

    def run_downloads(study: Study | None):
        return downloads(study, model_info, cache_dir)

    def run_report_downloads(study: Study | None):
        return report_downloads(study, model_info, cache_dir)

    def run_rerender(study: Study | None, label: str | None, method: str, alpha: float):
        return rerender(predictor, study, label, method, alpha, cache_dir)

    def run_select(study: Study | None, method: str, alpha: float, evt: gr.SelectData):
        return select_from_gallery(predictor, study, int(evt.index), method, alpha, cache_dir)

    study_outputs = [tab.result_json, tab.gallery, study_state]
    summary_outputs = [tab.table, tab.notes, tab.view_caption, tab.class_select, tab.method_select,
                       tab.opacity, tab.slider_view]
    download_outputs = [tab.json_download, tab.sheet_download, tab.sr_download, tab.fhir_download]
    predicted = tab.upload.change(
        run_predict,
        inputs=[tab.upload],
        outputs=study_outputs,
        api_name="predict",
        concurrency_id="model",
        concurrency_limit=MODEL_CONCURRENCY,
    )
    # a bad file must not leave the previous study's findings on screen beside it
    predicted.failure(
        lambda: (None, [], None, *summarise(predictor, None, cache_dir), None, None, None, None),
        outputs=[*study_outputs, *summary_outputs, *download_outputs],
        **_PRIVATE,
        **_CHEAP,
    )
    predicted.success(
        run_summary, inputs=[study_state], outputs=summary_outputs, **_PRIVATE, **_CHEAP,
    ).success(
        run_downloads, inputs=[study_state], outputs=download_outputs[:2], show_progress="hidden",
        **_PRIVATE, **_CHEAP,
    ).success(
        run_report_downloads, inputs=[study_state], outputs=download_outputs[2:],
        show_progress="hidden", **_PRIVATE, **_CHEAP,
    )
    render_inputs = [study_state, tab.class_select, tab.method_select, tab.opacity]
    for trigger in (tab.class_select.input, tab.method_select.input, tab.opacity.release):
        trigger(run_rerender, inputs=render_inputs,
                outputs=[tab.slider_view, tab.view_caption, study_state], **_PRIVATE, **_CHEAP)
    tab.gallery.select(
        run_select,
        inputs=[study_state, tab.method_select, tab.opacity],
        outputs=[tab.class_select, tab.slider_view, tab.view_caption, study_state],
        **_PRIVATE,
        **_CHEAP,
    )


def wire_batch(predictor: Predictor, tab: BatchTab, cache_dir: str) -> None:
    """The batch tab's one event, queued with the single tab's model calls."""

    def run_batch(paths: list[str] | None, progress=gr.Progress()):  # noqa: B008 (Gradio's idiom)
        return analyse_batch(predictor, paths, cache_dir, progress)

    tab.button.click(
        run_batch,
        inputs=[tab.files],
        outputs=[tab.table, tab.csv],
        api_name="predict_batch",
        concurrency_id="model",
        concurrency_limit=MODEL_CONCURRENCY,
    )


def launch_options() -> dict[str, Any]:
    """Keyword arguments for ``demo.launch`` (a fresh dict, safe to update)."""
    return dict(LAUNCH_OPTIONS)

