"""Assemble the folder the app ships with: ``python -m training.bundle``.

    python -m training.bundle --checkpoint RUN/refit/calibrated --splits SPLITS \\
        --images DIR [DIR ...] --ood-dir DIR [--metadata CSV] [--bboxes CSV] [--folds CV_DIR] \\
        [--compare PREDS.csv --compare-name NAME] [--report REPORT.json ...] --out weights

One command, the last stage before publishing. Starting from a calibrated checkpoint
(``training.calibrate``), it runs the stages that depend on the model, each through its
own command, into a staging folder beside ``--out``, and swaps that folder in only when
all of them succeeded:

1. the input gate, refitted for this model: the feature distance (``training.fit_ood``:
   statistics of the training split, levels from the validation split) and the view head
   that tells frontal films from lateral films, CT slices and other images
   (``training.fit_gate``, on the NIH films of ``--images`` and the images of ``--ood-dir``);
2. the test split, scored once (``training.evaluate --split test``; ``--compare`` adds a
   reference model's predictions on the images they share);
3. heatmap localisation against the NIH boxes (``training.localize``; out of fold with
   ``--folds`` when the model trained on every boxed image); its headline goes into
   ``config.json``'s ``provenance.localization``, which the app shows under the heatmaps;
4. the model card (``training.model_card``), from those reports and any ``--report``
   given (e.g. the out-of-fold evaluation of a cross-validation); each report's headline
   (mean AUROC over the 14 pathologies with its interval, images, patients) also goes into
   ``config.json``'s ``provenance.evaluation``, which the app's banner shows;
5. ``train_config.yaml``: the recipe, from the checkpoint's provenance;
6. with ``--readme``, the README's bundled-model blocks, and with ``--screenshot`` the app's
   screenshot, remade from the new folder so no figure a person reads drifts from it.

Nothing in ``--out`` is edited by hand, and nothing in it names a machine-local path.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml

from training import evaluate, fit_gate, fit_ood, localize, model_card
from training.fitting.provenance import public_command
from training.reports.markdown import evaluation_key
from training.reports.readme_blocks import update_readme
from xray_app.model import CONFIG_FILE, WEIGHTS_FILE, CheckpointError, read_config, write_config

DEFAULT_METADATA = Path("../shared/data/nih/Data_Entry_2017_v2020.csv.gz")
EVAL_DIR = "eval"
CARD_FILE = "README.md"
RECIPE_FILE = "train_config.yaml"
SCREENSHOT_SCRIPT = Path(__file__).resolve().parent.parent / "docs" / "make_screenshot.py"


class BundleError(RuntimeError):
    """A stage failed; the message names it.  ``--out`` is left as it was."""


def run_stage(name: str, command: Callable[[Sequence[str]], int], argv: Sequence[str]) -> None:
    """Run one stage's ``main(argv)``; a non-zero exit stops the bundle."""
    print(f"bundle: {name}: python -m {command.__module__} {' '.join(map(str, argv))}", flush=True)
    code = command([str(a) for a in argv])
    if code != 0:
        raise BundleError(f"stage {name!r} failed with exit status {code}; {name} printed why above")


