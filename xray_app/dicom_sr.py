"""A prediction as a DICOM Comprehensive 3D Structured Report (TID 1500), with highdicom.

:func:`build_sr` turns the JSON of :func:`xray_app.report.prediction_to_json` (the same
dict the command line prints and the app's API returns) into an SR document:

* title "Imaging Measurement Report" (TID 1500), procedure "Imaging procedure", the
  algorithm as the observer device (TID 1004: name, model, a UID derived from the
  weights' sha256);
* one measurement group (TID 1501) per output, in logit order, its finding type the
  output's concept (:mod:`xray_app.codes`), holding a qualitative evaluation (the
  concept: Present / Absent at the class threshold), the calibrated probability and the
  threshold as unitless numeric values, and the algorithm's identification (TID 4019:
  name, version and ``weights sha256=...`` as its parameter), as the IHE AI Results
  profile does;
* each warning of the JSON (untrained weights, probably not a chest radiograph, an
  out-of-distribution caution...) and the "not for diagnostic use" statement as root
  ``Comment`` text items; fields that a later input gate adds to the JSON are recorded
  the same way, so nothing the JSON says is lost;
* ``VerificationFlag`` UNVERIFIED, ``PreliminaryFlag`` PRELIMINARY, ``CompletionFlag``
  COMPLETE and a series description saying it is not for diagnostic use.

An input that could not be used (``{"file", "error"}``: unreadable, refused by the
out-of-distribution gate) gets no SR: :class:`NoReportError`.

Source image and patient attributes (:func:`read_source_reference`): when the input is
DICOM, the SR joins the source's study (same Study Instance UID) and references the
image (evidence sequence and each group's source image; no image library, whose
entries would need the image's pixel attributes).  What else is
copied depends on the mode:

* ``"demo"`` (the command line's ``--dicom-sr`` and the web demo's download): only the
  four UIDs are read from the header, so the Patient module stays empty (type 2) and no
  identifier is ever read into memory;
* ``"pacs"`` (:mod:`xray_app.dicomweb`, which files the SR beside the image in the PACS
  it came from): also the attributes a PACS needs to file it under the same patient and
  study (:data:`PACS_COPIED`).  Each value is checked against its value representation
  first; an invalid one (a malformed source header) is left out and reported in
  :attr:`SourceReference.problems`, never copied into an invalid SR.

Heatmaps are not part of the SR: they stay PNG overlays (``--heatmaps``).
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import highdicom as hd
import pydicom
from pydicom import config as dicom_config
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as dicom_codes
from pydicom.uid import UID, generate_uid
from pydicom.valuerep import validate_value

from xray_app import codes
from xray_app.preprocess import ImageInputError, Source

Mode = Literal["demo", "pacs"]
MANUFACTURER = "chest-xray-findings (open source)"
SERIES_DESCRIPTION = "AI result - NOT FOR DIAGNOSTIC USE"  # LO: at most 64 characters
SERIES_NUMBER = 9901
NOT_FOR_DIAGNOSTIC_USE = (
    "Not for diagnostic use. Unverified output of a research-demo AI algorithm (not a medical "
    "device); it must not be used for diagnosis or treatment decisions."
)
SOURCE_UIDS: tuple[str, ...] = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "SOPClassUID",
)
# Patient and study attributes copied in "pacs" mode, so that a PACS files the SR under the
# same patient and study as its image (Patient and General Study modules).
PACS_COPIED: tuple[str, ...] = (
    "SpecificCharacterSet",
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyID",
    "ReferringPhysicianName",
)
# type 2 attributes that highdicom reads from the evidence; empty when not copied
_TYPE2_STUDY_PATIENT = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
    "AccessionNumber", "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName",
)
_KNOWN_KEYS = frozenset({"file", "findings", "model", "warnings", "gate"})


class NoReportError(ValueError):
    """No SR can be made for this input (it could not be used, or was refused)."""


class SourceHeaderError(ImageInputError):
    """The source DICOM's header lacks, or holds invalid, UIDs the SR must reference."""


@dataclass(frozen=True)
class SourceReference:
    """What an SR copies from its DICOM source image.

    ``uids``: :data:`SOURCE_UIDS` -> value; ``copied``: patient/study attributes (empty in
    ``"demo"`` mode); ``problems``: one line per source value left out as invalid.
    """

    uids: Mapping[str, str]
    copied: Mapping[str, Any] = field(default_factory=dict)
    problems: tuple[str, ...] = ()

    @property
    def study_uid(self) -> str:
        return self.uids["StudyInstanceUID"]

    @property
    def sop_instance_uid(self) -> str:
        return self.uids["SOPInstanceUID"]

    def as_dataset(self) -> Dataset:
        """The source as highdicom's evidence: UIDs, the copied attributes, empty type 2 rest."""
        dataset = Dataset()
        for keyword in _TYPE2_STUDY_PATIENT:
            setattr(dataset, keyword, None)
        for keyword, value in self.copied.items():
            setattr(dataset, keyword, value)
        for keyword, value in self.uids.items():
            setattr(dataset, keyword, value)
        return dataset


