"""Command line: ``python -m xray_app.predict FILE [FILE ...] [--weights PATH] [--json] ...``.

Predicts each file (PNG, JPEG, TIFF, DICOM) and prints, per input in input order:

* with ``--json``: one JSON object per line, built by :mod:`xray_app.report` (the same
  builder as the app's API): ``{"file", "findings" (15, logit order), "model",
  "warnings", "gate"}``, or ``{"file", "error"}`` (plus ``"gate"`` when the input gate
  refused it) for an input that cannot be used;
* otherwise: the research-demo disclaimer once, then a readable table per file,
  findings by probability, warnings first.

``--dicom-sr OUT`` writes a DICOM Comprehensive 3D SR and ``--fhir OUT`` a FHIR
DiagnosticReport per input (:mod:`xray_app.exports`; docs/integration.md): OUT is the file
for a single input, a folder (``<file stem>.sr.dcm`` / ``.fhir.json``) for several.

``--heatmaps DIR`` writes one overlay PNG per class per input,
``DIR/<file stem>_<NN>_<label>.png`` (NN = logit index), drawn over the original at its
own resolution (pixel for pixel) with the display strength of
:func:`xray_app.explain.display_strength`; the caption is in the PNG's text chunks.  ``--method`` picks the heatmap method (default: the fast Grad-CAM).

Exit status: 0 when every input was predicted, 1 when any input could not be used (the
others are still processed and printed), 2 for usage errors, including weights that
cannot be found or loaded.  Bad input never prints a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from xray_app import explain, exports
from xray_app.flags import flag_wording
from xray_app.labels import LABELS
from xray_app.model import CheckpointError
from xray_app.population import PopulationError, read_population
from xray_app.predictor import Prediction, Predictor
from xray_app.preprocess import ImageInputError
from xray_app.report import DISCLAIMER, error_to_json, prediction_to_json
from xray_app.weights import WeightsNotFoundError

USAGE_ERROR = 2
INPUT_ERROR = 1


def _method(name: str) -> str:
    try:
        return explain.resolve_method(name)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m xray_app.predict",
        description="Chest X-ray findings (14 NIH pathologies + No Finding) for image files.",
        epilog="Exit status: 0 all inputs predicted, 1 some input unusable, 2 usage error.",
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="PNG, JPEG, TIFF or DICOM files")
    parser.add_argument("--weights", metavar="PATH",
                        help="checkpoint directory (default: XRAY_WEIGHTS, bundled weights/, the Hub)")
    parser.add_argument("--json", action="store_true", help="one JSON object per input per line")
    parser.add_argument("--heatmaps", metavar="DIR", type=Path,
                        help="write one overlay PNG per class per input into DIR")
    parser.add_argument("--method", type=_method, default=explain.FAST_METHOD, metavar="NAME",
                        help="heatmap method for --heatmaps: " + ", ".join(explain.METHODS)
                        + " (case and punctuation ignored; default: the fast Grad-CAM)")
    parser.add_argument("--dicom-sr", metavar="OUT", type=Path,
                        help="write a DICOM Structured Report (TID 1500): the file for one input, "
                        "a folder for several")
    parser.add_argument("--fhir", metavar="OUT", type=Path,
                        help="write a FHIR DiagnosticReport (JSON): the file for one input, "
                        "a folder for several")
    parser.add_argument("--device", metavar="DEVICE",
                        help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    parser.add_argument("--batch-size", type=int, default=8, metavar="N",
                        help="images per forward pass (default 8)")
    parser.add_argument("--population", metavar="JSON", type=Path,
                        help="a prevalence table {\"name\", \"prevalence\": {label: p}} to state "
                        "probabilities for instead of the weights' own population (default: "
                        "the one config.json names); thresholds move with them, so the same "
                        "findings are flagged")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}")
    try:
        population = read_population(args.population) if args.population else None
        predictor = Predictor.from_weights(args.weights, device=args.device, population=population)
    except (WeightsNotFoundError, CheckpointError, PopulationError) as error:
        print(f"error: {error}", file=sys.stderr)
        return USAGE_ERROR
    except (ValueError, RuntimeError) as error:  # --device cuda without CUDA, --device gpu
        print(f"error: cannot use device {args.device!r}: {str(error).splitlines()[0]}",
              file=sys.stderr)
        return USAGE_ERROR
    if args.heatmaps is not None:
        try:
            args.heatmaps.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            print(f"error: cannot create heatmap folder {args.heatmaps}: {error.strerror or error}",
                  file=sys.stderr)
            return USAGE_ERROR

    failed = False
    stems: set[str] = set()
    if not args.json:
        print(DISCLAIMER + "\n")
    for start in range(0, len(args.files), args.batch_size):
        chunk = args.files[start : start + args.batch_size]
        for path, result in zip(chunk, predictor.predict_batch(chunk), strict=True):
            if isinstance(result, ImageInputError):
                failed = True
                _print_error(path, result, as_json=args.json)
                continue
            stem = _unique_stem(Path(path).stem, stems)
            try:
                write_exports(predictor, path, result, args, stem)
            except (ImageInputError, OSError) as error:
                failed = True
                if isinstance(error, OSError):
                    error = ImageInputError(result.name, f"cannot write its report: {error.strerror or error}")
                _print_error(path, error, as_json=args.json)
                continue
            if args.heatmaps is not None:
                try:
                    write_heatmaps(predictor, result, args.heatmaps, stem, args.method)
                except OSError as error:
                    failed = True
                    _print_error(path, ImageInputError(
                        result.name, f"cannot write heatmaps to {args.heatmaps}: {error.strerror or error}"
                    ), as_json=args.json)
                    continue
            if args.json:
                print(json.dumps(prediction_to_json(result, predictor.model_info), allow_nan=False))
            else:
                print(format_table(result, predictor.model_info))
            sys.stdout.flush()
    return INPUT_ERROR if failed else 0


def _print_error(path: str, error: Exception, *, as_json: bool) -> None:
    record = error_to_json(Path(path).name, error)
    if as_json:
        print(json.dumps(record))
    else:
        print(f"error: {record['error']}", file=sys.stderr)
    sys.stdout.flush()


def write_exports(predictor: Predictor, path: str, prediction: Prediction,
                  args: argparse.Namespace, stem: str) -> None:
    """The ``--dicom-sr`` and ``--fhir`` files of one input, when asked for."""
    several = len(args.files) > 1
    if args.dicom_sr is not None:
        target = exports.output_path(args.dicom_sr, stem, exports.SR_SUFFIX, several=several)
        exports.write_dicom_sr(path, prediction, predictor.model_info, target)
    if args.fhir is not None:
        target = exports.output_path(args.fhir, stem, exports.FHIR_SUFFIX, several=several)
        exports.write_fhir(path, prediction, predictor.model_info, target)


def _unique_stem(stem: str, used: set[str]) -> str:
    """``stem``, or ``stem-2``, ``stem-3``... when another input already used it."""
    candidate, number = stem, 1
    while candidate in used:
        number += 1
        candidate = f"{stem}-{number}"
    used.add(candidate)
    return candidate


def format_table(prediction: Prediction, model_info: dict) -> str:
    """A readable block for one prediction: header, warnings, findings by probability."""
    trained = "" if model_info.get("trained", True) else ", UNTRAINED"
    lines = [
        f"{prediction.name}  ({prediction.image.width} x {prediction.image.height}, "
        f"{prediction.image.format})",
        f"  model: {model_info['name']} (sha256 {str(model_info['sha256'])[:12]}{trained})",
    ]
    gate = prediction.gate
    if gate is not None:
        fired = "no check fired" if gate.check is None else f"{gate.check} check, score {gate.score:.2f}"
        lines.append(f"  input gate: {gate.verdict} ({gate.level}; {fired})")
    lines += [f"  WARNING: {warning}" for warning in prediction.warnings]
    lines.append(f"  {'finding':<20} {'probability':>11} {'threshold':>9}  result")
    for finding in prediction.sorted_findings():
        result = "FLAGGED" if finding.positive else "-"
        lines.append(
            f"  {finding.display_name:<20} {finding.probability:>11.4f} "
            f"{finding.threshold:>9.4f}  {result}"
        )
    return "\n".join(lines) + "\n"


def write_heatmaps(
    predictor: Predictor, prediction: Prediction, folder: Path, stem: str, method: str
) -> list[Path]:
    """Write ``folder/<stem>_<NN>_<label>.png`` for each of the 15 classes; returns the paths.

    Each PNG has the original's width and height, pixel for pixel, so it can be compared
    with the original or with boxes drawn in its coordinates.  The caption (finding,
    probability, threshold, verdict, method, model) is stored in the PNG's ``Title`` and
    ``Description`` text chunks.  With untrained weights a red "UNTRAINED MODEL" banner
    is also drawn across the top of the image.
    """
    untrained = not predictor.model_info.get("trained", True)
    written = []
    for index, finding in enumerate(prediction.findings):
        cam = predictor.explain(prediction, index, method)
        strength = explain.display_strength(finding.probability, finding.threshold)
        image = explain.overlay(prediction.image.pixels, cam, strength=strength)
        verdict = flag_wording(finding.positive)
        caption = (
            f"{prediction.name}: {finding.display_name} p={finding.probability:.4f} "
            f"(threshold {finding.threshold:.4f}, {verdict}); heatmap: {method}, drawn at "
            f"strength {strength:.2f}; model {predictor.model_info['name']} "
            f"sha256 {predictor.model_info['sha256']}"
        )
        if untrained:
            caption += "; UNTRAINED MODEL: meaningless output"
            image = _banner(image, "UNTRAINED MODEL - OUTPUT IS MEANINGLESS")
        info = PngInfo()
        info.add_text("Title", f"{finding.display_name} ({verdict})")
        info.add_text("Description", caption)
        path = folder / f"{stem}_{index:02d}_{LABELS[index].replace(' ', '_')}.png"
        Image.fromarray(image).save(path, pnginfo=info, compress_level=3)  # 2x faster than 6, ~10 % larger
        written.append(path)
    return written


def _banner(rgb: np.ndarray, text: str) -> np.ndarray:
    """``rgb`` with ``text`` in white on a red band across its top rows (same size)."""
    out = rgb.copy()
    width = out.shape[1]
    scale = max(0.35, width / 1400)
    thickness = max(1, round(scale * 2))
    (_, text_height), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    band = min(out.shape[0], text_height + baseline + 12)
    out[:band] = (180, 0, 0)
    cv2.putText(out, text, (6, text_height + 6), cv2.FONT_HERSHEY_SIMPLEX, scale,
                (255, 255, 255), thickness, cv2.LINE_AA)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
