"""FHIR: ``--fhir`` writes a DiagnosticReport that fhir.resources (R4B models) accepts,
with one Observation per output holding exactly the JSON's values."""

from __future__ import annotations

import contextlib
import copy
import io
import json

import pydicom
import pytest
from fhir.resources.R4B.diagnosticreport import DiagnosticReport

from tests.paths import DICOM_DIR
from xray_app import codes, dicom_sr, fhir, predict
from xray_app.labels import LABELS

SHARED_DICOM = DICOM_DIR / "siim_pneumothorax_example.dcm"


@pytest.fixture(scope="module")
def written(tmp_path_factory, random_init_checkpoint):
    """(JSON record, written DiagnosticReport dict) of one CLI run on the shared DICOM."""
    out = tmp_path_factory.mktemp("fhir") / "report.json"
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        status = predict.main([str(SHARED_DICOM), "--json", "--fhir", str(out),
                               "--weights", str(random_init_checkpoint)])
    assert status == 0, f"expected exit status 0, got {status}"
    return json.loads(buffer.getvalue()), json.loads(out.read_text())


def test_the_report_validates_and_holds_one_observation_per_output(written):
    record, report = written
    parsed = DiagnosticReport.model_validate(report)
    assert parsed.status == "preliminary", f"unverified AI output is preliminary, got {parsed.status}"
    assert parsed.conclusion.startswith(dicom_sr.NOT_FOR_DIAGNOSTIC_USE), parsed.conclusion[:80]
    for warning in record["warnings"]:
        assert warning in parsed.conclusion, f"warning missing from the conclusion: {warning[:60]}"
    contained = {resource["id"]: resource for resource in report["contained"]}
    observations = [contained[ref["reference"][1:]] for ref in report["result"]]
    assert len(observations) == len(LABELS), f"expected {len(LABELS)} observations, got {len(observations)}"
    for observation, finding in zip(observations, record["findings"], strict=True):
        fhir.validate(observation)
        concept = codes.finding_concept(finding["label"])
        assert observation["code"]["coding"][0] == {
            "system": concept.fhir_system, "code": concept.value, "display": concept.meaning}
        assert observation["valueQuantity"]["value"] == finding["probability"], finding["label"]
        threshold = observation["component"][0]
        assert threshold["code"]["coding"][0]["code"] == codes.THRESHOLD.value
        assert threshold["valueQuantity"]["value"] == finding["threshold"], finding["label"]
        interpretation = observation["interpretation"][0]["coding"][0]["code"]
        assert interpretation == ("POS" if finding["positive"] else "NEG"), finding["label"]
        assert observation["device"] == {"reference": "#algorithm"}, "each observation names the algorithm"


def test_the_device_names_the_model_and_its_weights(written):
    record, report = written
    device = next(r for r in report["contained"] if r["resourceType"] == "Device")
    fhir.validate(device)
    assert device["deviceName"][0]["name"] == record["model"]["name"]
    assert device["identifier"][0]["value"] == record["model"]["sha256"], "the weights' sha256"
    assert device["note"][0]["text"] == dicom_sr.NOT_FOR_DIAGNOSTIC_USE


def test_the_report_points_at_the_source_study_and_names_no_patient(written):
    _, report = written
    source = pydicom.dcmread(SHARED_DICOM, stop_before_pixels=True)
    assert report["imagingStudy"][0]["identifier"]["value"] == f"urn:oid:{source.StudyInstanceUID}"
    assert "subject" not in report, "the product never reads patient identity"
    assert source.PatientID not in json.dumps(report), "no patient identifier in the report"


@pytest.mark.parametrize("element, change", [
    ("status", None),  # required 1..1
    ("results", [{"reference": "#finding-00"}]),  # no such element (it is "result")
    ("issued", "yesterday"),  # not an instant
])
def test_validation_rejects_a_broken_report(written, element, change):
    _, report = written
    broken = copy.deepcopy(report)
    if change is None:
        del broken[element]
    else:
        broken[element] = change
    with pytest.raises(fhir.FhirValidationError, match=element):
        fhir.validate(broken)
