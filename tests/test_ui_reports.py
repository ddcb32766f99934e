"""The web demo's DICOM SR and FHIR downloads (xray_app.ui.report_downloads), called
directly on the session's random-init CPU predictor: demo mode, so a DICOM upload's SR
carries its UIDs and neither file names the patient."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.dicom_factory import PATIENT, make_dicom, nih_gray
from tests.paths import NIH_IMAGES
from tests.system_tools import dciodvfy_report
from xray_app import fhir, ui
from xray_app.labels import LABELS


def _patient_dicom(tmp_path: Path, *, with_uids: bool) -> Path:
    ds = make_dicom(nih_gray(), bits_stored=8, patient=PATIENT)
    if with_uids:
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    path = tmp_path / "upload.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def _leaked(*texts: str) -> list[str]:
    joined = "".join(texts)
    return [key for key, value in PATIENT.items() if len(value) >= 4 and value in joined]


def test_a_dicom_upload_downloads_a_valid_sr_and_fhir_report_without_patient_identity(cpu_predictor, tmp_path):
    path = _patient_dicom(tmp_path, with_uids=True)
    with pytest.warns(UserWarning):  # the UNTRAINED warning of the random-init weights
        _, _, study = ui.analyse(cpu_predictor, str(path), tmp_path)
    sr_path, fhir_path = ui.report_downloads(study, cpu_predictor.model_info, tmp_path)
    errors, _ = dciodvfy_report(Path(sr_path))
    assert errors == [], f"dciodvfy must report no error for the downloaded SR: {errors}"
    source, sr = pydicom.dcmread(path), pydicom.dcmread(sr_path)
    assert sr.StudyInstanceUID == source.StudyInstanceUID, "the SR joins the upload's study"
    assert not sr.PatientID and not sr.PatientName, "demo mode: the patient module stays empty"
    report = json.loads(Path(fhir_path).read_text())
    fhir.validate(report)
    assert len(report["result"]) == len(LABELS), "one Observation per output"
    leaked = _leaked(Path(sr_path).read_bytes().decode("latin-1"), json.dumps(report))
    assert leaked == [], f"patient attributes leaked into the downloads: {leaked}"


def test_a_dicom_without_uids_gets_a_fhir_report_and_a_reason_instead_of_an_sr(cpu_predictor, tmp_path):
    path = _patient_dicom(tmp_path, with_uids=False)
    with pytest.warns(UserWarning):
        _, _, study = ui.analyse(cpu_predictor, str(path), tmp_path)
    with pytest.warns(UserWarning, match="No DICOM SR: upload.dcm: the DICOM header has no StudyInstanceUID"):
        sr_path, fhir_path = ui.report_downloads(study, cpu_predictor.model_info, tmp_path)
    assert sr_path is None, "no SR that could not reference its image"
    assert fhir.validate(json.loads(Path(fhir_path).read_text())).status == "preliminary"


def test_a_png_upload_downloads_an_sr_of_a_new_study(cpu_predictor, tmp_path):
    with pytest.warns(UserWarning):
        _, _, study = ui.analyse(cpu_predictor, str(NIH_IMAGES / "00000075_000.png"), tmp_path)
    sr_path, _ = ui.report_downloads(study, cpu_predictor.model_info, tmp_path)
    errors, _ = dciodvfy_report(Path(sr_path))
    assert errors == [], f"dciodvfy must report no error for the downloaded SR: {errors}"
    sr = pydicom.dcmread(sr_path)
    assert "CurrentRequestedProcedureEvidenceSequence" not in sr, "a PNG has no DICOM image to reference"
    assert Path(sr_path).name == "00000075_000.sr.dcm", f"named after the upload, got {Path(sr_path).name}"


def test_the_page_offers_both_downloads(cpu_predictor):
    config = ui.build_demo(cpu_predictor).get_config_file()
    labels = {c.get("props", {}).get("value") for c in config["components"] if c.get("type") == "downloadbutton"}
    labels |= {c.get("props", {}).get("label") for c in config["components"] if c.get("type") == "downloadbutton"}
    assert {"DICOM SR", "FHIR report"} <= labels, f"expected the two download buttons, got {labels}"
