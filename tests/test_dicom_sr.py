"""DICOM Structured Reports: ``--dicom-sr`` writes a TID 1500 SR that ``dciodvfy`` accepts
and that reads back (pydicom + highdicom) as exactly the JSON the command line prints.

The SRs are made from the shared real CR DICOM, a shared NIH PNG, and DICOMs built from
the shared radiographs carrying fake patient identifiers (:data:`tests.dicom_factory.PATIENT`).
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom.sr.codedict import codes as dicom_codes
from pydicom.uid import generate_uid

from tests.dicom_factory import PATIENT, make_dicom, nih_gray
from tests.paths import DICOM_DIR, NIH_IMAGES
from tests.system_tools import dciodvfy_report
from xray_app import codes, dicom_sr, predict
from xray_app.labels import LABELS
from xray_app.report import prediction_to_json

SHARED_DICOM = DICOM_DIR / "siim_pneumothorax_example.dcm"
NIH_PNG = NIH_IMAGES / "00000075_000.png"


def _run_cli(capsys, *args: str) -> tuple[int, list[dict], str]:
    capsys.readouterr()
    status = predict.main(list(args))
    captured = capsys.readouterr()
    records = [json.loads(line) for line in captured.out.splitlines() if line.startswith("{")]
    return status, records, captured.err


@pytest.fixture(scope="module")
def cli_outputs(tmp_path_factory, random_init_checkpoint):
    """One ``--json --dicom-sr`` run over the shared DICOM and a shared PNG: (records, folder)."""
    out = tmp_path_factory.mktemp("sr")
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        status = predict.main([str(SHARED_DICOM), str(NIH_PNG), "--json", "--dicom-sr", str(out),
                               "--weights", str(random_init_checkpoint)])
    assert status == 0, f"expected exit status 0 for two good inputs, got {status}"
    records = {json.loads(line)["file"]: json.loads(line) for line in buffer.getvalue().splitlines()}
    return records, out


def _groups(path: Path) -> list:
    sr = hd.sr.srread(path)
    return sr, sr.content.get_image_measurement_groups()


def _assert_no_dciodvfy_errors(path: Path) -> None:
    errors, _ = dciodvfy_report(path)
    assert errors == [], f"dciodvfy must report no error for {path.name}, got: {errors}"


def test_sr_of_a_dicom_is_valid_and_reads_back_as_the_json(cli_outputs):
    records, out = cli_outputs
    path = out / f"{SHARED_DICOM.stem}{'.sr.dcm'}"
    assert path.is_file(), f"expected the SR at {path}, found {sorted(p.name for p in out.iterdir())}"
    _assert_no_dciodvfy_errors(path)
    record = records[SHARED_DICOM.name]
    sr, groups = _groups(path)
    source = pydicom.dcmread(SHARED_DICOM, stop_before_pixels=True)

    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34", "expected Comprehensive 3D SR storage"
    assert sr.VerificationFlag == "UNVERIFIED", f"expected UNVERIFIED, got {sr.VerificationFlag}"
    assert "NOT FOR DIAGNOSTIC USE" in sr.SeriesDescription, f"series description: {sr.SeriesDescription!r}"
    assert sr.StudyInstanceUID == source.StudyInstanceUID, "the SR must join the source's study"
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == source.StudyInstanceUID, "evidence names the source study"
    assert evidence.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    referenced = evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert (referenced.ReferencedSOPInstanceUID, referenced.ReferencedSOPClassUID) == (
        source.SOPInstanceUID, source.SOPClassUID), "evidence must reference the source image"
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber"):
        assert not sr.get(keyword), f"demo mode must leave {keyword} empty, got {sr.get(keyword)!r}"
    assert source.PatientID.encode() not in path.read_bytes(), "the source's Patient ID must not be in the SR"

    assert len(groups) == len(LABELS), f"expected one measurement group per output, got {len(groups)}"
    for group, finding in zip(groups, record["findings"], strict=True):
        concept = codes.finding_concept(finding["label"])
        assert (group.finding_type.value, group.finding_type.scheme_designator) == (concept.value, concept.scheme)
        evaluation = group.get_qualitative_evaluations()[0]
        expected = codes.PRESENT if finding["positive"] else codes.ABSENT
        assert evaluation.name.value == concept.value, f"{finding['label']}: evaluation names its concept"
        assert evaluation.value.value == expected.value, f"{finding['label']}: expected {expected.meaning}"
        values = {m.name.value: m.value for m in group.get_measurements()}
        assert values[codes.PROBABILITY.value] == pytest.approx(finding["probability"], abs=1e-7), finding["label"]
        assert values[codes.THRESHOLD.value] == pytest.approx(finding["threshold"], abs=1e-7), finding["label"]
        assert group.source_images[0].referenced_sop_instance_uid == source.SOPInstanceUID
        algorithm = _texts(group[0], {"111001": "name", "111003": "version", "111002": "parameter"})
        assert algorithm == {"name": [record["model"]["name"]],
                             "version": [f"sha256:{record['model']['sha256'][:16]}"],
                             "parameter": [f"weights sha256={record['model']['sha256']}"]}, algorithm


def _texts(item, names: dict[str, str]) -> dict[str, list[str]]:
    """TEXT content items anywhere below ``item`` whose concept code is a key of ``names``."""
    found: dict[str, list[str]] = {}
    for child in item.get("ContentSequence", []):
        concept = child.ConceptNameCodeSequence[0] if "ConceptNameCodeSequence" in child else None
        code = getattr(concept, "value", None) or getattr(concept, "CodeValue", None)  # highdicom or pydicom
        if child.ValueType == "TEXT" and code in names:
            found.setdefault(names[code], []).append(child.TextValue)
        for key, values in _texts(child, names).items():
            found.setdefault(key, []).extend(values)
    return found


def test_sr_records_the_disclaimer_and_every_warning_as_comments(cli_outputs):
    records, out = cli_outputs
    record = records[NIH_PNG.name]
    assert record["warnings"], "the random-init weights give an UNTRAINED warning to record"
    sr = pydicom.dcmread(out / f"{NIH_PNG.stem}.sr.dcm")
    comments = [item.TextValue for item in sr.ContentSequence
                if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue == codes.COMMENT.value]
    assert comments[0] == dicom_sr.NOT_FOR_DIAGNOSTIC_USE, f"first comment: {comments[:1]}"
    assert comments[1:] == [f"Warning: {w}" for w in record["warnings"]], "each warning, in order"


def test_sr_of_a_png_starts_a_new_study_and_references_no_image(cli_outputs):
    _, out = cli_outputs
    path = out / f"{NIH_PNG.stem}.sr.dcm"
    _assert_no_dciodvfy_errors(path)
    sr = pydicom.dcmread(path)
    assert "CurrentRequestedProcedureEvidenceSequence" not in sr, "a PNG has no DICOM image to reference"
    assert pydicom.uid.UID(sr.StudyInstanceUID).is_valid, "a new, valid study UID"
    _, groups = _groups(path)
    assert [g.finding_type.meaning for g in groups] == [codes.FINDING_CONCEPTS[label].meaning for label in LABELS]


def _identified_dicom(tmp_path: Path, **overrides: str) -> Path:
    ds = make_dicom(nih_gray(), bits_stored=8, patient=PATIENT)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.ReferringPhysicianName = "20260102", "101500", "S1", ""
    for keyword, value in overrides.items():
        setattr(ds, keyword, value)
    path = tmp_path / "identified.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_demo_mode_copies_uids_only_and_pacs_mode_files_under_the_same_patient(tmp_path, cpu_predictor):
    path = _identified_dicom(tmp_path)
    prediction = cpu_predictor.predict(path)
    record = prediction_to_json(prediction, cpu_predictor.model_info)
    for mode in ("demo", "pacs"):
        reference = dicom_sr.read_source_reference(path, mode=mode)
        out = dicom_sr.write_sr(dicom_sr.build_sr(record, cpu_predictor.model_info, source=reference),
                                tmp_path / f"{mode}.dcm")
        _assert_no_dciodvfy_errors(out)
        data, sr = out.read_bytes(), pydicom.dcmread(out)
        if mode == "demo":
            leaked = [value for value in PATIENT.values() if len(value) > 1 and value.encode() in data]
            assert leaked == [], f"demo mode must copy no patient attribute, found {leaked}"
            assert not sr.PatientSex, f"demo mode must leave PatientSex empty, got {sr.PatientSex!r}"
        else:
            assert (str(sr.PatientName), sr.PatientID, sr.PatientBirthDate, sr.AccessionNumber) == (
                PATIENT["PatientName"], PATIENT["PatientID"], PATIENT["PatientBirthDate"],
                PATIENT["AccessionNumber"]), "pacs mode copies the patient and study attributes"
            for keyword in ("PatientAddress", "OtherPatientIDs", "InstitutionName"):
                assert keyword not in sr, f"pacs mode copies only the listed attributes, not {keyword}"
        assert sr.StudyInstanceUID == reference.study_uid, f"{mode}: same study as the source"


def test_an_invalid_source_value_is_reported_and_not_copied(tmp_path, cpu_predictor):
    with pytest.warns(UserWarning, match="Invalid value for VR DA"):  # pydicom, writing the bad source
        path = _identified_dicom(tmp_path, PatientBirthDate="31/12/1949")
    errors, _ = dciodvfy_report(path)
    assert any("Birth Date" in line for line in errors), f"the source itself must be invalid: {errors}"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pydicom warns (and logs) when it converts an invalid value
        reference = dicom_sr.read_source_reference(path, mode="pacs")
    assert "PatientBirthDate" not in reference.copied, "an invalid value must not be copied"
    assert reference.problems == (
        "identified.dcm: the source's PatientBirthDate is not a valid DA value; not copied",
    ), reference.problems
    assert reference.copied["PatientID"] == PATIENT["PatientID"], "the valid attributes are still copied"
    record = prediction_to_json(cpu_predictor.predict(path), cpu_predictor.model_info)
    out = dicom_sr.write_sr(dicom_sr.build_sr(record, cpu_predictor.model_info, source=reference),
                            tmp_path / "sr.dcm")
    _assert_no_dciodvfy_errors(out)


def test_a_dicom_without_uids_gets_no_sr_and_a_one_line_error(tmp_path, capsys, random_init_checkpoint):
    source = tmp_path / "no-study.dcm"
    make_dicom(nih_gray(), bits_stored=8).save_as(source, enforce_file_format=True)
    out = tmp_path / "out.dcm"
    status, records, err = _run_cli(capsys, str(source), "--json", "--dicom-sr", str(out),
                                    "--weights", str(random_init_checkpoint))
    assert status == predict.INPUT_ERROR, f"expected exit status 1, got {status}"
    assert records == [{"file": "no-study.dcm", "error": records[0]["error"]}], records
    assert "no StudyInstanceUID" in records[0]["error"], records[0]["error"]
    assert "Traceback" not in err and not out.exists(), "no traceback and no SR file"


def test_an_error_record_gets_no_report():
    with pytest.raises(dicom_sr.NoReportError, match="broken.png"):
        dicom_sr.build_sr({"file": "broken.png", "error": "broken.png: truncated"}, {"name": "m", "sha256": "0" * 64})


def test_the_concept_table_covers_the_labels_and_matches_dicom_part_16():
    assert tuple(codes.FINDING_CONCEPTS) == LABELS, "one concept per output, in logit order"
    table = [c for c in vars(codes).values() if isinstance(c, codes.Concept)]
    table += list(codes.FINDING_CONCEPTS.values())
    for concept in table:
        if concept.source != "DICOM PS3.16":
            assert concept.source in {"SNOMED CT", "local", "UCUM"}, f"unknown source {concept.source}"
            continue
        keyword = "".join(word[:1].upper() + word[1:] for word in concept.meaning.split())
        listed = getattr(getattr(dicom_codes, concept.scheme), keyword)  # pydicom's Part 16 dictionary
        assert (listed.value, listed.meaning) == (concept.value, concept.meaning), f"{concept} is not in PS3.16 as written"
    assert len({c.value for c in codes.FINDING_CONCEPTS.values()}) == len(LABELS), "codes must be distinct"


def test_an_unusable_input_gets_no_sr_while_the_others_do(tmp_path, capsys, random_init_checkpoint):
    broken = tmp_path / "truncated.png"
    broken.write_bytes(NIH_PNG.read_bytes()[:2000])
    out = tmp_path / "reports"
    status, records, err = _run_cli(capsys, str(broken), str(NIH_PNG), "--json", "--dicom-sr", str(out),
                                    "--weights", str(random_init_checkpoint))
    assert status == predict.INPUT_ERROR, f"expected exit status 1, got {status}"
    assert "error" in records[0] and "findings" in records[1], f"one error line, one result: {records}"
    assert sorted(p.name for p in out.iterdir()) == [f"{NIH_PNG.stem}.sr.dcm"], "an SR for the good input only"
    assert "Traceback" not in err


def test_an_unwritable_sr_path_is_a_one_line_error(tmp_path, capsys, random_init_checkpoint):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    status, records, err = _run_cli(capsys, str(NIH_PNG), "--json", "--dicom-sr", str(blocker / "sr.dcm"),
                                    "--weights", str(random_init_checkpoint))
    assert status == predict.INPUT_ERROR, f"expected exit status 1, got {status}"
    assert records[0]["error"].startswith(f"{NIH_PNG.name}: cannot write its report"), records
    assert "Traceback" not in err


def test_the_input_gates_verdict_is_recorded_after_the_warnings():
    gate = {"verdict": "frontal", "check": None, "score": 0.01, "level": "ok", "scores": {"view": 0.01}}
    texts = dicom_sr._comments({"file": "x.png", "warnings": ["w"], "gate": gate})
    assert texts[1:] == ["Warning: w", "Input gate: frontal (check none fired at level ok, score 0.01)"], (
        f"expected the warning, then the gate's verdict, got {texts[1:]}")
    assert len(dicom_sr._comments({"file": "x.png", "warnings": [], "gate": None})) == 1, (
        "expected no gate comment for weights without a gate")
