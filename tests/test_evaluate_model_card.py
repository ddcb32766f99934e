"""``python -m training.model_card``: the card is generated from config.json and the reports."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.special import logit

from tests.paths import SHARED_DATA
from training import calibrate, evaluate, model_card
from training.reports.markdown import fmt, fmt_ci
from xray_app.labels import NO_FINDING, PATHOLOGIES
from xray_app.model import read_config, write_random_init

NIH = SHARED_DATA / "nih"
METADATA = NIH / "Data_Entry_2017_v2020.csv.gz"
REFERENCE = NIH / "chexnet_repro_preds.csv"


@pytest.fixture(scope="module")
def card(tmp_path_factory):
    """Calibrate on 'val' predictions (from the reference probabilities), evaluate 'val'
    and 'test', then write the card with a localisation file."""
    root = tmp_path_factory.mktemp("card")
    trained = write_random_init(root / "trained", input_size=64)
    preds = pd.read_csv(REFERENCE, dtype={"Image Index": str})
    paths = {}
    for split, part in (("val", preds.iloc[:200]), ("test", preds.iloc[200:400])):
        z = logit(np.clip(part[[f"prob_{n}" for n in PATHOLOGIES]].to_numpy(), 1e-6, 1 - 1e-6))
        frame = pd.DataFrame({"Image Index": part["Image Index"]})
        for c, name in enumerate(PATHOLOGIES):
            frame[f"logit_{name}"] = z[:, c]
        frame[f"logit_{NO_FINDING}"] = -z.max(axis=1)
        paths[split] = root / f"{split}.csv"
        frame.to_csv(paths[split], index=False)
    checkpoint = root / "checkpoint"
    assert calibrate.main(["--checkpoint", str(trained), "--predictions", str(paths["val"]),
                           "--metadata", str(METADATA), "--method", "temperature",
                           "--out", str(checkpoint)]) == 0, "calibration should succeed"
    out = checkpoint / "eval"
    for split in ("val", "test"):
        code = evaluate.main(["--checkpoint", str(checkpoint), "--split", split,
                              "--predictions", str(paths[split]), "--metadata", str(METADATA),
                              "--out", str(out), "--n-boot", "50"])
        assert code == 0, f"evaluation of {split} should succeed"
    localization = root / "loc.json"
    localization.write_text(json.dumps({
        "per_class": {"Cardiomegaly": {"pointing_game": 0.8125, "n_boxes": 16}},
        "method": "pointing game on NIH boxes"}))
    readme = root / "checkpoint" / "README.md"
    code = model_card.main(["--checkpoint", str(checkpoint),
                            "--report", str(out / "report_val.json"),
                            "--report", str(out / "report_test.json"),
                            "--localization", str(localization), "--out", str(readme)])
    assert code == 0, "the card should be written"
    return {"text": readme.read_text(), "checkpoint": checkpoint,
            "test": json.loads((out / "report_test.json").read_text()),
            "val": json.loads((out / "report_val.json").read_text()), "root": root}


def test_card_has_hub_front_matter_and_says_it_is_not_a_medical_device(card):
    text = card["text"]
    assert text.startswith("---\nlicense: mit\n"), "Hugging Face front matter with a licence"
    front = text.split("---")[1]
    for key in ("tags:", "datasets:", "pipeline_tag: image-classification"):
        assert key in front, f"expected {key!r} in the front matter"
    assert "NOT a medical device" in text, "the card must state it is not a medical device"
    assert "## Intended use" in text and "## Limitations" in text, "intended use and limitations"
    assert "UNTRAINED" in text, "a random-init checkpoint must be flagged as untrained"


def test_card_figures_come_from_the_reports_and_config(card):
    text, test = card["text"], card["test"]
    assert fmt_ci(test["metrics"]["headline"]) in text, "the test headline with its CI"
    cardiomegaly = test["metrics"]["per_class"]["Cardiomegaly"]["auroc"]
    assert fmt_ci(cardiomegaly) in text, "per-class AUROC with its CI from the test report"
    assert "200 images of 200 patients" in text, "the size of each evaluated split"
    config = read_config(card["checkpoint"] / "config.json")
    assert f"| Cardiomegaly | {fmt(config.thresholds[1])} |" in text, "shipped thresholds"
    assert "Method: **temperature**" in text, "the calibration method from config.json"
    ece = card["val"]["calibration"]["ece"]["pooled"]
    assert f"| val | {fmt(ece['ece_before'])} | {fmt(ece['ece_after'])} |" in text, "ECE row"
    assert "| Cardiomegaly | 16 | 0.812 |" in text, "localisation figures from the given file"
    assert test["command"] in text, "the exact evaluation command, for reproduction"
    assert "eval/roc_test.png" in text, "figures linked relative to the card"


def test_a_file_that_is_not_an_evaluation_report_is_refused(card, capsys):
    bogus = card["root"] / "bogus.json"
    bogus.write_text(json.dumps({"split": "test"}))
    code = model_card.main(["--checkpoint", str(card["checkpoint"]), "--report", str(bogus),
                            "--out", str(card["root"] / "never.md")])
    assert code == 2, "a non-report JSON should be an error"
    assert "not a training.evaluate report" in capsys.readouterr().err, "the message says why"
    assert not (card["root"] / "never.md").exists(), "no card written on error"


def _card_with_provenance(card, tmp_path, edit) -> str:
    """The card of a copy of the fixture's checkpoint whose provenance ``edit`` changed."""
    return _card_with_config(card, tmp_path, lambda config: edit(config["provenance"]))


