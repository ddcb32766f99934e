"""DICOMweb round trip: ``python -m xray_app.dicomweb --url URL --study UID [--watch]``.

For each study: read its instances' metadata (WADO-RS), pick the frontal chest
radiographs, retrieve each (WADO-RS), run the input gate and the model, and store a DICOM
SR (:mod:`xray_app.dicom_sr`, ``"pacs"`` mode) back into the same study (STOW-RS), with
``dicomweb-client``.  ``--watch`` does this for every study the archive lists, again
every ``--interval`` seconds (``--max-polls`` ends it; otherwise until Ctrl-C).

Which instances get an SR, and why not (each reason is logged, one line per instance,
naming it by its SOP Instance UID, never by a patient attribute):

* not a frontal chest radiograph by its header: not an image (an SR, a presentation
  state...), a modality other than CR/DX/DR/RG, a body part other than the chest, a
  lateral view: skipped, not retrieved;
* already reported: the study holds this product's SR for this image and these weights
  (its SOP Instance UID is derived from both, :func:`xray_app.dicom_sr.sr_instance_uid`):
  skipped, so a rerun never files a second copy;
* unusable (broken pixel data...) or refused by the input gate: no SR, the gate's reason;
* otherwise an SR, which records the gate's warnings.

Patient and study attributes: the SR copies those a PACS files it by
(:data:`xray_app.dicom_sr.PACS_COPIED`), each checked first; a malformed source value is
left out and logged.

Exit status: 0 when every frontal chest radiograph has its SR, 1 when some could not be
used or was refused (logged), 2 for usage errors (weights that cannot be loaded), 3 when
the archive cannot be reached or rejects a request (after ``--attempts`` tries).  Work is never lost: what was stored
stays, and a rerun does what is left.
"""

from __future__ import annotations

import argparse
import io
import logging
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient

from xray_app import dicom_sr
from xray_app.model import CheckpointError
from xray_app.predictor import LATERAL_VIEWS, RADIOGRAPH_MODALITIES, Predictor
from xray_app.preprocess import ImageInputError
from xray_app.report import prediction_to_json
from xray_app.weights import WeightsNotFoundError

LOG = logging.getLogger("xray_app.dicomweb")
OK, NOT_REPORTED, USAGE_ERROR, ARCHIVE_ERROR = 0, 1, 2, 3
CHEST_WORDS = ("CHEST", "THORAX", "LUNG")
# DICOM JSON model tags of the header fields the selection reads
_TAGS = {
    "SOPClassUID": "00080016",
    "SOPInstanceUID": "00080018",
    "Modality": "00080060",
    "SeriesInstanceUID": "0020000E",
    "BodyPartExamined": "00180015",
    "ViewPosition": "00185101",
    "Rows": "00280010",
}


class ArchiveError(RuntimeError):
    """The DICOMweb archive cannot be reached or rejected a request; the message says which."""


@dataclass(frozen=True)
class Outcome:
    """What happened to one instance: ``status`` is ``"stored"``, ``"reported"`` (had its
    SR already), ``"skipped"`` (not a frontal chest radiograph) or ``"refused"``."""

    sop_instance_uid: str
    status: str
    detail: str


def header_fields(metadata: Mapping[str, Any]) -> dict[str, str]:
    """The selection's fields (:data:`_TAGS`) of one instance's DICOM JSON metadata; only
    those are read, so no patient attribute is parsed here."""
    fields = {}
    for keyword, tag in _TAGS.items():
        values = (metadata.get(tag) or {}).get("Value") or []
        fields[keyword] = str(values[0]).strip() if values else ""
    return fields


def not_frontal_chest(fields: Mapping[str, str]) -> str | None:
    """Why an instance is not a frontal chest radiograph by its header, or None if it is one."""
    if not fields["Rows"]:
        return f"not an image (modality {fields['Modality'] or 'unknown'}, no pixel rows)"
    modality = fields["Modality"].upper()
    if modality not in RADIOGRAPH_MODALITIES:
        return f"modality {modality or 'unknown'} is not a projection radiograph (CR/DX)"
    body_part = fields["BodyPartExamined"].upper()
    if body_part and not any(word in body_part for word in CHEST_WORDS):
        return f"body part {body_part} is not the chest"
    if fields["ViewPosition"].upper() in LATERAL_VIEWS:
        return f"view position {fields['ViewPosition']} is lateral, not frontal"
    return None


def process_study(client: DICOMwebClient, predictor: Predictor, study_uid: str) -> list[Outcome]:
    """Report every frontal chest radiograph of one study (see the module docstring)."""
    metadata = _archive(f"read the metadata of study {study_uid}", client.retrieve_study_metadata, study_uid)
    instances = [header_fields(item) for item in metadata]
    present = {fields["SOPInstanceUID"] for fields in instances}
    sha256 = str(predictor.model_info["sha256"])
    outcomes = []
    for fields in instances:
        sop_uid = fields["SOPInstanceUID"]
        reason = not_frontal_chest(fields)
        if reason is not None:
            outcomes.append(_log(Outcome(sop_uid, "skipped", reason)))
            continue
        sr_uid = dicom_sr.sr_instance_uid(sop_uid, sha256)
        if sr_uid in present:
            outcomes.append(_log(Outcome(sop_uid, "reported", f"already has its SR {sr_uid}")))
            continue
        outcomes.append(_log(_report_instance(client, predictor, study_uid, fields)))
    return outcomes