def bundle(
    checkpoint: Path,
    splits: Path,
    images: Sequence[Path],
    ood_dir: Path,
    out: Path,
    *,
    metadata: Path = DEFAULT_METADATA,
    bboxes: Path | None = None,
    folds: Path | None = None,
    compare: Path | None = None,
    compare_name: str | None = None,
    reports: Sequence[Path] = (),
    n_boot: int = 1000,
    gate_options: Sequence[str] = (),
    command: str | None = None,
) -> Path:
    """Build ``out`` (see the module docstring); returns it.  ``command``: this bundle's
    command line, recorded for the card's reproduce section."""
    config = read_config(checkpoint / CONFIG_FILE)
    if not config.provenance.get("validation_fit"):
        raise BundleError(f"{checkpoint}: no thresholds or calibration fitted on held-out "
                          "predictions; run python -m training.calibrate first")
    staging = out.with_name(out.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        shutil.copy2(checkpoint / name, staging / name)
    evaluation = staging / EVAL_DIR
    image_args = ["--images", *images]
    run_stage("ood", fit_ood.main, ["--checkpoint", staging, *image_args, "--split-dir", splits,
                                "--report", evaluation / "ood.json"])
    run_stage("gate", fit_gate.main, ["--checkpoint", staging, *image_args, "--metadata", metadata,
                                  "--ood-dir", ood_dir, *gate_options,
                                  "--report", evaluation / "gate.json"])
    comparison = ["--compare", compare, "--compare-name", compare_name or compare.stem] if compare else []
    run_stage("evaluate", evaluate.main, [
        "--checkpoint", staging, "--split", "test", "--split-csv", splits / "test.csv", *image_args,
        "--metadata", metadata, *comparison, "--n-boot", n_boot, "--out", evaluation])
    card_reports = [evaluation / "report_test.json", *_copy_reports(reports, evaluation)]
    _record_evaluation(staging, card_reports)
    if command:
        _record_provenance(staging, bundle={"command": command})
    localisation: list[str | Path] = []
    if bboxes is not None:
        source = ["--folds", folds] if folds is not None else ["--checkpoint", staging]
        run_stage("localize", localize.main, [*source, *image_args, "--bboxes", bboxes,
                                              "--out", evaluation / "loc"])
        localisation = ["--localization", evaluation / "loc" / "loc.json"]
        _record_provenance(staging, localization=localize.headline(
            json.loads((evaluation / "loc" / "loc.json").read_text())))
    report_args = [arg for path in card_reports for arg in ("--report", path)]
    run_stage("model card", model_card.main, ["--checkpoint", staging, *report_args,
                                              *localisation, "--out", staging / CARD_FILE])
    recipe = read_config(staging / CONFIG_FILE).provenance.get("train_config", {})
    (staging / RECIPE_FILE).write_text(
        "# The recipe of this model, from its config.json (written by python -m training.bundle)\n"
        + yaml.safe_dump(recipe, sort_keys=False))
    _swap_in(staging, out)
    return out


def publish_figures(out: Path, *, readme: Path | None = None, screenshot: Path | None = None) -> None:
    """What people read about the new bundle, made from it: the README's blocks
    (:mod:`training.reports.readme_blocks`) and the screenshot of the app running it."""
    if readme is not None:
        update_readme(readme, json.loads((out / CONFIG_FILE).read_text()))
        print(f"bundle: rewrote the bundled-model blocks of {readme}", flush=True)
    if screenshot is not None:
        command = [sys.executable, str(SCREENSHOT_SCRIPT), "--weights", str(out), "--out", str(screenshot)]
        print(f"bundle: screenshot: {' '.join(command[1:])}", flush=True)
        env = {**os.environ, "PYTHONPATH": str(SCREENSHOT_SCRIPT.parent.parent)}
        if subprocess.run(command, env=env, check=False).returncode != 0:
            raise BundleError("the screenshot failed; the bundle is in place, rerun "
                              f"python {SCREENSHOT_SCRIPT.relative_to(SCREENSHOT_SCRIPT.parent.parent)}")


def _record_evaluation(checkpoint: Path, reports: Sequence[Path]) -> None:
    """Put each report's headline (mean AUROC over the 14 pathologies, its interval, the
    images and patients) into the bundle's ``config.json``: what the app's banner shows."""
    config = read_config(checkpoint / CONFIG_FILE)
    fit = config.provenance.get("validation_fit")
    measured = {}
    for path in reports:
        report = json.loads(path.read_text())
        metrics, headline = report["metrics"], report["metrics"]["headline"]
        measured[evaluation_key(report["split"], fit)] = {
            "metric": headline["name"], "value": headline["value"],
            "ci_low": headline.get("ci_low"), "ci_high": headline.get("ci_high"),
            "images": metrics["n_images"], "patients": metrics["n_patients"],
        }
        if report.get("by_source"):
            measured[evaluation_key(report["split"], fit)]["by_source"] = {
                name: {"value": entry["headline"]["value"], "ci_low": entry["headline"].get("ci_low"),
                       "ci_high": entry["headline"].get("ci_high"), "images": entry["n_images"]}
                for name, entry in report["by_source"].items()}
        if report["split"] == "test" and report.get("comparison"):
            measured["reference"] = reference_headline(report["comparison"])
    _record_provenance(checkpoint, evaluation=measured)


def reference_headline(comparison: dict) -> dict:
    """A reference model on the test films it has predictions for, beside this model on
    the same films: ``{"name", "value", "ours_on_same", "images", "patients"}``."""
    return {
        "name": comparison["other_name"],
        "metric": comparison["other_model"]["headline"]["name"],
        "value": comparison["other_model"]["headline"]["value"],
        "ours_on_same": comparison["this_model"]["headline"]["value"],
        "images": comparison["n_images"],
        "patients": comparison["n_patients"],
    }


def _record_provenance(checkpoint: Path, **entries: dict) -> None:
    """Add ``entries`` to the ``provenance`` of the bundle's ``config.json``."""
    config = read_config(checkpoint / CONFIG_FILE)
    write_config(config.with_updates(provenance={**config.provenance, **entries}),
                 checkpoint / CONFIG_FILE)


def _copy_reports(reports: Sequence[Path], evaluation: Path) -> list[Path]:
    """Copy each extra report with the figures beside it into ``eval/<its folder>/``."""
    copied = []
    for report in reports:
        json.loads(report.read_text())  # a readable report, or stop here
        target = evaluation / report.parent.name
        shutil.copytree(report.parent, target, dirs_exist_ok=True)
        copied.append(target / report.name)
    return copied


def _swap_in(staging: Path, out: Path) -> None:
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    staging.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.bundle",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, type=Path,
                        help="a calibrated checkpoint (python -m training.calibrate)")
    parser.add_argument("--splits", required=True, type=Path,
                        help="folder with train.csv/val.csv/test.csv of the model's split")
    parser.add_argument("--images", required=True, type=Path, nargs="+", metavar="DIR",
                        help="image folders (searched recursively)")
    parser.add_argument("--ood-dir", required=True, type=Path,
                        help="lateral/, ct/ and frontal/ images other than NIH's, with sources.csv "
                             "(the input gate's fit and held-out check)")
    parser.add_argument("--gate-option", action="append", default=[], metavar="FLAG",
                        help="a training.fit_gate option, e.g. --gate-option=--max-nih-fit=400")
    parser.add_argument("--metadata", type=Path, default=DEFAULT_METADATA)
    parser.add_argument("--bboxes", type=Path, help="NIH BBox_List_2017.csv: localisation figures")
    parser.add_argument("--folds", type=Path, metavar="CV_DIR",
                        help="localise out of fold with this cross-validation's fold models")
    parser.add_argument("--compare", type=Path, help="a reference model's predictions CSV")
    parser.add_argument("--compare-name", help="that model's name in the reports")
    parser.add_argument("--report", type=Path, action="append", default=[],
                        help="another report_<split>.json for the card (copied with its figures)")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--readme", type=Path, metavar="README.md",
                        help="rewrite this README's bundled-model blocks from the new config.json")
    parser.add_argument("--screenshot", type=Path, metavar="PNG",
                        help="remake the app's screenshot with the new weights "
                             "(docs/make_screenshot.py; needs Chromium)")
    parser.add_argument("--out", required=True, type=Path, help="the bundle folder, e.g. weights")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = public_command("training.bundle", list(sys.argv[1:] if argv is None else argv))
    try:
        out = bundle(args.checkpoint, args.splits, args.images, args.ood_dir, args.out,
                     metadata=args.metadata, bboxes=args.bboxes, folds=args.folds,
                     compare=args.compare, compare_name=args.compare_name, reports=args.report,
                     n_boot=args.n_boot, gate_options=args.gate_option, command=command)
        publish_figures(out, readme=args.readme, screenshot=args.screenshot)
    except (BundleError, CheckpointError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"bundled {args.checkpoint.name} into {out}: python app.py --weights {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
