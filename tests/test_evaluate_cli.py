"""``python -m training.evaluate`` end to end, on the shared radiographs and the reference
DenseNet's predictions (``../shared/data/nih``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.special import logit
from sklearn.metrics import roc_auc_score

from tests.paths import SHARED_DATA
from training import calibrate, evaluate
from training.data.metadata import labels_of, read_metadata
from training.metrics.classification import per_class_metrics
from xray_app.labels import LABELS, NO_FINDING, PATHOLOGIES
from xray_app.model import load_checkpoint, read_config, write_random_init
from xray_app.preprocess import preprocess

NIH = SHARED_DATA / "nih"
METADATA = NIH / "Data_Entry_2017_v2020.csv.gz"
REFERENCE = NIH / "chexnet_repro_preds.csv"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    """The reference DenseNet's probabilities joined to the NIH labels of the 500 images."""
    preds = pd.read_csv(REFERENCE, dtype={"Image Index": str})
    metadata = read_metadata(METADATA)
    return preds.merge(metadata, on="Image Index", how="inner", validate="one_to_one")


def test_reference_densenet_scores_well_above_chance_on_the_500_images(reference):
    assert len(reference) == 500, f"expected all 500 images labelled, got {len(reference)}"
    y = labels_of(reference)[:, : len(PATHOLOGIES)].astype(int)
    probs = reference[[f"prob_{name}" for name in PATHOLOGIES]].to_numpy()
    report = per_class_metrics(y, probs, np.full(14, 0.5), reference["Patient ID"].to_numpy(),
                               labels=PATHOLOGIES, n_boot=300, rng=np.random.default_rng(0))
    head = report["headline"]
    assert head["name"] == "mean AUROC over the 14 pathologies", f"headline: {head['name']}"
    assert head["value"] > 0.7 and head["ci_low"] > 0.65, (
        f"expected the reference model's mean AUROC well above 0.5, got {head['value']:.3f} "
        f"(CI {head['ci_low']:.3f}-{head['ci_high']:.3f})")
    for c, name in enumerate(PATHOLOGIES):
        expected = roc_auc_score(y[:, c], probs[:, c])
        got = report["per_class"][name]["auroc"]["value"]
        assert got == pytest.approx(expected, abs=1e-12), f"{name}: sklearn {expected}, got {got}"


def _write_logits(frame: pd.DataFrame, path: Path) -> Path:
    """A 15-class predictions file made from the reference probabilities: logit(p) for the
    pathologies, minus the largest pathology logit for "No Finding"."""
    probs = np.clip(frame[[f"prob_{name}" for name in PATHOLOGIES]].to_numpy(), 1e-6, 1 - 1e-6)
    logits = logit(probs)
    out = pd.DataFrame({"Image Index": frame["Image Index"]})
    for c, name in enumerate(PATHOLOGIES):
        out[f"logit_{name}"] = logits[:, c]
    out[f"logit_{NO_FINDING}"] = -logits.max(axis=1)
    out.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, reference):
    """A random-init checkpoint calibrated by ``training.calibrate`` on a 'validation' half
    of the images (predictions taken from the reference model) into a new folder, then
    evaluated on that half."""
    root = tmp_path_factory.mktemp("evaluate")
    trained = write_random_init(root / "checkpoint", input_size=64)
    before = (trained / "config.json").read_bytes()
    val_csv = _write_logits(reference.iloc[:250], root / "val_predictions.csv")
    test_csv = _write_logits(reference.iloc[250:], root / "test_predictions.csv")
    checkpoint = root / "calibrated"
    code = calibrate.main(["--checkpoint", str(trained), "--predictions", str(val_csv),
                           "--metadata", str(METADATA), "--method", "platt", "--n-boot", "20",
                           "--out", str(checkpoint)])
    assert code == 0, "calibration on the validation predictions should succeed"
    out = root / "eval"
    code = evaluate.main(["--checkpoint", str(checkpoint), "--split", "val",
                          "--predictions", str(val_csv), "--metadata", str(METADATA),
                          "--out", str(out), "--n-boot", "100"])
    assert code == 0, "the validation evaluation should succeed"
    return {"checkpoint": checkpoint, "trained": trained, "trained_config": before, "out": out,
            "test_csv": test_csv, "root": root}