def _report_instance(
    client: DICOMwebClient, predictor: Predictor, study_uid: str, fields: Mapping[str, str]
) -> Outcome:
    sop_uid, series_uid = fields["SOPInstanceUID"], fields["SeriesInstanceUID"]
    dataset = _archive(f"retrieve instance {sop_uid}", client.retrieve_instance, study_uid, series_uid, sop_uid)
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=False)
    data, name = buffer.getvalue(), f"{sop_uid}.dcm"
    try:
        prediction = predictor.predict(data, name=name)
        source = dicom_sr.read_source_reference(data, name=name, mode="pacs")
    except ImageInputError as error:
        return Outcome(sop_uid, "refused", " ".join(str(error).split()))  # one log line
    for problem in source.problems:
        LOG.warning("%s", problem)
    record = prediction_to_json(prediction, predictor.model_info)
    sr = dicom_sr.build_sr(record, predictor.model_info, source=source)
    _archive(f"store the SR of instance {sop_uid}", client.store_instances, [sr], study_uid)
    warned = f" with {len(record['warnings'])} warning(s)" if record["warnings"] else ""
    return Outcome(sop_uid, "stored", f"SR {sr.SOPInstanceUID} stored{warned}")


def _archive(action: str, call: Any, *args: Any) -> Any:
    """``call(*args)``, with the archive's failures as one :class:`ArchiveError`."""
    try:
        return call(*args)
    except requests.exceptions.HTTPError as error:
        status = error.response.status_code if error.response is not None else "?"
        raise ArchiveError(f"the archive refused to {action} (HTTP {status})") from None
    except requests.exceptions.RequestException as error:
        raise ArchiveError(f"cannot reach the archive to {action}: {type(error).__name__}") from None


def _log(outcome: Outcome) -> Outcome:
    level = logging.WARNING if outcome.status == "refused" else logging.INFO
    LOG.log(level, "instance %s: %s: %s", outcome.sop_instance_uid, outcome.status, outcome.detail)
    return outcome


def study_uids(client: DICOMwebClient) -> list[str]:
    """Every study the archive lists (QIDO-RS)."""
    found = _archive("list its studies", client.search_for_studies)
    return [str(item["0020000D"]["Value"][0]) for item in found if item.get("0020000D", {}).get("Value")]


def run(client: DICOMwebClient, predictor: Predictor, studies: Iterable[str]) -> list[Outcome]:
    """Process ``studies`` in order; the outcomes of all their instances."""
    outcomes: list[Outcome] = []
    for uid in studies:
        outcomes += process_study(client, predictor, uid)
    return outcomes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m xray_app.dicomweb",
        description="Report the frontal chest radiographs of DICOMweb studies as DICOM SRs "
        "stored back into the same studies.",
        epilog="What it exposes: it opens no port and talks only to --url, without "
        "authentication; it reads each study's metadata (patient headers included), retrieves its "
        "frontal chest radiographs and writes SRs into it that copy the patient's name, ID, birth "
        "date and sex and the study's accession number, so use https:// for any archive "
        "beyond this machine. --watch does this for every study the archive lists. Logs name "
        "instances by SOP Instance UID only. Exit status: 0 every radiograph reported, 1 some "
        "refused (logged), 2 usage error, 3 archive unreachable or refusing.",
    )
    parser.add_argument("--url", required=True, help="DICOMweb root, e.g. http://pacs:8042/dicom-web")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--study", action="append", metavar="UID", help="a Study Instance UID to report (repeatable): only these studies are read")
    target.add_argument("--watch", action="store_true", help="poll the archive's study list (QIDO-RS) and report every study in it, "
                        "whoever's it is")
    parser.add_argument("--interval", type=float, default=30.0, metavar="S", help="--watch: seconds between polls")
    parser.add_argument("--max-polls", type=int, metavar="N", help="--watch: stop after N polls")
    parser.add_argument("--attempts", type=int, default=3, metavar="N",
                        help="tries per request before the archive counts as down (default 3, "
                        "waiting 1 s, then 2 s, 4 s... between them)")
    parser.add_argument("--weights", metavar="PATH", help="checkpoint directory (default as the app)")
    parser.add_argument("--device", metavar="DEVICE", help="cpu, cuda or cuda:N")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    try:
        predictor = Predictor.from_weights(args.weights, device=args.device)
    except (WeightsNotFoundError, CheckpointError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return USAGE_ERROR
    return run_command(args, predictor)


def run_command(args: argparse.Namespace, predictor: Predictor) -> int:
    """The command for parsed ``args`` with a loaded ``predictor``; returns the exit status."""
    client = DICOMwebClient(args.url.rstrip("/"))
    client.set_http_retry_params(retry=args.attempts > 1, max_attempts=max(1, args.attempts),
                                 wait_exponential_multiplier=500)
    outcomes: list[Outcome] = []
    try:
        if args.study:
            outcomes = run(client, predictor, args.study)
        else:
            polls = 0
            while args.max_polls is None or polls < args.max_polls:
                if polls:
                    time.sleep(args.interval)
                outcomes += run(client, predictor, study_uids(client))
                polls += 1
    except ArchiveError as error:
        print(f"error: {args.url}: {error}; what was stored stays, rerun to finish", file=sys.stderr)
        return ARCHIVE_ERROR
    except KeyboardInterrupt:
        pass
    statuses = ("stored", "reported", "skipped", "refused")
    counts = {status: sum(o.status == status for o in outcomes) for status in statuses}
    LOG.info("done: %s", ", ".join(f"{n} {status}" for status, n in counts.items()))
    return NOT_REPORTED if counts["refused"] else OK


if __name__ == "__main__":
    raise SystemExit(main())
