"""DICOMweb round trip with a real PACS: Debian's Orthanc and its DICOMweb plugin, on
loopback, in a temporary folder, one instance for this module.

The study holds the shared real CR radiograph, the shared MONOCHROME1 variant (given its
own series and instance UIDs, as a second frontal film), a hand film and a film whose
pixel data is not JPEG at all, all of one patient.  ``python -m xray_app.dicomweb`` must file an
SR for the two chest films in the same study, say why the other two got none, never file
a second copy when run again, and fail clearly while the archive is down.
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import time
import urllib.request

import highdicom as hd
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.encaps import encapsulate
from pydicom.uid import generate_uid

from tests.paths import DICOM_DIR
from tests.system_tools import ORTHANC, ORTHANC_DICOMWEB_PLUGIN, dciodvfy_report, require_program
from xray_app import codes, dicom_sr, dicomweb
from xray_app.report import prediction_to_json

SHARED_DICOM = DICOM_DIR / "siim_pneumothorax_example.dcm"
MONOCHROME1 = DICOM_DIR / "fake_monochrome1_example.dcm"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory) -> str:
    """The DICOMweb root of an empty Orthanc serving on loopback for this module."""
    program = require_program(ORTHANC, "orthanc orthanc-dicomweb", extra=ORTHANC_DICOMWEB_PLUGIN)
    folder = tmp_path_factory.mktemp("orthanc")
    port = _free_port()
    config = {
        "Name": "xray-test", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
        "HttpPort": port, "DicomServerEnabled": False, "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False, "Plugins": [str(ORTHANC_DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = open(folder / "orthanc.log", "w")  # noqa: SIM115 (closed below, after the server)
    server = subprocess.Popen([program, str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"{base}/system", timeout=2):
                    break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail(f"Orthanc did not start: {(folder / 'orthanc.log').read_text()[-1000:]}")
        yield f"{base}/dicom-web"
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def _variant(**changes) -> pydicom.Dataset:
    """The shared CR with new series and instance UIDs (same patient and study) and ``changes``."""
    ds = pydicom.dcmread(SHARED_DICOM)
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    return ds


@pytest.fixture(scope="module")
def study(orthanc) -> dict[str, pydicom.Dataset]:
    """Upload the study (STOW-RS); its instances by role."""
    monochrome1 = pydicom.dcmread(MONOCHROME1)
    monochrome1.SeriesInstanceUID = generate_uid()
    monochrome1.SOPInstanceUID = monochrome1.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    instances = {
        "chest": pydicom.dcmread(SHARED_DICOM),
        "monochrome1": monochrome1,
        "hand": _variant(BodyPartExamined="HAND"),
        "broken": _variant(PixelData=encapsulate([bytes(range(256)) * 16])),  # not JPEG data
    }
    DICOMwebClient(orthanc).store_instances(list(instances.values()))
    return instances


def _srs(orthanc: str, study_uid: str) -> list[pydicom.Dataset]:
    client = DICOMwebClient(orthanc)
    found = client.search_for_instances(study_uid, search_filters={"Modality": "SR"})
    return [client.retrieve_instance(study_uid, item["0020000E"]["Value"][0], item["00080018"]["Value"][0])
            for item in found]


def _arguments(*argv: str):
    return dicomweb.build_parser().parse_args(list(argv))


def test_an_unreachable_archive_is_a_clear_error_and_exit_3(study, cpu_predictor, capsys, orthanc):
    down = f"http://127.0.0.1:{_free_port()}/dicom-web"
    uid = study["chest"].StudyInstanceUID
    status = dicomweb.run_command(_arguments("--url", down, "--study", uid, "--attempts", "1"), cpu_predictor)
    err = capsys.readouterr().err
    assert status == dicomweb.ARCHIVE_ERROR, f"expected exit status 3, got {status}"
    assert f"error: {down}: cannot reach the archive" in err and "rerun to finish" in err, err
    assert "Traceback" not in err, "a down archive is a message, not a traceback"
    assert _srs(orthanc, uid) == [], "nothing is filed while the archive is down"


def test_the_round_trip_files_an_sr_for_each_chest_film_in_the_same_study(
    study, orthanc, random_init_checkpoint, cpu_predictor, caplog, tmp_path
):
    uid = study["chest"].StudyInstanceUID
    with caplog.at_level(logging.INFO, logger="xray_app.dicomweb"):
        status = dicomweb.main(["--url", orthanc, "--study", uid, "--weights", str(random_init_checkpoint)])
    assert status == dicomweb.NOT_REPORTED, f"expected exit status 1 (the broken film), got {status}"
    log = caplog.text
    assert f"instance {study['hand'].SOPInstanceUID}: skipped: body part HAND is not the chest" in log, log
    assert f"instance {study['broken'].SOPInstanceUID}: refused: " in log, log
    assert study["chest"].PatientID not in log, "the log must not name the patient"

    srs = {sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
           .ReferencedSOPSequence[0].ReferencedSOPInstanceUID: sr for sr in _srs(orthanc, uid)}
    expected = {study["chest"].SOPInstanceUID, study["monochrome1"].SOPInstanceUID}
    assert set(srs) == expected, f"expected SRs for the two chest films only, got {len(srs)}"
    with urllib.request.urlopen(orthanc.replace("/dicom-web", "/studies")) as reply:
        assert len(json.loads(reply.read())) == 1, "the SRs must be filed in the images' study"

    for number, stored in enumerate(srs.values()):
        path = tmp_path / f"sr-{number}.dcm"
        stored.save_as(path, enforce_file_format=True)
        errors, _ = dciodvfy_report(path)
        assert errors == [], f"dciodvfy must report no error in a stored SR: {errors}"
    sr = srs[study["chest"].SOPInstanceUID]
    assert (sr.StudyInstanceUID, sr.PatientID, sr.PatientName.family_name) == (
        uid, study["chest"].PatientID, study["chest"].PatientName.family_name), "pacs mode files by patient and study"
    assert "PatientAge" not in sr, "only the listed patient attributes are copied (the source's is malformed)"
    record = prediction_to_json(cpu_predictor.predict(SHARED_DICOM), cpu_predictor.model_info)
    groups = hd.sr.Comprehensive3DSR.from_dataset(sr).content.get_image_measurement_groups()
    for group, finding in zip(groups, record["findings"], strict=True):
        values = {m.name.value: m.value for m in group.get_measurements()}
        assert values[codes.PROBABILITY.value] == pytest.approx(finding["probability"], abs=1e-6), finding["label"]
        evaluation = group.get_qualitative_evaluations()[0].value.value
        assert evaluation == (codes.PRESENT if finding["positive"] else codes.ABSENT).value, finding["label"]


def test_a_rerun_files_nothing_twice(study, orthanc, cpu_predictor, caplog):
    uid = study["chest"].StudyInstanceUID
    before = {sr.SOPInstanceUID for sr in _srs(orthanc, uid)}
    assert len(before) == 2, "the round trip ran first and filed two SRs"
    with caplog.at_level(logging.INFO, logger="xray_app.dicomweb"):
        status = dicomweb.run_command(_arguments("--url", orthanc, "--watch", "--max-polls", "1"), cpu_predictor)
    assert status == dicomweb.NOT_REPORTED, "the broken film is still refused"
    assert caplog.text.count("already has its SR") == 2, caplog.text
    assert {sr.SOPInstanceUID for sr in _srs(orthanc, uid)} == before, "no second copy of an SR"
    assert all(dicom_sr.sr_instance_uid(study[role].SOPInstanceUID, cpu_predictor.model_info["sha256"])
               in before for role in ("chest", "monochrome1")), "SR UIDs follow from image and weights"


def test_the_header_selection_keeps_frontal_chest_radiographs_only():
    def fields(**values: str) -> dict[str, str]:
        base = {"SOPClassUID": "1.2", "SOPInstanceUID": "1.3", "Modality": "CR", "SeriesInstanceUID": "1.4",
                "BodyPartExamined": "CHEST", "ViewPosition": "PA", "Rows": "1024"}
        return {**base, **values}

    assert dicomweb.not_frontal_chest(fields()) is None, "a PA chest CR is selected"
    assert dicomweb.not_frontal_chest(fields(BodyPartExamined="")) is None, "no body part: the gate decides"
    assert "lateral" in dicomweb.not_frontal_chest(fields(ViewPosition="LL"))
    assert "not a projection radiograph" in dicomweb.not_frontal_chest(fields(Modality="CT"))
    assert "not an image" in dicomweb.not_frontal_chest(fields(Modality="SR", Rows=""))


def test_weights_that_cannot_be_loaded_are_a_usage_error(tmp_path, capsys):
    missing = tmp_path / "no-checkpoint"
    status = dicomweb.main(["--url", "http://127.0.0.1:9/dicom-web", "--study", "1.2.3", "--weights", str(missing)])
    err = capsys.readouterr().err
    assert status == dicomweb.USAGE_ERROR, f"expected exit status 2, got {status}"
    assert err.startswith("error: ") and str(missing) in err and "Traceback" not in err, err