def test_calibration_writes_a_new_checkpoint_and_leaves_the_trained_one_as_it_was(fitted):
    assert (fitted["trained"] / "config.json").read_bytes() == fitted["trained_config"], (
        "expected the input checkpoint's config.json unchanged")
    assert (fitted["checkpoint"] / "model.safetensors").read_bytes() == (
        fitted["trained"] / "model.safetensors").read_bytes(), "expected the same weights"
    config = read_config(fitted["checkpoint"] / "config.json")
    assert config.calibration is not None and config.calibration["method"] == "platt", (
        f"expected a Platt calibration in config.json, got {config.calibration}")
    assert len(config.calibration["scale"]) == 15, "one calibration scale per output"
    assert not np.allclose(config.thresholds, 0.5), "thresholds should have been chosen"
    fit = config.provenance["validation_fit"]
    assert (fit["split"], fit["n_images"]) == ("val", 250), f"fit record: {fit}"
    assert fit["predictions"]["file"] == "val_predictions.csv", (
        f"expected the predictions named by file name only (no machine-local path), got {fit}")
    report = json.loads((fitted["out"] / "report_val.json").read_text())
    assert "optimistic" in report["thresholds"], "expected figures on the fit images marked optimistic"
    assert report["thresholds"]["values"] == dict(zip(LABELS, config.thresholds, strict=True)), (
        "the validation report should show the thresholds written to config.json")
    ece = report["calibration"]["ece"]["pooled"]
    assert ece["ece_before"] is not None and ece["ece_after"] is not None, f"ECE before/after: {ece}"


