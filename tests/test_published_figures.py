"""Figures about the bundled model that people read are generated from weights/ or checked
against it: the README's blocks, the screenshot, the first screen."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

from training.calibrate import DEFAULT_RULE_TEXT
from training.reports.readme_blocks import read_blocks, render_blocks
from xray_app.model import sha256_of

REPO = Path(__file__).resolve().parent.parent
WEIGHTS = REPO / "weights"
CONFIG = json.loads((WEIGHTS / "config.json").read_text())


def test_readme_blocks_are_rendered_from_the_bundled_config():
    blocks = read_blocks((REPO / "README.md").read_text())
    assert blocks == render_blocks(CONFIG), (
        "README's bundled-model blocks differ from weights/config.json: rerun "
        "python -m training.bundle ... --readme README.md")


def test_readme_states_no_other_count_of_training_images():
    text = (REPO / "README.md").read_text()
    train = CONFIG["provenance"]["split"]["images"]["train"]
    assert f"{train:,} radiographs" in text, "the README gives the training count of config.json"
    for stale in ("400 radiographs", "saw **1,753", "trained on 1,753", "trained on **1,753"):
        assert stale not in text, f"README quotes a count the model was not trained on: {stale!r}"


def test_screenshot_shows_the_bundled_weights():
    with Image.open(REPO / "docs" / "screenshot.png") as image:
        stamp = dict(image.text)
    assert stamp.get("weights-sha256") == sha256_of(WEIGHTS / "model.safetensors"), (
        "docs/screenshot.png was made with other weights: rerun docs/make_screenshot.py")
    assert stamp.get("config-sha256") == sha256_of(WEIGHTS / "config.json"), (
        "docs/screenshot.png was made before weights/config.json last changed: rerun docs/make_screenshot.py")


def test_heatmap_localisation_table_matches_the_bundled_record():
    """docs/heatmaps.md's IoBB row is the bundle's own localisation headline."""
    measured = CONFIG["provenance"]["localization"]
    row = next(line for line in (REPO / "docs" / "heatmaps.md").read_text().splitlines()
               if line.startswith("| IoBB ≥ 0.1"))
    cells = [cell.strip() for cell in row.strip("|").split("|")][1:]
    expected = [f"{measured[key]:.0%}" for key in ("heatmap_hits", "random_hits", "centre_hits")]
    assert cells == expected, f"docs/heatmaps.md says {cells}, weights/config.json {expected}"
    assert f"On the {measured['boxes']} boxes" in (REPO / "docs" / "heatmaps.md").read_text()


def test_input_gate_doc_gives_the_bundled_gate_levels_and_held_out_counts():
    """docs/input-gate.md's section on the bundled model quotes weights/eval/gate.json."""
    text = (REPO / "docs" / "input-gate.md").read_text()
    gate = json.loads((WEIGHTS / "eval" / "gate.json").read_text())
    assert f"`warn` {gate['warn']:.3f}, `refuse` {gate['refuse']:.3f}" in text, \
        "the levels quoted for the bundled model must be the bundled gate's"
    nih = gate["held_out"]["nih_frontal"]
    assert f"| {nih['n']} | — | {nih['gate_flagged']} ({nih['gate_flagged_share']:.1%}" in text, \
        "the held-out NIH frontal row must be the bundled gate's"


def test_docs_name_calibrates_default_operating_rule():
    text = (REPO / "docs" / "training.md").read_text()
    assert f"`--operating-rule {DEFAULT_RULE_TEXT}`, the default" in text, (
        f"expected docs/training.md to give calibrate's default rule, {DEFAULT_RULE_TEXT}")


def test_operating_points_are_reproduced_from_the_shipped_out_of_fold_predictions(tmp_path):
    """calibrate, rerun with the recorded rule on the out-of-fold predictions weights/ ships,
    gives the bundled thresholds, calibration and figures: another rule can be chosen from
    the same files (docs/findings.md) and the shipped ones can be checked."""
    points = CONFIG["operating_points"]
    rule = f"{points['method']}={points['target']}"
    out = tmp_path / "recalibrated"
    subprocess.run(
        [sys.executable, "-m", "training.calibrate", "--checkpoint", str(WEIGHTS),
         "--predictions", str(WEIGHTS / "eval" / "oof_fit" / "oof_predictions.csv"),
         "--out-of-fold", str(points["chosen_on"]["folds"]), "--operating-rule", rule,
         "--no-finding-specificity", str(points["no_finding_specificity"]), "--out", str(out)],
        check=True, cwd=REPO, capture_output=True, text=True,
    )
    redone = json.loads((out / "config.json").read_text())
    assert redone["thresholds"] == CONFIG["thresholds"]
    assert redone["calibration"] == CONFIG["calibration"]
    shipped = {key: value for key, value in points.items() if key != "out_of_fold"}
    assert {key: value for key, value in redone["operating_points"].items() if key != "out_of_fold"} == shipped
    for figures in ("flags", "sample", "population"):  # by_source needs the folders (--sources)
        assert redone["operating_points"]["out_of_fold"][figures] == points["out_of_fold"][figures]
