"""Write one prediction as a DICOM SR or a FHIR DiagnosticReport file.

Shared by the command line (``--dicom-sr``, ``--fhir``) and the web demo's downloads,
both in ``"demo"`` mode: of a DICOM input only the Study, Series and SOP Instance UIDs
and the SOP Class UID are read (:func:`xray_app.dicom_sr.read_source_reference`), so the
files name no patient.  Both are built from :func:`xray_app.report.prediction_to_json`,
the JSON the command line prints.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from xray_app import dicom_sr, fhir
from xray_app.predictor import Prediction
from xray_app.preprocess import Source
from xray_app.report import prediction_to_json

SR_SUFFIX = ".sr.dcm"
FHIR_SUFFIX = ".fhir.json"


def output_path(option: Path, stem: str, suffix: str, *, several: bool) -> Path:
    """Where one input's file goes: ``option`` itself for a single input (unless it is a
    folder), else ``option/<stem><suffix>`` with the folder created."""
    if not several and not option.is_dir():
        option.parent.mkdir(parents=True, exist_ok=True)
        return option
    option.mkdir(parents=True, exist_ok=True)
    return option / f"{stem}{suffix}"


def source_reference(source: Source, prediction: Prediction) -> dicom_sr.SourceReference | None:
    """The UIDs of a DICOM input (demo mode: no patient attribute), None for other formats."""
    if prediction.image.format != "DICOM":
        return None
    return dicom_sr.read_source_reference(source, name=prediction.name, mode="demo")


def write_dicom_sr(source: Source, prediction: Prediction, model_info: dict[str, Any], path: Path) -> Path:
    """The prediction as a Comprehensive 3D SR at ``path``.

    Raises :class:`~xray_app.dicom_sr.SourceHeaderError` when a DICOM input lacks valid UIDs.
    """
    record = prediction_to_json(prediction, model_info)
    sr = dicom_sr.build_sr(record, model_info, source=source_reference(source, prediction))
    return dicom_sr.write_sr(sr, path)


def write_fhir(source: Source, prediction: Prediction, model_info: dict[str, Any], path: Path) -> Path:
    """The prediction as a FHIR DiagnosticReport (JSON) at ``path``, validated before writing."""
    record = prediction_to_json(prediction, model_info)
    report = fhir.build_diagnostic_report(record, model_info, source=source_reference(source, prediction))
    fhir.validate(report)
    path.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path