def test_reports_and_plots_are_written(fitted):
    out = fitted["out"]
    for name in ("roc_val.png", "pr_val.png", "reliability_val.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000, f"{name} should be a real PNG"
    markdown = (out / "report_val.md").read_text()
    for phrase in ("mean AUROC over the 14 pathologies", "Always-negative baseline",
                   "exact match (subset)", "**Macro**", "**Micro**", "ECE before"):
        assert phrase in markdown, f"expected {phrase!r} in report_val.md"
    report = json.loads((out / "report_val.json").read_text())
    assert report["metrics"]["n_images"] == 250, "the report should count the 250 images"
    assert report["figures"]["roc"] == "roc_val.png", "the JSON should name its figures"


def test_test_split_uses_the_validation_thresholds_and_compares_side_by_side(fitted):
    out = fitted["root"] / "eval_test"
    code = evaluate.main(["--checkpoint", str(fitted["checkpoint"]), "--split", "test",
                          "--predictions", str(fitted["test_csv"]), "--metadata", str(METADATA),
                          "--compare", str(REFERENCE), "--compare-name", "CheXNet repro",
                          "--out", str(out), "--n-boot", "100"])
    assert code == 0, "the test run should succeed"
    report = json.loads((out / "report_test.json").read_text())
    config = read_config(fitted["checkpoint"] / "config.json")
    assert report["thresholds"]["values"] == dict(zip(LABELS, config.thresholds, strict=True)), (
        "the test report should use the thresholds chosen on validation")
    assert "fitted on held-out predictions" in report["thresholds"]["source"], report["thresholds"]["source"]
    comparison = report["comparison"]
    assert comparison["n_images"] == 250, "only the 250 images in both files are compared"
    assert comparison["labels"] == list(PATHOLOGIES), "the 14 shared classes are compared"
    # our logits are the reference's probabilities, calibrated by an increasing map:
    # same ranking, so the paired AUROC difference must be exactly zero
    difference = comparison["paired"]["mean_auroc_difference"]
    assert abs(difference["value"]) < 1e-9, f"expected no AUROC difference, got {difference}"
    assert "## Comparison" in (out / "report_test.md").read_text(), "markdown comparison section"


def test_evaluation_only_reads_the_checkpoint(fitted):
    config_path = fitted["checkpoint"] / "config.json"
    before = config_path.read_bytes()
    code = evaluate.main(["--checkpoint", str(fitted["checkpoint"]), "--split", "test",
                          "--predictions", str(fitted["test_csv"]), "--n-boot", "20",
                          "--metadata", str(METADATA), "--out", str(fitted["root"] / "x")])
    assert code == 0, "expected the test evaluation to succeed"
    assert config_path.read_bytes() == before, "expected config.json unchanged by an evaluation"
    with pytest.raises(SystemExit):  # thresholds are fitted by training.calibrate only
        evaluate.build_parser().parse_args(["--split", "val", "--fit", "platt"])


def test_cli_runs_the_model_on_real_images_through_the_shared_preprocessing(fitted):
    names = sorted(p.name for p in (NIH / "images").iterdir())[:3]
    split_csv = fitted["root"] / "three.csv"
    pd.DataFrame({"Image Index": names}).to_csv(split_csv, index=False)
    out = fitted["root"] / "eval_model"
    code = evaluate.main(["--checkpoint", str(fitted["checkpoint"]), "--split", "val",
                          "--split-csv", str(split_csv), "--images", str(NIH / "images"),
                          "--metadata", str(METADATA), "--out", str(out), "--n-boot", "20"])
    assert code == 0, "inference on three real images should succeed"
    written = pd.read_csv(out / "predictions_val.csv", dtype={"Image Index": str})
    assert written["Image Index"].tolist() == names, "one row per image, in split order"
    loaded = load_checkpoint(fitted["checkpoint"])
    with torch.inference_mode():
        batch = torch.stack([preprocess(NIH / "images" / n, loaded.config.preprocess)[0]
                             for n in names])
        expected = loaded.model(batch).numpy()
    got = written[[f"logit_{name}" for name in LABELS]].to_numpy()
    assert np.allclose(got, expected, rtol=1e-4, atol=1e-4), (
        "logits in predictions_val.csv should equal the model on the shared preprocessing")
    report = json.loads((out / "report_val.json").read_text())
    undefined = [n for n, m in report["metrics"]["per_class"].items() if m["auroc"]["value"] is None]
    assert undefined, "with three images some classes have no positives: reported undefined"


def test_a_class_whose_calibration_finds_no_relation_gets_no_max_f1_threshold(tmp_path, reference):
    """Ranking slightly better than chance but a Platt slope pushed to its floor (a few
    positives scored far below every negative) leaves one near-constant probability for every
    image; the class gets 0.5, not a max-F1 cut through that constant, and a note says why."""
    part = reference.iloc[:250]
    path = _write_logits(part, tmp_path / "val_predictions.csv")
    frame = pd.read_csv(path)
    y = labels_of(part)[:, LABELS.index("Effusion")].astype(bool)
    rng = np.random.default_rng(0)
    score = 0.3 * y + rng.normal(0, 1, len(y))
    score[np.flatnonzero(y)[:3]] = -40.0  # three positives scored far below everything
    frame["logit_Effusion"] = score
    frame.to_csv(path, index=False)
    trained = write_random_init(tmp_path / "checkpoint", input_size=64)
    checkpoint, fitted = calibrate.calibrate(trained, path, tmp_path / "calibrated",
                                             metadata=METADATA, method="platt")
    assert roc_auc_score(y, score) > 0.5, "the test needs a ranking above chance"
    config = read_config(checkpoint / "config.json")
    c = LABELS.index("Effusion")
    assert config.calibration["scale"][c] <= 1.001e-3, "expected the fitted scale at its floor"
    sample_threshold = config.operating_points["per_class"]["Effusion"]["sample_threshold"]
    assert sample_threshold == 0.5, f"expected the 0.5 fallback, got {sample_threshold}"
    assert config.thresholds[LABELS.index("Cardiomegaly")] != 0.5, "expected other classes fitted as usual"
    assert any(note.startswith("Effusion: calibration found no positive relation")
               for note in fitted.notes), fitted.notes
    assert "Effusion" in config.provenance["validation_fit"]["no_signal"], (
        "expected Effusion recorded as showing no signal")


def test_operating_points_and_population_are_recorded_and_used_by_the_app(tmp_path, reference):
    """calibrate sets the operating points by the default rule on the held-out films, moves
    probabilities and thresholds to all NIH films, and records the cross-fitted flag
    figures; the evaluation of the result flags exactly as the app's rule does."""
    path = _write_logits(reference, tmp_path / "val_predictions.csv")
    trained = write_random_init(tmp_path / "checkpoint", input_size=64)
    assert calibrate.main(["--checkpoint", str(trained), "--predictions", str(path), "--metadata",
                           str(METADATA), "--n-boot", "20", "--out", str(tmp_path / "cal")]) == 0
    config = read_config(tmp_path / "cal" / "config.json")
    points, population = config.operating_points, config.population
    assert points["method"] == "false-flags" and points["target"] == 0.40, points["description"]
    assert "112,120" in population["name"], "the default population is every NIH film"
    assert population["sample"]["prevalence"]["Pneumonia"] > population["prevalence"]["Pneumonia"], \
        "the 500 reference images are enriched for pneumonia against all NIH films"
    oof = points["out_of_fold"]
    assert oof["sample"]["flags_per_normal_film"]["value"] < 1.0, \
        "a 0.4 budget, cross-fitted, keeps false flags on normal films low"
    assert oof["population"]["weighting"]["effective_sample_size"] < 500, "raking costs precision"
    for label in LABELS:
        entry = points["per_class"][label]
        assert entry["threshold"] == pytest.approx(config.thresholds[LABELS.index(label)])

    out = tmp_path / "eval"
    assert evaluate.main(["--checkpoint", str(tmp_path / "cal"), "--predictions", str(path),
                          "--split", "val", "--n-boot", "20", "--metadata", str(METADATA),
                          "--out", str(out)]) == 0
    report = json.loads((out / "report_val.json").read_text())
    weighted = report["flags"]["population"]
    ratio = weighted["median_probability_ratio"]["value"]
    assert 0.5 < ratio < 2.0, f"probabilities moved to NIH's prevalence average near it, got {ratio}"


def test_an_unknown_operating_rule_is_a_usage_error(tmp_path, reference, capsys):
    path = _write_logits(reference.iloc[:50], tmp_path / "p.csv")
    trained = write_random_init(tmp_path / "checkpoint", input_size=64)
    assert calibrate.main(["--checkpoint", str(trained), "--predictions", str(path), "--metadata",
                           str(METADATA), "--operating-rule", "sensitivity=0.9",
                           "--out", str(tmp_path / "cal")]) == 2
    assert "false-flags=B, specificity=S" in capsys.readouterr().err


def _two_source_folders(frame: pd.DataFrame, root: Path) -> list[Path]:
    """``root/first`` and ``root/second``: links to the first and second half of ``frame``'s
    images, two source folders."""
    folders = [root / "first", root / "second"]
    half = len(frame) // 2
    for k, folder in enumerate(folders):
        folder.mkdir()
        for name in frame["Image Index"].iloc[k * half:(k + 1) * half]:
            (folder / name).symlink_to(NIH / "images" / name)
    return folders


def test_headline_is_reported_per_source_folder_as_well_as_pooled(tmp_path, reference):
    """Folders picked differently are reported apart: each image counted in the folder it
    lies in, the per-folder counts adding up to the pooled one."""
    part = reference.iloc[:120]
    path = _write_logits(part, tmp_path / "preds.csv")
    folders = _two_source_folders(part, tmp_path)
    out = tmp_path / "eval"
    assert evaluate.main(["--predictions", str(path), "--split", "val", "--metadata", str(METADATA),
                          "--sources", *map(str, folders), "--n-boot", "20", "--out", str(out)]) == 0
    report = json.loads((out / "report_val.json").read_text())
    by_source = report["by_source"]
    assert sorted(by_source) == ["first", "second"], f"expected one entry per folder: {sorted(by_source)}"
    assert sum(entry["n_images"] for entry in by_source.values()) == report["metrics"]["n_images"]
    assert "Per source folder" in (out / "report_val.md").read_text(), "the Markdown report shows them"
    for kind in ("against_no_finding", "against_other_findings"):
        assert 0 < report["negatives"][kind] < 1 and all(
            0 < entry["negatives"][kind] < 1 for entry in by_source.values()), (
            f"expected each pathology told apart from normal films and from other findings ({kind}), "
            "pooled and per folder")


def test_flag_figures_are_given_per_source_folder_out_of_fold_and_when_evaluated(tmp_path, reference):
    """With --sources, calibrate's cross-fitted flag figures and evaluate's flag figures
    are also given per folder: a folder's entry is the figures of its films alone, and the
    model card shows them in a table of their own."""
    from training.model_card import build_card

    path = _write_logits(reference, tmp_path / "preds.csv")
    folders = _two_source_folders(reference, tmp_path)
    trained = write_random_init(tmp_path / "checkpoint", input_size=64)
    assert calibrate.main(["--checkpoint", str(trained), "--predictions", str(path), "--metadata",
                           str(METADATA), "--sources", *map(str, folders), "--n-boot", "20",
                           "--out", str(tmp_path / "cal")]) == 0
    oof = read_config(tmp_path / "cal" / "config.json").operating_points["out_of_fold"]
    assert sorted(oof["by_source"]) == ["first", "second"], sorted(oof["by_source"])
    assert [entry["n_images"] for entry in oof["by_source"].values()] == [250, 250]

    def flags_of(predictions: Path, out: Path, *extra: str) -> dict:
        assert evaluate.main(["--checkpoint", str(tmp_path / "cal"), "--predictions", str(predictions),
                              "--split", "test", "--n-boot", "20", "--metadata", str(METADATA),
                              *extra, "--out", str(out)]) == 0
        return json.loads((out / "report_test.json").read_text())

    report = flags_of(path, tmp_path / "eval", "--sources", *map(str, folders))
    alone = flags_of(_write_logits(reference.iloc[:250], tmp_path / "first.csv"), tmp_path / "alone")
    for key in ("flags_per_normal_film", "normal_films_with_any_flag", "abnormal_films_with_a_correct_flag"):
        assert report["flags"]["by_source"]["first"][key]["value"] == pytest.approx(
            alone["flags"]["sample"][key]["value"]), f"{key}: the first folder's films alone"

    card = build_card(json.loads((tmp_path / "cal" / "config.json").read_text()), [report])
    assert "| figure | out of fold, `first` | out of fold, `second` | test, `first` | test, `second` |" in card