def _card_with_config(card, tmp_path, edit) -> str:
    """The card of a copy of the fixture's checkpoint whose config ``edit`` changed."""
    import shutil

    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(card["checkpoint"], checkpoint)
    config = json.loads((checkpoint / "config.json").read_text())
    edit(config)
    (checkpoint / "config.json").write_text(json.dumps(config))
    out = tmp_path / "README.md"
    eval_dir = card["checkpoint"] / "eval"
    assert model_card.main(["--checkpoint", str(checkpoint), "--report", str(eval_dir / "report_val.json"),
                            "--report", str(eval_dir / "report_test.json"), "--out", str(out)]) == 0
    return out.read_text()


def test_a_distilled_model_names_its_teacher_and_that_metrics_use_nih_labels(card, tmp_path):
    distillation = {"teacher": str(REFERENCE), "weight": 0.7, "labels": list(PATHOLOGIES),
                    "train_images": 300, "softened_images": 300, "ignored_rows": 200}
    text = _card_with_provenance(card, tmp_path, lambda p: p.update(distillation=distillation))
    assert f"`{REFERENCE}`" in text and "w = 0.7" in text, "expected the teacher file and weight named"
    assert "for 300 of 300 training images on 14 outputs" in text, "expected what the teacher covered"
    assert "against NIH labels alone" in text, "expected the card to say the metrics do not use the teacher"


def test_a_refit_says_its_thresholds_came_from_out_of_fold_predictions_not_a_validation_split(card, tmp_path):
    note = "predictions of the 5 fold models, not predictions of this model"
    text = _card_with_provenance(
        card, tmp_path, lambda p: p["validation_fit"].update(out_of_fold={"folds": 5, "note": note}))
    thresholds = text.split("## Thresholds", 1)[1].split("##", 1)[0]
    assert "out-of-fold predictions" in thresholds and note in thresholds, (
        "expected the thresholds' source to be the out-of-fold predictions")
    assert "chosen on the validation split" not in text, "expected no claim of a validation split fit"
    calibration = text.split("## Calibration", 1)[1].split("##", 1)[0]
    assert "fitted on out-of-fold predictions" in calibration, "expected the calibration's source too"
    assert "## Evaluation on the val split" not in text, "expected no section claiming a validation split"
    assert "not of this model" in text.split("## Out-of-fold evaluation", 1)[1], (
        "expected the out-of-fold report labelled as the fold models' predictions")


def test_a_model_without_a_test_split_says_its_unseen_patient_estimate_is_out_of_fold(card, tmp_path):
    import shutil

    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(card["checkpoint"], checkpoint)
    config = json.loads((checkpoint / "config.json").read_text())
    config["provenance"]["validation_fit"]["out_of_fold"] = {"folds": 5, "note": "fold models"}
    (checkpoint / "config.json").write_text(json.dumps(config))
    val = ["--report", str(card["checkpoint"] / "eval" / "report_val.json")]
    test = ["--report", str(card["checkpoint"] / "eval" / "report_test.json")]
    texts = {}
    for name, reports in (("out of fold only", val), ("with test", [*val, *test])):
        out = tmp_path / f"{name}.md"
        assert model_card.main(["--checkpoint", str(checkpoint), *reports, "--out", str(out)]) == 0
        texts[name] = out.read_text()
    assert "No test split of its own" in texts["out of fold only"], (
        "expected a card without a test report to say the out-of-fold figures stand in for one")
    assert "No test split of its own" not in texts["with test"], "expected no such note with a test report"

    config["provenance"]["validation_fit"].pop("out_of_fold")
    (checkpoint / "config.json").write_text(json.dumps(config))
    out = tmp_path / "validation only.md"
    assert model_card.main(["--checkpoint", str(checkpoint), *val, "--out", str(out)]) == 0
    assert "No test split scored" in out.read_text(), (
        "expected a card scored only on its own fit split to call its figures optimistic")


def test_the_card_says_how_a_radiograph_is_scored(card, tmp_path):
    assert "- Scoring: each radiograph as given" in card["text"]
    text = _card_with_config(card, tmp_path, lambda config: config.update(mirror_average=True))
    scoring = text.split("- Scoring:", 1)[1].split("\n", 1)[0]
    assert "mirror image" in scoring and "thresholds, calibration and the metrics" in scoring, (
        "expected a mirror-averaging model's card to say its thresholds and metrics assume it")


def test_classes_without_signal_are_marked_in_the_thresholds_table(card, tmp_path):
    text = _card_with_provenance(
        card, tmp_path, lambda p: p["validation_fit"].update(no_signal=["Pneumonia", "Hernia"]))
    thresholds = text.split("## Thresholds", 1)[1].split("\n## ", 1)[0]
    marked = [line for line in thresholds.splitlines() if "**no signal**" in line]
    assert len(marked) == 2 and any("Pneumonia" in line for line in marked), (
        f"expected exactly the two no-signal classes marked, got {marked}")
    assert "Hernia, Pneumonia" in thresholds, "expected the no-signal classes named in a sentence"
