"""The stages after training: calibrate writes a new checkpoint, evaluate only reads,
bundle assembles the app's folder in one command, on real shared radiographs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.paths import NIH_IMAGES, SHARED_DATA
from training import bundle, calibrate, evaluate, split
from training.reports.markdown import evaluation_key
from training.reports.readme_blocks import read_blocks, render_blocks
from xray_app.model import load_checkpoint, read_config, write_random_init

METADATA = SHARED_DATA / "nih" / "Data_Entry_2017_v2020.csv.gz"
BBOXES = SHARED_DATA / "nih" / "BBox_List_2017.csv"
REFERENCE = SHARED_DATA / "nih" / "chexnet_repro_preds.csv"
REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def staged(tmp_path_factory) -> dict[str, Path]:
    """48 shared radiographs split by patient, an untrained 64 px checkpoint, its
    validation predictions, and the checkpoint calibrated on them."""
    root = tmp_path_factory.mktemp("stages")
    images = root / "images"
    images.mkdir()
    for path in sorted(NIH_IMAGES.glob("*.png"))[:48]:
        (images / path.name).symlink_to(path)
    splits = root / "splits"
    assert split.main(["--metadata", str(METADATA), "--images", str(images), "--val-fraction", "0.25",
                      "--test-fraction", "0.25", "--seed", "0", "--out", str(splits)]) == 0
    trained = write_random_init(root / "trained", input_size=64, architecture="tiny-resnet")
    assert evaluate.main(["--checkpoint", str(trained), "--split", "val", "--split-csv",
                          str(splits / "val.csv"), "--images", str(images), "--metadata",
                          str(METADATA), "--n-boot", "20", "--out", str(root / "val")]) == 0
    calibrated = root / "calibrated"
    assert calibrate.main(["--checkpoint", str(trained), "--predictions",
                           str(root / "val" / "predictions_val.csv"), "--metadata", str(METADATA),
                           "--n-boot", "20", "--out", str(calibrated)]) == 0
    return {"root": root, "images": images, "splits": splits, "trained": trained,
            "calibrated": calibrated}


def test_bundle_builds_the_apps_folder_from_a_calibrated_checkpoint(staged):
    out = staged["root"] / "weights"
    readme = staged["root"] / "README.md"
    readme.write_text((REPO / "README.md").read_text())
    code = bundle.main(["--checkpoint", str(staged["calibrated"]), "--splits", str(staged["splits"]),
                        "--images", str(staged["images"]), "--metadata", str(METADATA),
                        "--ood-dir", str(SHARED_DATA / "ood"), "--gate-option=--augment-copies=1",
                        "--gate-option=--n-other=16", "--gate-option=--folds=2",
                        "--bboxes", str(BBOXES), "--compare", str(REFERENCE),
                        "--compare-name", "CheXNet reproduction", "--n-boot", "20",
                        "--readme", str(readme), "--out", str(out)])
    assert code == 0, "expected the bundle to succeed"
    assert read_blocks(readme.read_text()) == render_blocks(json.loads((out / "config.json").read_text())), (
        "expected the README's bundled-model blocks rewritten from the new bundle")
    for name in ("model.safetensors", "config.json", "README.md", "train_config.yaml",
                 "eval/report_test.json", "eval/ood.json", "eval/gate.json", "eval/loc/loc.json"):
        assert (out / name).is_file(), f"expected {name} in the bundle"
    loaded = load_checkpoint(out)
    assert loaded.config.ood is not None, "expected the out-of-distribution gate refitted into the bundle"
    assert loaded.config.gate is not None and (out / "eval" / "gate.json").is_file(), (
        "expected the input gate's view head refitted into the bundle")
    assert loaded.config.thresholds == read_config(staged["calibrated"] / "config.json").thresholds, (
        "expected the calibrated thresholds carried over unchanged")
    report = json.loads((out / "eval" / "report_test.json").read_text())
    test_images = len((staged["splits"] / "test.csv").read_text().strip().splitlines()) - 1
    assert report["metrics"]["n_images"] == test_images, "expected the test split scored, all of it"
    assert "comparison" in report, "expected the reference model scored on the shared images"
    reference = loaded.config.provenance["evaluation"]["reference"]
    assert (reference["name"], reference["value"], reference["images"]) == (
        "CheXNet reproduction", report["comparison"]["other_model"]["headline"]["value"],
        report["comparison"]["n_images"]), "expected the reference model's figure on the same films recorded for the app"
    measured = loaded.config.provenance["evaluation"]["test"]
    assert measured["value"] == report["metrics"]["headline"]["value"] and measured["images"] == test_images, (
        f"expected the test headline recorded in config.json for the app, got {measured}")
    boxes = json.loads((out / "eval" / "loc" / "loc.json").read_text())["per_class"]["all"]
    shown = loaded.config.provenance["localization"]
    assert (shown["boxes"], shown["heatmap_hits"], shown["random_hits"]) == (
        boxes["boxes"], boxes["iobb>=0.1_gradcam"], boxes["iobb>=0.1_random"]), (
        f"expected the heatmaps' measured hit rate and its random baseline recorded for the app, got {shown}")
    card = (out / "README.md").read_text()
    reproduce = card[card.index("## How to reproduce"):]
    assert "python -m training.bundle --checkpoint calibrated" in reproduce and ".tmp" not in card, (
        "expected the bundle's own command, as it ran, in the card and no staging folder named")
    assert "--fit platt" not in reproduce, "expected no command that never ran"
    for heading in ("## Operating points", "## What the flags do", "## Probabilities: which population"):
        assert heading in card, f"expected the card to state {heading!r}"
    flags = report["flags"]["population"]["flags_per_normal_film"]["value"]
    assert f"{flags:.2f}" in card, "expected the test split's weighted flags per normal film in the card"
    assert "Research demo" in (out / "README.md").read_text() or "not a medical device" in (
        out / "README.md").read_text().lower(), "expected the card's disclaimer"
    for name in ("config.json", "README.md", "eval/report_test.json", "train_config.yaml"):
        text = (out / name).read_text()
        for local in (str(staged["root"]), "../shared", str(SHARED_DATA)):
            assert local not in text, f"expected no machine-local path {local!r} in {name}"
    assert not (out.parent / "weights.tmp").exists(), "expected no staging folder left behind"


def test_a_failed_stage_leaves_the_existing_bundle_untouched(staged, capsys):
    out = staged["root"] / "kept"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"the shipped model")
    code = bundle.main(["--checkpoint", str(staged["calibrated"]), "--splits", str(staged["splits"]),
                        "--images", str(staged["root"] / "no-such-folder"),
                        "--ood-dir", str(SHARED_DATA / "ood"), "--out", str(out)])
    assert code == 2, "expected a usage error exit when a stage fails"
    assert "stage 'ood' failed" in capsys.readouterr().err, "expected the failed stage named"
    assert (out / "model.safetensors").read_bytes() == b"the shipped model", (
        "expected the existing bundle left as it was")


def test_an_uncalibrated_checkpoint_is_refused(staged, capsys):
    code = bundle.main(["--checkpoint", str(staged["trained"]), "--splits", str(staged["splits"]),
                        "--images", str(staged["images"]), "--ood-dir", str(SHARED_DATA / "ood"),
                        "--out", str(staged["root"] / "x")])
    assert code == 2, "expected a refusal"
    assert "run python -m training.calibrate first" in capsys.readouterr().err


def test_examples_are_test_split_radiographs_with_their_labels_and_the_nih_attribution(staged, capsys):
    from training import examples

    test = (staged["splits"] / "test.csv").read_text().splitlines()[1].split(",")[0]
    train = (staged["splits"] / "train.csv").read_text().splitlines()[1].split(",")[0]
    out = staged["root"] / "examples"
    assert examples.main(["--images", str(staged["images"]), "--splits", str(staged["splits"]),
                          "--names", test, "--out", str(out)]) == 0, "expected a test image accepted"
    readme = (out / "README.md").read_text()
    assert "NIH Clinical Center" in readme and "Wang et al." in readme, "expected the NIH attribution"
    assert f"| {test} |" in readme, "expected the example listed with its labels"
    from xray_app import ui

    assert "NIH Clinical Center" in ui.example_credit(out), "expected the app to credit the NIH under the examples"
    assert examples.main(["--images", str(staged["images"]), "--splits", str(staged["splits"]),
                          "--names", train, "--out", str(staged["root"] / "no")]) == 2, (
        "expected a training image refused")
    assert "patients the model never saw" in capsys.readouterr().err


def test_with_out_of_fold_thresholds_the_test_headline_is_still_recorded_as_the_test_split():
    oof_fit = {"split": "out-of-fold", "out_of_fold": True}
    assert evaluation_key("test", oof_fit) == "test", (
        "expected the test report keyed as the test split, which the banner shows first")
    assert evaluation_key("val", oof_fit) == "out_of_fold"
    assert evaluation_key("val", {}) == "val" and evaluation_key("val", None) == "val"


def test_recorded_commands_are_shell_quoted_with_public_names():
    from training.fitting.provenance import public_command

    command = public_command("training.bundle", ["--checkpoint", "/tmp/x/weights.tmp",
                                                 "--compare-name", "CheXNet reproduction"])
    assert command == "python -m training.bundle --checkpoint weights --compare-name 'CheXNet reproduction'", (
        f"expected base names, staging folders named as they end up, and shell quoting: {command}")
