"""The web demo's events: which handler runs when, on which queue.

Closures bind the predictor and Gradio's cache folder; the logic is in
:mod:`xray_app.ui.handlers`.  One forward pass runs at a time (:data:`MODEL_CONCURRENCY`:
one already uses every CPU core); re-rendering the large view has a small queue of its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import gradio as gr

from xray_app.ui import handlers

if TYPE_CHECKING:
    from xray_app.predictor import Predictor
    from xray_app.ui.layout import BatchTab, SingleTab

QUEUE_MAX_SIZE = 32  # waiting events; more are refused with "queue full"
MODEL_CONCURRENCY = 1  # forward passes at a time: one already uses every CPU core
RENDER_CONCURRENCY = 2  # re-rendering the large view (cheap, except non-fast methods)
_PRIVATE: dict[str, Any] = {"api_visibility": "private"}
_CHEAP: dict[str, Any] = {"concurrency_limit": RENDER_CONCURRENCY, "concurrency_id": "render"}


def wire_single(predictor: Predictor, tab: SingleTab, study_state: gr.State) -> None:
    """``/predict`` on upload, then the table, large view and downloads from its study;
    class, method, opacity and gallery clicks re-render the large view."""
    cache_dir = tab.gallery.GRADIO_CACHE
    model_info = dict(predictor.model_info)
    study_outputs = [tab.result_json, tab.gallery, study_state]
    summary_outputs = [tab.table, tab.summary, tab.notes, tab.view_caption, tab.class_select,
                       tab.method_select, tab.opacity, tab.slider_view, tab.extras]
    download_outputs = [tab.json_download, tab.sheet_download, tab.sr_download, tab.fhir_download]

    def cleared():  # a bad file must not leave the previous study's findings on screen beside it
        return None, [], None, *handlers.summarise(predictor, None, cache_dir), None, None, None, None

    predicted = tab.upload.change(
        lambda path: handlers.analyse(predictor, path, cache_dir),
        inputs=[tab.upload], outputs=study_outputs, api_name="predict",
        concurrency_id="model", concurrency_limit=MODEL_CONCURRENCY,
    )
    predicted.failure(cleared, outputs=[*study_outputs, *summary_outputs, *download_outputs],
                      **_PRIVATE, **_CHEAP)
    predicted.success(
        lambda study: handlers.summarise(predictor, study, cache_dir),
        inputs=[study_state], outputs=summary_outputs, **_PRIVATE, **_CHEAP,
    ).success(
        lambda study: handlers.downloads(study, model_info, cache_dir),
        inputs=[study_state], outputs=download_outputs[:2], show_progress="hidden", **_PRIVATE, **_CHEAP,
    ).success(
        lambda study: handlers.report_downloads(study, model_info, cache_dir),
        inputs=[study_state], outputs=download_outputs[2:], show_progress="hidden", **_PRIVATE, **_CHEAP,
    )
    _wire_large_view(predictor, tab, study_state, cache_dir)


def _wire_large_view(predictor: Predictor, tab: SingleTab, study_state: gr.State, cache_dir: str) -> None:
    def run_rerender(study, label, method, alpha):
        return handlers.rerender(predictor, study, label, method, alpha, cache_dir)

    def run_select(study, method, alpha, evt: gr.SelectData):
        return handlers.select_from_gallery(predictor, study, int(evt.index), method, alpha, cache_dir)

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
        return handlers.analyse_batch(predictor, paths, cache_dir, progress)

    tab.button.click(
        run_batch,
        inputs=[tab.files],
        outputs=[tab.table, tab.csv],
        api_name="predict_batch",
        concurrency_id="model",
        concurrency_limit=MODEL_CONCURRENCY,
    )