def read_source_reference(source: Source, *, name: str | None = None, mode: Mode = "demo") -> SourceReference:
    """The UIDs (and in ``"pacs"`` mode the :data:`PACS_COPIED` attributes) of a DICOM file.

    Only those tags are parsed (``specific_tags``): in ``"demo"`` mode no patient attribute
    is read into memory.  Raises :class:`SourceHeaderError` naming the file when a UID is
    missing or not a valid DICOM UID.
    """
    if mode not in ("demo", "pacs"):
        raise ValueError(f"mode must be 'demo' or 'pacs', got {mode!r}")
    label = _label(source, name)
    wanted = list(SOURCE_UIDS) + (list(PACS_COPIED) if mode == "pacs" else [])
    data = source if not isinstance(source, (bytes, bytearray)) else io.BytesIO(source)
    try:
        header = pydicom.dcmread(data, force=True, stop_before_pixels=True, specific_tags=wanted)
    except Exception as error:  # pydicom raises many types on garbage bytes
        raise SourceHeaderError(label, f"cannot read the DICOM header ({type(error).__name__})") from None
    uids: dict[str, str] = {}
    for keyword in SOURCE_UIDS:
        value = str(header.get(keyword, "") or "").strip()
        if not value:
            raise SourceHeaderError(label, f"the DICOM header has no {keyword}; the report could not reference the image")
        if not UID(value).is_valid:
            raise SourceHeaderError(label, f"{keyword} {value!r} is not a valid DICOM UID; the report could not reference the image")
        uids[keyword] = value
    copied: dict[str, Any] = {}
    problems: list[str] = []
    for keyword in PACS_COPIED if mode == "pacs" else ():
        if keyword not in header:
            continue
        # Checked raw, before pydicom converts it: converting an invalid value makes pydicom
        # warn and log it, and the log must not hold a patient's attributes.
        raw = header.get_item(keyword)
        vr = raw.VR or dictionary_VR(keyword)  # implicit VR files leave it to the dictionary
        text = raw.value.decode("latin-1") if isinstance(raw.value, bytes) else str(raw.value or "")
        if _invalid_value(vr, text.rstrip(" \x00").split("\\")):
            problems.append(f"{label}: the source's {keyword} is not a valid {vr} value; not copied")
            continue
        copied[keyword] = _single_component_marked(vr, header[keyword].value)
    return SourceReference(uids=uids, copied=copied, problems=tuple(problems))


def _label(source: Source, name: str | None) -> str:
    """The file's base name for messages (never a folder, which may name a patient)."""
    if name:
        return Path(str(name)).name
    if isinstance(source, (str, Path)):
        return Path(source).name
    return Path(str(getattr(source, "name", "") or "<upload>")).name


def _single_component_marked(vr: str, value: Any) -> Any:
    """A person name of one component (``Doe``) written ``Doe^``: the same name in DICOM,
    and highdicom no longer warns about it, which would print the name to the log."""
    text = str(value)
    if vr == "PN" and text and "^" not in text and "=" not in text:
        return text + "^"
    return value


def _invalid_value(vr: str, values: Sequence[str]) -> str | None:
    """Why one of ``values`` is not valid for ``vr``, or None when all are."""
    for item in values:
        try:
            validate_value(vr, item, dicom_config.RAISE)
        except (ValueError, TypeError) as error:
            return str(error).splitlines()[0]
    return None


def sr_instance_uid(source_sop_instance_uid: str | None, sha256: str) -> str:
    """The SR's SOP Instance UID: the same for the same source image and weights (a rerun
    can see that its SR exists; a PACS given it twice keeps one), new for non-DICOM input."""
    if source_sop_instance_uid is None:
        return generate_uid()
    return generate_uid(entropy_srcs=["xray-app sr", source_sop_instance_uid, sha256])


def build_sr(
    record: Mapping[str, Any],
    model_info: Mapping[str, Any],
    *,
    source: SourceReference | None = None,
    now: datetime | None = None,
) -> hd.sr.Comprehensive3DSR:
    """The SR document of one prediction's JSON (see the module docstring).

    ``record``: :func:`xray_app.report.prediction_to_json`'s dict; ``model_info``: the
    predictor's (``name``, ``sha256``, optional ``version``); ``source``: the DICOM image
    it came from, or None for PNG/JPEG/TIFF input (the SR then starts a new study and
    references no image).  Raises :class:`NoReportError` for an error record.
    """
    if "error" in record or "findings" not in record:
        raise NoReportError(f"{record.get('file', '<input>')}: no report for an input that could "
                            f"not be used ({record.get('error', 'no findings')})")
    sha256 = str(record["model"]["sha256"])
    now = now or datetime.now()
    algorithm = algorithm_identification(model_info, sha256)
    evidence = source.as_dataset() if source is not None else _new_study_dataset()
    source_images = None
    if source is not None:
        source_images = [hd.sr.SourceImageForMeasurementGroup(
            referenced_sop_class_uid=source.uids["SOPClassUID"],
            referenced_sop_instance_uid=source.sop_instance_uid,
        )]
    groups = [_finding_group(finding, algorithm, source_images) for finding in record["findings"]]
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=_device_observer(model_info, sha256)),
        procedure_reported=_code(codes.IMAGING_PROCEDURE),
        imaging_measurements=groups,
    )
    root = report[0]
    for text in _comments(record):
        root.ContentSequence.append(hd.sr.TextContentItem(
            name=_code(codes.COMMENT), value=text, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        ))
    sr = hd.sr.Comprehensive3DSR(
        evidence=[evidence],
        content=report,
        series_instance_uid=generate_uid(),
        series_number=SERIES_NUMBER,
        sop_instance_uid=sr_instance_uid(source.sop_instance_uid if source else None, sha256),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=SERIES_DESCRIPTION,
        manufacturer_model_name=str(model_info["name"])[:64],
        software_versions=algorithm_version(model_info, sha256)[:64],
        content_date=now.date(),
        content_time=now.time(),
    )
    if source is None:  # nothing referenced: the evidence item was only the study's carrier
        for keyword in ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence"):
            if keyword in sr:
                delattr(sr, keyword)
    if any(concept.scheme == codes.LOCAL_SCHEME for concept in codes.FINDING_CONCEPTS.values()):
        sr.CodingSchemeIdentificationSequence = [_local_scheme_item()]
    return sr


