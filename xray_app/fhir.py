"""A prediction as a FHIR ``DiagnosticReport`` (R4 structure, validated with fhir.resources R4B).

:func:`build_diagnostic_report` turns the JSON of
:func:`xray_app.report.prediction_to_json` into one self-contained resource:

* ``DiagnosticReport``: status ``preliminary`` (unverified AI output), category Radiology,
  code LOINC 18748-4 "Diagnostic Imaging Report", ``issued`` now, a ``conclusion`` that
  starts with the "not for diagnostic use" statement and lists the findings above
  threshold and every warning, the same statement in its narrative ``text``, and, when
  the input was DICOM, ``imagingStudy`` by identifier (the Study Instance UID as
  ``urn:oid:...``);
* ``contained``: the algorithm as a ``Device`` (model name, version, the weights' sha256
  as an identifier) and one ``Observation`` per output, in logit order: ``code`` from
  :mod:`xray_app.codes` (the concepts the DICOM SR uses), ``valueQuantity`` the
  calibrated probability (UCUM ``1``), a ``component`` with the class threshold,
  ``interpretation`` POS or NEG (probability at or above the threshold, or below), its
  ``device`` the contained Device.

Contained rather than separate resources: one file the app can offer and a server can
take in one POST; the price is that a server does not index the Observations on their
own.  No patient is referenced (``subject`` is optional): the product never reads
patient identity; a system that files the report attaches its own subject.

Why R4B: fhir.resources 8 ships the R5 models and an ``R4B`` (4.3.0) package, no 4.0.1
one.  The elements used here have the same names, types and cardinalities in R4 and
R4B, so the resource is also valid R4.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from xray_app import codes
from xray_app.dicom_sr import (
    MANUFACTURER,
    NOT_FOR_DIAGNOSTIC_USE,
    NoReportError,
    SourceReference,
    algorithm_version,
)
from xray_app.flags import ABOVE, flag_wording
from xray_app.labels import display_name

FHIR_VERSION = "4.3.0"  # fhir.resources.R4B.__fhir_version__
CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/v2-0074"
OBSERVATION_CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/observation-category"
INTERPRETATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
WEIGHTS_SHA256_SYSTEM = "urn:xray-app:weights-sha256"
DEVICE_ID = "algorithm"


class FhirValidationError(ValueError):
    """A resource does not validate against the FHIR models; the message says where."""


def build_diagnostic_report(
    record: Mapping[str, Any],
    model_info: Mapping[str, Any],
    *,
    source: SourceReference | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The ``DiagnosticReport`` (a JSON-ready dict) of one prediction's JSON record.

    Raises :class:`~xray_app.dicom_sr.NoReportError` for an error record (an input that
    could not be used gets no report).
    """
    if "error" in record or "findings" not in record:
        raise NoReportError(f"{record.get('file', '<input>')}: no report for an input that could "
                            f"not be used ({record.get('error', 'no findings')})")
    issued = (now or datetime.now(timezone.utc)).astimezone(timezone.utc).isoformat(timespec="seconds")
    observations = [_observation(index, finding) for index, finding in enumerate(record["findings"])]
    conclusion = _conclusion(record)
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "text": {
            "status": "generated",
            "div": f'<div xmlns="http://www.w3.org/1999/xhtml"><p>{html.escape(conclusion)}</p></div>',
        },
        "contained": [_device(model_info, str(record["model"]["sha256"])), *observations],
        "status": "preliminary",
        "category": [{"coding": [{"system": CATEGORY_SYSTEM, "code": "RAD", "display": "Radiology"}]}],
        "code": {"coding": [_coding(codes.DIAGNOSTIC_IMAGING_REPORT)],
                 "text": "Chest radiograph findings by an AI algorithm (research demo)"},
        "issued": issued,
        "result": [{"reference": f"#{observation['id']}"} for observation in observations],
        "conclusion": conclusion,
    }
    if source is not None:
        report["imagingStudy"] = [{
            "type": "ImagingStudy",
            "identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{source.study_uid}"},
        }]
    return report


def validate(resource: Mapping[str, Any]) -> Any:
    """The resource parsed by fhir.resources' R4B models; raises :class:`FhirValidationError`."""
    from fhir.resources.R4B import get_fhir_model_class
    from pydantic import ValidationError

    try:
        model = get_fhir_model_class(str(resource.get("resourceType")))
        return model.model_validate(dict(resource))
    except (ValidationError, KeyError, ValueError) as error:
        raise FhirValidationError(f"{resource.get('resourceType', 'resource')} is not valid FHIR "
                                  f"{FHIR_VERSION}: {error}") from None


def _observation(index: int, finding: Mapping[str, Any]) -> dict[str, Any]:
    concept = codes.finding_concept(str(finding["label"]))
    positive = bool(finding["positive"])
    return {
        "resourceType": "Observation",
        "id": f"finding-{index:02d}",
        "status": "preliminary",
        "category": [{"coding": [{"system": OBSERVATION_CATEGORY_SYSTEM, "code": "imaging", "display": "Imaging"}]}],
        "code": {"coding": [_coding(concept)], "text": display_name(str(finding["label"]))},
        "valueQuantity": _unitless(finding["probability"], "probability"),
        "interpretation": [{"coding": [{
            "system": INTERPRETATION_SYSTEM,
            "code": "POS" if positive else "NEG",
            "display": "Positive" if positive else "Negative",
        }], "text": flag_wording(positive)}],
        "component": [{
            "code": {"coding": [_coding(codes.THRESHOLD)], "text": "operating point (decision threshold) of this class"},
            "valueQuantity": _unitless(finding["threshold"], "probability"),
        }],
        "device": {"reference": f"#{DEVICE_ID}"},
    }


def _device(model_info: Mapping[str, Any], sha256: str) -> dict[str, Any]:
    return {
        "resourceType": "Device",
        "id": DEVICE_ID,
        "identifier": [{"system": WEIGHTS_SHA256_SYSTEM, "value": sha256}],
        "manufacturer": MANUFACTURER,
        "deviceName": [{"name": str(model_info["name"]), "type": "model-name"}],
        "type": {"text": "AI algorithm: chest radiograph classifier (research demo, not a medical device)"},
        "version": [{"value": algorithm_version(model_info, sha256)}],
        "note": [{"text": NOT_FOR_DIAGNOSTIC_USE}],
    }


def _conclusion(record: Mapping[str, Any]) -> str:
    positives = [display_name(str(f["label"])) for f in record["findings"] if f["positive"]]
    parts = [NOT_FOR_DIAGNOSTIC_USE,
             "Flagged (" + ABOVE + "): " + (", ".join(positives) if positives else "none of the 15 outputs") + "."]
    parts += [f"Warning: {warning}" for warning in record.get("warnings", [])]
    return " ".join(parts)


def _coding(concept: codes.Concept) -> dict[str, str]:
    return {"system": concept.fhir_system, "code": concept.value, "display": concept.meaning}


def _unitless(value: Any, unit: str) -> dict[str, Any]:
    return {"value": float(value), "unit": unit, "system": codes.UCUM_SYSTEM, "code": codes.UNITLESS.value}
