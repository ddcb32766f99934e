"""Coded concepts for the 15 outputs and for the results' structure: the ONE table.

The DICOM Structured Report (:mod:`xray_app.dicom_sr`) and the FHIR resources
(:mod:`xray_app.fhir`) both code their findings from here, so the two cannot disagree.

Sources, as recorded in each :class:`Concept`'s ``source``:

* ``DICOM PS3.16``: the concept appears with this code and meaning in the DICOM
  standard's Part 16 (Content Mapping Resource); a test checks each against the code
  dictionary pydicom generates from that part.
* ``SNOMED CT``: a SNOMED CT International Edition concept (``http://snomed.info/sct``)
  that Part 16 does not list, as public chest X-ray code mappings use it; no SNOMED CT
  release is available offline to check it against, so it is not machine-checked: have
  a terminologist confirm these before a deployment relies on them.
* ``local``: no standard concept fits; coded in this product's own scheme
  :data:`LOCAL_SCHEME` (a ``99``-prefixed designator, which DICOM reserves for private
  schemes) and named plainly.

Mapping choices: NIH's "Mass" and "Nodule" are coded with the generic morphology
concepts Part 16 lists (the report's procedure already says "chest"); NIH's "Hernia"
labels are hiatal hernias on chest films, so it is coded as hiatal hernia; "No Finding"
is coded "Normal".  "Pleural thickening" keeps a local code: no SNOMED CT concept for it
could be checked when this table was written.
"""

from __future__ import annotations

from dataclasses import dataclass

from xray_app.labels import LABELS

SNOMED_SYSTEM = "http://snomed.info/sct"
LOINC_SYSTEM = "http://loinc.org"
DICOM_SYSTEM = "http://dicom.nema.org/resources/ontology/DCM"
UCUM_SYSTEM = "http://unitsofmeasure.org"
LOCAL_SCHEME = "99XRAYAPP"
LOCAL_SYSTEM = "urn:xray-app:codes"
LOCAL_SCHEME_NAME = "Chest X-ray findings product codes"

# DICOM coding scheme designator -> FHIR code system URI
FHIR_SYSTEMS: dict[str, str] = {
    "SCT": SNOMED_SYSTEM,
    "LN": LOINC_SYSTEM,
    "DCM": DICOM_SYSTEM,
    "UCUM": UCUM_SYSTEM,
    LOCAL_SCHEME: LOCAL_SYSTEM,
}


@dataclass(frozen=True)
class Concept:
    """One coded concept: ``scheme`` is the DICOM coding scheme designator (``SCT``,
    ``DCM``, ``LN``, ``UCUM`` or :data:`LOCAL_SCHEME`), ``value`` the code, ``meaning``
    its display text, ``source`` where it was taken from (see the module docstring)."""

    scheme: str
    value: str
    meaning: str
    source: str

    @property
    def fhir_system(self) -> str:
        """The FHIR code system URI of :attr:`scheme`."""
        return FHIR_SYSTEMS[self.scheme]


def _ps316(scheme: str, value: str, meaning: str) -> Concept:
    return Concept(scheme, value, meaning, "DICOM PS3.16")


def _sct(value: str, meaning: str) -> Concept:
    return Concept("SCT", value, meaning, "SNOMED CT")


# The 15 outputs in logit order (keys are xray_app.labels.LABELS).
FINDING_CONCEPTS: dict[str, Concept] = {
    "Atelectasis": _sct("46621007", "Atelectasis"),
    "Cardiomegaly": _ps316("SCT", "287272002", "Cardiomegaly"),
    "Effusion": _ps316("SCT", "60046008", "Pleural effusion"),
    "Infiltration": _sct("409609008", "Radiologic infiltrate of lung"),
    "Mass": _ps316("SCT", "4147007", "Mass"),
    "Nodule": _ps316("SCT", "27925004", "Nodule"),
    "Pneumonia": _sct("233604007", "Pneumonia"),
    "Pneumothorax": _ps316("SCT", "36118008", "Pneumothorax"),
    "Consolidation": _sct("95436008", "Lung consolidation"),
    "Edema": _ps316("SCT", "19242006", "Pulmonary edema"),
    "Emphysema": _sct("87433001", "Pulmonary emphysema"),
    "Fibrosis": _sct("51615001", "Fibrosis of lung"),
    "Pleural_Thickening": Concept(LOCAL_SCHEME, "PLEURAL-THICKENING", "Pleural thickening", "local"),
    "Hernia": _sct("84089009", "Hiatal hernia"),
    "No Finding": _ps316("SCT", "17621005", "Normal"),
}

# Structure of the results
PRESENT = _ps316("SCT", "52101004", "Present")
ABSENT = _ps316("SCT", "272519000", "Absent")
PROBABILITY = _ps316("DCM", "122157", "Probability")
THRESHOLD = _ps316("DCM", "122411", "Threshold Value")
COMMENT = _ps316("DCM", "121106", "Comment")
IMAGING_PROCEDURE = _ps316("SCT", "363679005", "Imaging procedure")
DIAGNOSTIC_IMAGING_REPORT = _ps316("LN", "18748-4", "Diagnostic Imaging Report")
UNITLESS = Concept("UCUM", "1", "no units", "UCUM")


def finding_concept(label: str) -> Concept:
    """The concept of one of the 15 labels (NIH spelling); ``KeyError`` names an unknown one."""
    try:
        return FINDING_CONCEPTS[label]
    except KeyError:
        raise KeyError(f"no coded concept for label {label!r}; expected one of {', '.join(LABELS)}") from None
