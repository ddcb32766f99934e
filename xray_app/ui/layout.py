"""The web demo's page: ``build_demo(predictor) -> gr.Blocks``, laid out declaratively.

Every number comes from the :class:`~xray_app.predictor.Predictor` it receives; this
module only places components (:mod:`xray_app.ui.events` wires them to handlers).

Privacy and load: analytics are off, uploads and generated files sit in Gradio's cache
only until ``delete_cache`` removes them (:data:`DELETE_CACHE`), a session's study leaves
server memory after :data:`STATE_TTL_S`, only the safe DICOM fields are shown (a DICOM
upload's UIDs are also read, for its SR download, never shown; the SR and FHIR downloads
name no patient), nothing about a study is logged, and the queue is bounded with one
forward pass at a time (the model already uses every core of the CPU).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import gradio as gr

from xray_app import explain
from xray_app.labels import DISPLAY_NAMES, LABELS
from xray_app.model_card_view import md_escape, model_card_markdown
from xray_app.model_facts import measured_localisation
from xray_app.ui import events, handlers, render
from xray_app.weights import BUNDLED_DIR

if TYPE_CHECKING:
    from xray_app.predictor import Predictor

TITLE = "Chest X-ray findings: research demo"
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
TABLE_HEADERS = ["Finding", "Prob.", "Op. point", "Flag"]
BATCH_HEADERS = ["File", "Status", "Flagged findings", "Top finding", "Notes", "Input gate"]


class SingleTab(NamedTuple):
    """The components of the single-study tab that handlers read or write."""

    upload: gr.File
    summary: gr.Markdown
    notes: gr.Markdown
    extras: gr.Accordion
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
    """The demo for ``predictor``, queued (bounded) and ready for ``launch(**launch_options())``.

    ``examples_dir``: a folder of radiographs to offer as examples, with the credit line of
    its ``README.md`` (the app passes :func:`xray_app.serve.examples_folder`).
    ``card_paths``: where to look for the model card (default: ``weights/README.md``).
    """
    cards = [Path(p) for p in (card_paths or [BUNDLED_DIR / "README.md"])]
    provenance = predictor.config.provenance or {}
    with gr.Blocks(
        title=TITLE, analytics_enabled=False, delete_cache=DELETE_CACHE, fill_width=True
    ) as demo:
        gr.Markdown(f"# {TITLE}")
        population = getattr(predictor, "population", None)  # the one in effect, if any
        gr.HTML(render.model_banner_html(predictor.config, predictor.model_info,
                                         population.to_dict() if population is not None else None),
                elem_id="banner")
        study_state = gr.State(None, time_to_live=STATE_TTL_S)
        with gr.Tab("Single study", id="single"):
            single = single_tab(handlers.example_files(examples_dir), handlers.ui_methods(predictor),
                                handlers.example_credit(examples_dir), measured_localisation(provenance))
        with gr.Tab("Batch", id="batch"):
            batch = batch_tab()
        with gr.Tab("Model", id="model"):
            gr.Markdown(model_card_markdown(predictor, cards), elem_id="model-card")
        events.wire_single(predictor, single, study_state)
        events.wire_batch(predictor, batch, single.gallery.GRADIO_CACHE)
    demo.queue(max_size=events.QUEUE_MAX_SIZE, default_concurrency_limit=events.MODEL_CONCURRENCY)
    return demo


def single_tab(examples: Sequence[str], methods: Sequence[str], credit: str = "",
               heatmap_note: str = "") -> SingleTab:
    """Upload and examples; the large view with its controls and, once there is a result,
    a collapsed section of downloads and other heatmap methods; the flagged findings, No
    Finding and the table; the gallery of all 15 heatmaps with ``heatmap_note`` (what they
    were measured to be worth) beside it; the JSON."""
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=260):
            upload = gr.File(
                label="Radiograph: PNG, JPEG, TIFF or DICOM (.dcm), drop or click",
                file_types=None,  # DICOM files often have no extension; the core checks
                type="filepath", height=150, elem_id="upload",
            )
            notes = gr.Markdown(elem_id="study-notes")
            _examples(upload, examples, credit)
        with gr.Column(scale=2, min_width=420):
            view_caption, slider_view, class_select, opacity = _large_view()
            extras, buttons, method_select = _result_extras(methods)
        with gr.Column(scale=1, min_width=400):
            summary = gr.Markdown(elem_id="findings-summary")
            table = gr.Dataframe(
                headers=TABLE_HEADERS, datatype=["str", "str", "str", "str"],
                column_widths=["33%", "13%", "15%", "39%"], wrap=True,
                label="The 14 findings: flagged first, then by probability",
                interactive=False, max_height=640, elem_id="findings",
            )
    gallery = gr.Gallery(
        label="Heatmaps of all 15 outputs, highest probability first (click one to view it large)",
        columns=5, rows=3, height="auto", object_fit="contain", format="jpeg",
        allow_preview=False, elem_id="heatmaps",
    )
    if heatmap_note:
        gr.Markdown(f"<small>{md_escape(heatmap_note)}</small>", elem_id="heatmap-note")
    with gr.Accordion("JSON result (as `python -m xray_app.predict --json`)", open=False):
        result_json = gr.JSON(label="result")
    return SingleTab(upload, summary, notes, extras, *buttons, view_caption, slider_view, class_select,
                     opacity, method_select, table, gallery, result_json)


def _examples(upload: gr.File, examples: Sequence[str], credit: str) -> None:
    if not examples:
        return
    gr.Examples(
        examples=[[p] for p in examples], inputs=[upload],
        label=f"Examples ({len(examples)}): click one to run it", cache_examples=False,
        examples_per_page=handlers.EXAMPLES_SHOWN, api_visibility="private",
    )
    if credit:
        gr.Markdown(f"<small>{md_escape(credit)}</small>", elem_id="example-credit")


def _large_view() -> tuple[Any, ...]:
    view_caption = gr.Markdown("Upload a radiograph to see it here.", elem_id="large-caption")
    slider_view = gr.ImageSlider(
        label="Original (left of the handle) / heatmap (right of it)", max_height=760,
        interactive=False, buttons=["fullscreen", "download"], elem_id="large-view",
    )
    with gr.Row():
        class_select = gr.Dropdown(
            choices=list(zip(DISPLAY_NAMES, LABELS, strict=True)), value=None,
            label="Class shown large", elem_id="class-select",
        )
        opacity = gr.Slider(0.0, 1.0, value=render.DEFAULT_OPACITY, step=0.05, label="Heatmap opacity")
    return view_caption, slider_view, class_select, opacity


def _result_extras(methods: Sequence[str]) -> tuple[gr.Accordion, tuple[Any, ...], gr.Radio]:
    """The collapsed section shown once there is a result: downloads, other CAM methods."""
    with gr.Accordion("Downloads and other heatmap methods", open=False, visible=False,
                      elem_id="result-extras") as extras:
        with gr.Row():
            json_download = gr.DownloadButton("JSON result", value=None, size="sm")
            sheet_download = gr.DownloadButton("PNG report sheet", value=None, size="sm")
            sr_download = gr.DownloadButton("DICOM SR", value=None, size="sm")
            fhir_download = gr.DownloadButton("FHIR report", value=None, size="sm")
        method_select = gr.Radio(
            choices=list(methods), value=explain.FAST_METHOD, label="Heatmap method",
            info="The fast Grad-CAM comes with the prediction; the others are "
            "computed on demand for the selected class (seconds on a CPU).",
            elem_id="method-select",
        )
    return extras, (json_download, sheet_download, sr_download, fhir_download), method_select


def batch_tab() -> BatchTab:
    """Several files at once: the files, a button, the results table and the CSV."""
    gr.Markdown(
        f"Several files at once (up to {handlers.MAX_BATCH_FILES}). A file that cannot be read "
        "gets its reason in its row; the CSV holds all 15 probabilities per file."
    )
    files = gr.File(file_count="multiple", file_types=None, label="Radiographs", elem_id="batch-files")
    button = gr.Button("Analyse all", variant="primary")
    table = gr.Dataframe(headers=BATCH_HEADERS, label="Results", interactive=False)
    return BatchTab(files, button, table, gr.DownloadButton("CSV of all probabilities", value=None))


def launch_options() -> dict[str, Any]:
    """Keyword arguments for ``demo.launch`` (a fresh dict, safe to update)."""
    return dict(LAUNCH_OPTIONS)
