"""The web demo's event handlers: plain functions of the predictor, a study and the inputs.

Each takes the predictor (or a :class:`Study`) as an argument, so tests call it without a
browser; :mod:`xray_app.ui.events` binds them to components with thin closures.  Nothing
about a request lives in a module global: each browser session's analysed study is a
:class:`Study` kept in a ``gr.State``, which re-renders the large view when the class,
method or opacity changes without running the network again.  Text and images come from
:mod:`xray_app.ui.render`, files from :mod:`xray_app.exports`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr
import numpy as np

from xray_app import dicom_sr, explain, exports, report
from xray_app.flags import percent
from xray_app.labels import LABEL_INDEX, LABELS
from xray_app.preprocess import ImageInputError
from xray_app.report_sheet import save_report_sheet
from xray_app.ui import render

if TYPE_CHECKING:
    from xray_app.predictor import Prediction, Predictor

EXAMPLE_SUFFIXES = [".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".dicom"]
EXAMPLES_SHOWN = 6
MAX_BATCH_FILES = 100
BATCH_CHUNK = 4  # files per predict_batch call: progress updates stay frequent
CPU_EXCLUDED_METHODS = frozenset({"ScoreCAM"})  # minutes per map on a CPU: blocks everyone
BATCH_CSV = "xray_batch_probabilities.csv"


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


# --------------------------------------------------------------------------- heatmaps
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
    cam = class_map(predictor, study, class_index, method)
    return render.original_and_overlay(study.prediction, class_index, cam, opacity)


def _slider_files(pair: tuple[np.ndarray, np.ndarray], cache_dir: str | Path) -> tuple[str, str]:
    paths = exports.write_original_and_overlay(*pair, exports.fresh_folder(cache_dir))
    return str(paths[0]), str(paths[1])


# --------------------------------------------------------------------------- single study
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
    return result, render.gallery_files(prediction, study.order, cache_dir), study


def summarise(predictor: Predictor, study: Study | None, cache_dir: str | Path) -> tuple[Any, ...]:
    """What follows a prediction: findings table, the flagged / No Finding lines, notes,
    large-view caption, class selector, method and opacity reset, the large view (slider
    files) of the most probable class, and the result section (downloads, other heatmap
    methods) made visible.  Without a study all of it is cleared and the section hidden."""
    if study is None:
        return ([], "", "", "", gr.Dropdown(value=None), explain.FAST_METHOD, render.DEFAULT_OPACITY,
                None, gr.Accordion(visible=False))
    findings = study.prediction.findings
    choices = [
        (f"{findings[i].display_name} — {percent(findings[i].probability)}", LABELS[i]) for i in study.order
    ]
    top = study.order[0]
    selector = gr.Dropdown(choices=choices, value=LABELS[top], interactive=True)
    pair = large_view(predictor, study, top, explain.FAST_METHOD, render.DEFAULT_OPACITY)
    return (
        render.findings_rows(study.prediction),
        render.findings_summary(study.prediction),
        render.study_notes(study.prediction, render.gate_levels(predictor.config)),
        render.large_caption(study.prediction, top, explain.FAST_METHOD),
        selector,
        explain.FAST_METHOD,
        render.DEFAULT_OPACITY,
        _slider_files(pair, cache_dir),
        gr.Accordion(visible=True),
    )


def downloads(study: Study | None, model_info: dict[str, Any], cache_dir: str | Path) -> tuple[Any, Any]:
    """Write the JSON result and the PNG report sheet into Gradio's cache; their paths."""
    if study is None:
        return None, None
    prediction = study.prediction
    directory = exports.fresh_folder(cache_dir)
    stem = exports.safe_stem(prediction.name)
    json_path = exports.write_json(prediction, model_info, directory / f"{stem}{exports.JSON_SUFFIX}")
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
    directory = exports.fresh_folder(cache_dir)
    stem = exports.safe_stem(prediction.name)
    sr_path = None
    if study.source_problem:
        gr.Warning(f"No DICOM SR: {study.source_problem}", duration=20)
    else:
        sr_path = str(exports.write_sr_of(prediction, model_info, study.source,
                                          directory / f"{stem}{exports.SR_SUFFIX}"))
    fhir_path = exports.write_fhir_of(prediction, model_info, study.source,
                                      directory / f"{stem}{exports.FHIR_SUFFIX}")
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
    title = render.large_caption(study.prediction, class_index, method)
    return _slider_files(pair, cache_dir), title, study


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


# --------------------------------------------------------------------------- batch
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
                rows.append([name, status, "", "", str(outcome), render.gate_summary(gate)])
                records.append([name, status, str(outcome), *([""] * len(LABELS))])
            else:
                rows.append(render.batch_row(name, outcome))
                records.append([name, "ok", "; ".join(outcome.warnings),
                                *(f"{p:.6f}" for p in outcome.probabilities)])
    if progress is not None:
        progress(1.0, desc=f"Analysed {len(paths)} of {len(paths)} files")
    csv_path = exports.fresh_folder(cache_dir) / BATCH_CSV
    exports.write_csv(["file", "status", "message", *LABELS], records, csv_path)
    return rows, str(csv_path)


# --------------------------------------------------------------------------- examples
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