def write_sr(sr: Dataset, path: str | Path) -> Path:
    """Write ``sr`` as a DICOM Part 10 file; returns the path."""
    path = Path(path)
    sr.save_as(path, enforce_file_format=True)
    return path


def algorithm_version(model_info: Mapping[str, Any], sha256: str) -> str:
    """The config's ``version`` when it has one, else ``sha256:`` and the weights' first 16 hex digits."""
    version = model_info.get("version")
    return str(version) if version else f"sha256:{sha256[:16]}"


def algorithm_identification(model_info: Mapping[str, Any], sha256: str) -> hd.sr.AlgorithmIdentification:
    """TID 4019: the model's name and version, its weights' full sha256 as the parameter."""
    return hd.sr.AlgorithmIdentification(
        name=str(model_info["name"]),
        version=algorithm_version(model_info, sha256),
        parameters=[f"weights sha256={sha256}"],
        manufacturer=MANUFACTURER,
    )


def _device_observer(model_info: Mapping[str, Any], sha256: str) -> hd.sr.ObserverContext:
    return hd.sr.ObserverContext(
        observer_type=dicom_codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=["xray-app device", sha256]),
            name=str(model_info["name"])[:64],
            manufacturer_name=MANUFACTURER,
            model_name=str(model_info["name"])[:64],
        ),
    )


def _finding_group(
    finding: Mapping[str, Any],
    algorithm: hd.sr.AlgorithmIdentification,
    source_images: Sequence[hd.sr.SourceImageForMeasurementGroup] | None,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    concept = _code(codes.finding_concept(finding["label"]))
    unit = _code(codes.UNITLESS)
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=str(finding["label"])),
        finding_type=concept,
        algorithm_id=algorithm,
        measurements=[
            hd.sr.Measurement(name=_code(codes.PROBABILITY), value=float(finding["probability"]), unit=unit),
            hd.sr.Measurement(name=_code(codes.THRESHOLD), value=float(finding["threshold"]), unit=unit),
        ],
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(
            name=concept, value=_code(codes.PRESENT if finding["positive"] else codes.ABSENT),
        )],
        source_images=source_images,
    )


def _comments(record: Mapping[str, Any]) -> list[str]:
    """The disclaimer, each warning, the input gate's verdict (when the weights have a
    gate), then any other field the JSON gained (as JSON text)."""
    texts = [NOT_FOR_DIAGNOSTIC_USE]
    texts += [f"Warning: {warning}" for warning in record.get("warnings", [])]
    gate = record.get("gate")
    if gate:
        texts.append(f"Input gate: {gate.get('verdict')} (check {gate.get('check') or 'none'} "
                     f"fired at level {gate.get('level')}, score {gate.get('score')})")
    for key in sorted(set(record) - _KNOWN_KEYS):
        texts.append(f"{key}: {json.dumps(record[key], sort_keys=True)}")
    return texts


def _code(concept: codes.Concept) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value=concept.value, scheme_designator=concept.scheme, meaning=concept.meaning)


def _local_scheme_item() -> Dataset:
    item = Dataset()
    item.CodingSchemeDesignator = codes.LOCAL_SCHEME
    item.CodingSchemeName = codes.LOCAL_SCHEME_NAME
    item.CodingSchemeResponsibleOrganization = "chest-xray-findings open-source project"
    return item


def _new_study_dataset() -> Dataset:
    """Evidence for an SR of a non-DICOM input: a new study, empty patient attributes."""
    dataset = Dataset()
    for keyword in _TYPE2_STUDY_PATIENT:
        setattr(dataset, keyword, None)
    dataset.StudyInstanceUID = generate_uid()
    dataset.SeriesInstanceUID = generate_uid()
    dataset.SOPInstanceUID = generate_uid()
    dataset.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # never referenced: removed after building
    return dataset
