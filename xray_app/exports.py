"""Every file the app writes for one prediction: DICOM SR, FHIR, JSON, images, CSV.

Shared by the command line (``--dicom-sr``, ``--fhir``) and the web demo's downloads,
both in ``"demo"`` mode: of a DICOM input only the Study, Series and SOP Instance UIDs
and the SOP Class UID are read (:func:`xray_app.dicom_sr.read_source_reference`), so the
files name no patient.  The SR, the FHIR report and the JSON are built from
:func:`xray_app.report.prediction_to_json`, the JSON the command line prints.  The web
demo writes into a :func:`fresh_folder` of Gradio's cache, so ``delete_cache`` removes it.
"""

from __future__ import annotations

import csv
import json
import re
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from xray_app import dicom_sr, fhir
from xray_app.predictor import Prediction
from xray_app.preprocess import Source
from xray_app.report import prediction_to_json

SR_SUFFIX = ".sr.dcm"
FHIR_SUFFIX = ".fhir.json"
JSON_SUFFIX = ".xray.json"
JPEG_THREADS = 2  # drawing and encoding release the GIL: two threads halve the time


def output_path(option: Path, stem: str, suffix: str, *, several: bool) -> Path:
    """Where one input's file goes: ``option`` itself for a single input (unless it is a
    folder), else ``option/<stem><suffix>`` with the folder created."""
    if not several and not option.is_dir():
        option.parent.mkdir(parents=True, exist_ok=True)
        return option
    option.mkdir(parents=True, exist_ok=True)
    return option / f"{stem}{suffix}"


def fresh_folder(parent: str | Path) -> Path:
    """A new, uniquely named folder inside ``parent`` (the web demo: Gradio's cache)."""
    directory = Path(parent) / f"xray-{uuid.uuid4().hex}"
    directory.mkdir(parents=True)
    return directory


def safe_stem(name: str) -> str:
    """A file name's stem reduced to ``[A-Za-z0-9._-]`` (at most 80 characters), for the
    names of the files written about it."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).stem).strip("._") or "study"
    return stem[:80]


# --------------------------------------------------------------------------- reports
def source_reference(source: Source, prediction: Prediction) -> dicom_sr.SourceReference | None:
    """The UIDs of a DICOM input (demo mode: no patient attribute), None for other formats."""
    if prediction.image.format != "DICOM":
        return None
    return dicom_sr.read_source_reference(source, name=prediction.name, mode="demo")


def write_dicom_sr(source: Source, prediction: Prediction, model_info: dict[str, Any], path: Path) -> Path:
    """The prediction as a Comprehensive 3D SR at ``path``.

    Raises :class:`~xray_app.dicom_sr.SourceHeaderError` when a DICOM input lacks valid UIDs.
    """
    return write_sr_of(prediction, model_info, source_reference(source, prediction), path)


def write_fhir(source: Source, prediction: Prediction, model_info: dict[str, Any], path: Path) -> Path:
    """The prediction as a FHIR DiagnosticReport (JSON) at ``path``, validated before writing."""
    return write_fhir_of(prediction, model_info, source_reference(source, prediction), path)


def write_sr_of(prediction: Prediction, model_info: dict[str, Any],
                reference: dicom_sr.SourceReference | None, path: Path) -> Path:
    """:func:`write_dicom_sr` with the input's UIDs already read (``None``: not a DICOM)."""
    sr = dicom_sr.build_sr(prediction_to_json(prediction, model_info), model_info, source=reference)
    return dicom_sr.write_sr(sr, path)


def write_fhir_of(prediction: Prediction, model_info: dict[str, Any],
                  reference: dicom_sr.SourceReference | None, path: Path) -> Path:
    """:func:`write_fhir` with the input's UIDs already read (``None``: not a DICOM)."""
    record = prediction_to_json(prediction, model_info)
    resource = fhir.build_diagnostic_report(record, model_info, source=reference)
    fhir.validate(resource)
    path.write_text(json.dumps(resource, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path


def write_json(prediction: Prediction, model_info: dict[str, Any], path: Path) -> Path:
    """:func:`~xray_app.report.prediction_to_json` written indented at ``path``."""
    path.write_text(json.dumps(prediction_to_json(prediction, model_info), indent=2) + "\n",
                    encoding="utf-8")
    return path


# --------------------------------------------------------------------------- images, tables
def write_jpegs(drawings: Sequence[tuple[Path, Callable[[], np.ndarray]]], quality: int) -> list[Path]:
    """Draw and write each ``(path, draw)``: ``draw()`` returns an ``(H, W, 3)`` uint8 BGR
    image.  Runs on :data:`JPEG_THREADS` threads (OpenCV and NumPy release the GIL): after
    the forward pass, drawing and encoding the 15 heatmaps is most of what ``/predict``
    costs on a CPU.  Returns the paths in order."""

    def write(item: tuple[Path, Callable[[], np.ndarray]]) -> Path:
        path, draw = item
        cv2.imwrite(str(path), draw(), [cv2.IMWRITE_JPEG_QUALITY, quality])
        return path

    with ThreadPoolExecutor(max_workers=JPEG_THREADS) as pool:
        return list(pool.map(write, drawings))


def write_original_and_overlay(original: np.ndarray, overlay: np.ndarray, directory: Path) -> tuple[Path, Path]:
    """``(H, W, 3)`` uint8 RGB greyscale original and heatmap overlay, as the files of the
    web demo's slider: ``original.png`` (lossless, one channel) and ``heatmap.jpg``.

    Written here rather than by Gradio because its default PNG encoder spends ~0.25 s on
    each 1024 px RGB image; a one-channel PNG at low compression takes ~20 ms, and the
    coloured overlay loses nothing a reader needs at JPEG quality 90.
    """
    original_path, overlay_path = directory / "original.png", directory / "heatmap.jpg"
    cv2.imwrite(str(original_path), original[..., 0], [cv2.IMWRITE_PNG_COMPRESSION, 1])
    cv2.imwrite(str(overlay_path), overlay[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
    return original_path, overlay_path


def write_csv(header: Sequence[str], rows: Sequence[Sequence[Any]], path: Path) -> Path:
    """A UTF-8 CSV at ``path``: ``header`` then ``rows``."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path
