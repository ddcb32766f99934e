"""python -m training.crossval: folds by patient, the test split left out, resumable, honest summary."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from tests.synthetic_xray import write_dataset
from training.crossval import (
    CALIBRATED_DIR,
    CURVE_FILE,
    ENSEMBLE_FILE,
    FOLD_SCORES_FILE,
    OOF_FILE,
    REFIT_DIR,
    REPORT_FILE,
    continued_from,
    cross_validate,
    ensemble_predictions,
    fold_of_patients,
    fold_splits,
    main,
    pooled_rows,
)
from training.data.metadata import FINDINGS, IMAGE, PATIENT
from training.data.predictions import read_predictions
from training.data.splits import Splits
from training.fitting.config import ConfigError, from_dict, parse_config
from training.fitting.run_folder import RunFolder
from xray_app.labels import PATHOLOGIES

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _rows(patients: range, images_each: int) -> pd.DataFrame:
    return pd.DataFrame([
        {IMAGE: f"{p:08d}_{i:03d}.png", PATIENT: p, FINDINGS: "No Finding"}
        for p in patients for i in range(images_each)
    ])


def _small_cv(tmp_path: Path, *, count: int, seed: int) -> tuple[list[str], Path]:
    """The argv of a 2-fold cross-validation of synthetic radiographs at 32 px, 2 epochs,
    and its output folder."""
    metadata, images = write_dataset(tmp_path / "data", count=count, size=64, seed=seed, images_per_patient=2)
    out = tmp_path / "cv"
    argv = ["--folds", "2", "--metadata", str(metadata), "--images", str(images), "--out", str(out),
            "--input-size", "32", "--batch-size", "8", "--pretrained", "none", "--architecture", "tiny-resnet", "--num-workers", "0",
            "--no-progress", "--val-fraction", "0.2", "--test-fraction", "0.2", "--epochs", "2",
            "--lr", "1e-3"]
    return argv, out


def _patients(frame: pd.DataFrame) -> set[int]:
    return set(frame[PATIENT].tolist())


def test_every_pooled_image_is_validated_once_and_no_fold_trains_on_its_own_patients():
    splits = Splits(train=_rows(range(1, 31), 3), val=_rows(range(31, 41), 2),
                    test=_rows(range(41, 51), 1), method="test")
    folds = fold_splits(splits, 4, seed=7)
    pooled = set(splits.train[IMAGE]) | set(splits.val[IMAGE])
    validated = [name for part in folds for name in part.val[IMAGE]]
    assert sorted(validated) == sorted(pooled), "expected each train+val image validated exactly once"
    for part in folds:
        assert not _patients(part.train) & _patients(part.val), "expected no patient in a fold's train and val"
        assert set(part.train[IMAGE]) | set(part.val[IMAGE]) == pooled, "expected a fold to use all of train+val"
        assert part.test is splits.test, "expected the test split carried along untouched"
        assert not set(part.test[IMAGE]) & pooled, "expected no test image in training or validation"
    sizes = [len(_patients(part.val)) for part in folds]
    assert max(sizes) - min(sizes) <= 1, f"expected folds of near-equal patient counts, got {sizes}"


def test_under_torchrun_it_refuses_with_a_message_instead_of_racing_on_the_fold_files(
        tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["--out", str(tmp_path / "cv"), "--pretrained", "none"]) == 2, "expected a usage error"
    assert "without torchrun" in capsys.readouterr().err, "expected the reason on stderr"


def test_fold_dealing_follows_the_seed_and_refuses_impossible_fold_counts():
    patients = np.arange(100, 140)
    assert fold_of_patients(patients, 5, seed=1) == fold_of_patients(patients, 5, seed=1), (
        "expected the same seed to deal the same folds")
    assert fold_of_patients(patients, 5, seed=1) != fold_of_patients(patients, 5, seed=2), (
        "expected another seed to deal other folds")
    with pytest.raises(ConfigError, match="--fold 3"):
        cross_validate(parse_config(["--pretrained", "none", "--cache", "unused"]), folds=2, seed=0, only=3)
    with pytest.raises(ConfigError, match="--refit needs every fold"):
        cross_validate(parse_config(["--pretrained", "none", "--cache", "unused"]), folds=2, seed=0, only=1,
                       refit=True)
    for folds in (1, 41):
        with pytest.raises(ConfigError, match="folds"):
            fold_of_patients(patients, folds, seed=0)
    with pytest.raises(SystemExit):  # argparse's usage error: --fold takes a number or "refit"
        main(["--fold", "last", "--pretrained", "none"])


@pytest.mark.slow
def test_folds_trained_apart_then_reported_together_without_retraining(tmp_path, capsys):
    argv, out = _small_cv(tmp_path, count=60, seed=2)
    argv += ["--patience", "1"]
    assert main([*argv, "--fold", "2"]) == 0, "expected exit 0 for one fold"
    assert (out / "fold_2" / "best").is_dir() and not (out / "fold_1").exists(), (
        "expected --fold 2 to train fold 2 alone")
    assert not (out / REPORT_FILE).exists(), "expected no report before every fold has run"
    fold_2 = (out / "fold_2" / "metrics.csv").read_text()
    assert main(argv) == 0, "expected exit 0"
    assert (out / "fold_2" / "metrics.csv").read_text() == fold_2, "expected fold 2 not trained again"
    report = json.loads((out / REPORT_FILE).read_text())
    folds = [pd.read_csv(out / f"fold_{k}" / "val.csv") for k in (1, 2)]
    test = pd.read_csv(out / "fold_1" / "test.csv")
    assert report["images"] == sum(len(f) for f in folds) == 60 - len(test), (
        "expected train+val pooled and the test images left out")
    assert report["test_images_left_out"] == len(test) > 0, "expected the test split counted, not used"

    # the curve is the per-fold mean over the pathologies each fold could score
    curve = pd.read_csv(out / CURVE_FILE, index_col="epoch")
    for k in (1, 2):
        metrics = pd.read_csv(out / f"fold_{k}" / "metrics.csv")
        assert len(metrics) == 2, "expected every epoch run (early stopping off in folds)"
        expected = metrics[[f"val_auroc_{n}" for n in PATHOLOGIES]].mean(axis=1, skipna=True).to_numpy()
        assert curve[f"fold_{k}"].to_numpy() == pytest.approx(expected, abs=1e-4), (
            f"expected fold {k}'s curve to be its mean pathology AUROC per epoch")
        assert (out / f"fold_{k}" / "best" / "model.safetensors").is_file(), "expected each fold exported"
    assert report["final"]["epoch"] == 2, "expected 'final' to be the last epoch"
    assert report["final"]["mean"] == pytest.approx(curve.loc[2, ["fold_1", "fold_2"]].mean(), abs=1e-4)
    assert report["best"]["mean"] == pytest.approx(curve["mean"].max(), abs=1e-4), (
        "expected 'best' to be the epoch of the highest fold mean")

    before = [(out / f"fold_{k}" / "metrics.csv").read_text() for k in (1, 2)]
    capsys.readouterr()
    assert main(argv) == 0, "expected a second call to succeed"
    printed = capsys.readouterr().out
    assert "epoch 1:" not in printed, f"expected finished folds not trained again:\n{printed}"
    assert [(out / f"fold_{k}" / "metrics.csv").read_text() for k in (1, 2)] == before, (
        "expected finished folds left as they were")


def _pathology_auroc(frame: pd.DataFrame) -> float:
    """Mean AUROC over the pathologies a predictions frame (with labels joined) can score."""
    scores = []
    for name in PATHOLOGIES:
        truth = frame[FINDINGS].str.split("|").apply(lambda found, n=name: n in found)
        if 0 < truth.sum() < len(truth):
            scores.append(roc_auc_score(truth, frame[f"logit_{name}"]))
    return float(np.mean(scores))


@pytest.mark.slow
def test_folds_trained_without_validation_are_reported_out_of_fold_only(tmp_path, capsys):
    argv, out = _small_cv(tmp_path, count=40, seed=4)
    argv += ["--no-validate"]
    assert main(argv) == 2, "expected --no-validate without --out-of-fold refused: it would have no figure"
    assert "--out-of-fold" in capsys.readouterr().err, "expected the fix named"
    assert main([*argv, "--out-of-fold"]) == 0, "expected exit 0"
    report = json.loads((out / REPORT_FILE).read_text())
    for k in (1, 2):
        metrics = pd.read_csv(out / f"fold_{k}" / "metrics.csv")
        assert len(metrics) == 2 and not any(c.startswith("val_") for c in metrics.columns), (
            f"expected fold {k} to run every epoch without validating")
    assert "final" not in report and not (out / CURVE_FILE).exists(), (
        "expected no per-epoch figure made up for folds that did not validate")
    assert len(report["out_of_fold"]["as_given"]["folds"]) == 2, (
        "expected each fold's last epoch scored on its held-out patients")
    assert len(pd.read_csv(out / OOF_FILE)) == report["images"], "expected every pooled image scored once"


@pytest.mark.slow
def test_refit_trains_on_all_pooled_images_and_takes_thresholds_from_out_of_fold_predictions(tmp_path):
    argv, out = _small_cv(tmp_path, count=60, seed=3)
    argv += ["--mirror-average"]
    refit = out / REFIT_DIR
    # the refit needs no fold's result, so it can be trained alone, beside the folds
    assert main([*argv, "--fold", "refit"]) == 0, "expected exit 0 for the refit alone"
    assert (refit / "best").is_dir() and not (out / "fold_1").exists(), (
        "expected --fold refit to train the refit alone")
    trained_alone = (refit / "metrics.csv").read_text()
    assert main([*argv, "--refit"]) == 0, "expected exit 0"
    assert (refit / "metrics.csv").read_text() == trained_alone, "expected the finished refit not trained again"
    pooled = pd.concat([pd.read_csv(out / f"fold_{k}" / "val.csv") for k in (1, 2)], ignore_index=True)
    test = pd.read_csv(out / "fold_1" / "test.csv")

    # out-of-fold: every pooled image once, scored by the last epoch of the fold that held it
    # out, each averaged with its mirror image as the refit will score images (and as the
    # folds' own validation did)
    oof = pd.read_csv(out / OOF_FILE)
    assert sorted(oof[IMAGE]) == sorted(pooled[IMAGE]), "expected each pooled image scored exactly once"
    oof = oof.merge(pooled[[IMAGE, FINDINGS]], on=IMAGE)
    report = json.loads((out / REPORT_FILE).read_text())
    assert report["out_of_fold"]["written_predictions"] == "mirror_average"
    for k in (1, 2):
        fold_images = set(pd.read_csv(out / f"fold_{k}" / "val.csv")[IMAGE])
        last = pd.read_csv(out / f"fold_{k}" / "metrics.csv").iloc[-1]
        expected = last[[f"val_auroc_{n}" for n in PATHOLOGIES]].astype(float).mean(skipna=True)
        scored = _pathology_auroc(oof[oof[IMAGE].isin(fold_images)])
        assert scored == pytest.approx(expected, abs=1e-4), (
            f"expected fold {k}'s out-of-fold scores to be its last epoch's validation scores")
        assert report["out_of_fold"]["mirror_average"]["folds"][k - 1] == pytest.approx(scored, abs=1e-4), (
            f"expected the report's fold {k} figure to be its out-of-fold AUROC")
    assert len(report["out_of_fold"]["as_given"]["folds"]) == 2, (
        "expected the images-as-given figures beside the mirror-averaged ones")

    # the refit: all pooled images, no validation, every epoch, the last exported
    assert sorted(pd.read_csv(refit / "train.csv")[IMAGE]) == sorted(pooled[IMAGE]), (
        "expected the refit to train on all of train + val")
    assert len(pd.read_csv(refit / "val.csv")) == 0, "expected no validation images in the refit"
    assert not set(pd.read_csv(refit / "train.csv")[IMAGE]) & set(test[IMAGE]), "expected the test split untouched"
    metrics = pd.read_csv(refit / "metrics.csv")
    assert list(metrics["epoch"]) == [1, 2], "expected every epoch run"
    assert not any(c.startswith("val_") for c in metrics.columns), "expected no validation figures"
    trained = json.loads((refit / "best" / "config.json").read_text())
    assert "validation_fit" not in trained["provenance"], "expected the trained export left uncalibrated"
    config = json.loads((refit / CALIBRATED_DIR / "config.json").read_text())
    assert config["provenance"]["metrics"]["epoch"] == 2, "expected the last epoch exported"
    assert config["mirror_average"] is True, (
        "expected the refit to score images as its out-of-fold thresholds were fitted")
    fit = config["provenance"]["validation_fit"]
    assert fit["predictions"]["file"] == OOF_FILE and fit["n_images"] == len(pooled), (
        "expected thresholds and calibration fitted on the out-of-fold predictions")
    assert fit["out_of_fold"]["folds"] == 2, "expected the record to say the predictions are out of fold"
    assert config["calibration"] is not None and len(config["thresholds"]) == 15
    assert report["refit"]["checkpoint"] == str(refit / CALIBRATED_DIR)
    assert (refit / CALIBRATED_DIR / "model.safetensors").read_bytes() == (
        refit / "best" / "model.safetensors").read_bytes(), "expected calibration to keep the weights"


@pytest.mark.slow
def test_parts_trained_on_another_machine_are_reported_from_their_small_files_without_last_ckpt(
    tmp_path, capsys
):
    argv, out = _small_cv(tmp_path, count=40, seed=5)
    argv += ["--mirror-average"]
    for part in ("1", "2"):  # each as if on a machine of its own
        assert main([*argv, "--fold", part, "--out-of-fold"]) == 0, f"expected exit 0 for fold {part}"
    assert main([*argv, "--fold", "refit"]) == 0, "expected exit 0 for the refit"
    fold_files = {}
    for k in (1, 2):
        fold = out / f"fold_{k}"
        record = json.loads((fold / FOLD_SCORES_FILE).read_text())
        assert record["epoch"] == 2 and record["written"] == "mirror_average", (
            f"expected fold {k} scored at its last epoch as soon as it finished, got {record}")
        fold_files[k] = pd.read_csv(fold / OOF_FILE)
    # a last.ckpt newer than the fold's predictions (trained on after they were made) is
    # scored again rather than trusted
    fold_1 = out / "fold_1"
    stamp = (fold_1 / OOF_FILE).stat().st_mtime
    os.utime(fold_1 / RunFolder.CHECKPOINT, (stamp + 60, stamp + 60))
    assert main([*argv, "--fold", "1", "--out-of-fold"]) == 0
    assert (fold_1 / OOF_FILE).stat().st_mtime > stamp, "expected fold 1 scored again"
    # what comes back from the other machines: every part without its last.ckpt
    for part in ("fold_1", "fold_2", REFIT_DIR):
        (out / part / RunFolder.CHECKPOINT).unlink()
    metrics = {part: (out / part / "metrics.csv").read_text() for part in ("fold_1", "fold_2", REFIT_DIR)}
    capsys.readouterr()

    assert main([*argv, "--refit"]) == 0, "expected the report from the copied-back folders"
    printed = capsys.readouterr().out
    assert "epoch 1:" not in printed, f"expected no part trained again:\n{printed}"
    assert {part: (out / part / "metrics.csv").read_text() for part in metrics} == metrics, (
        "expected every part left as it was")
    pooled = pd.read_csv(out / OOF_FILE)
    expected = pd.concat([fold_files[k].assign(fold=k) for k in (1, 2)], ignore_index=True)
    pd.testing.assert_frame_equal(pooled, expected, check_exact=False, atol=1e-6,
                                  obj="pooled predictions: each fold's, with the fold that scored them")
    report = json.loads((out / REPORT_FILE).read_text())
    for k in (1, 2):
        record = json.loads((out / f"fold_{k}" / FOLD_SCORES_FILE).read_text())
        assert report["out_of_fold"]["mirror_average"]["folds"][k - 1] == pytest.approx(
            record["auroc"]["mirror_average"], abs=1e-4), f"expected fold {k}'s own figure in the report"
    fit = json.loads((out / REFIT_DIR / CALIBRATED_DIR / "config.json").read_text())["provenance"]["validation_fit"]
    assert fit["n_images"] == len(pooled), "expected the refit's thresholds fitted on the pooled predictions"

    # scored another way than the folds were, with nothing to score them again from: refused
    without_mirror = [a for a in argv if a != "--mirror-average"]
    assert main([*without_mirror, "--out-of-fold"]) == 2, "expected a refusal, not a silent re-use"
    assert "no last.ckpt to score it again" in capsys.readouterr().err


def test_a_second_stage_starts_each_fold_from_the_same_fold_and_refuses_one_that_saw_its_patients(tmp_path):
    pool = _rows(range(10), 2)
    splits = Splits(train=pool.iloc[:14], val=pool.iloc[14:], test=_rows(range(50, 52), 1), method="test")
    parts = fold_splits(splits, 2, seed=0)
    earlier = tmp_path / "cv"
    for k, part in enumerate(parts):  # an earlier cross-validation's fold folders
        folder = earlier / f"fold_{k + 1}"
        folder.mkdir(parents=True)
        part.train.to_csv(folder / "train.csv", index=False)
        (folder / RunFolder.CHECKPOINT).write_bytes(b"")
    cfg = from_dict({"data": {"images": "unused"}, "pretrained": "none"})
    continued = continued_from(cfg, earlier / "fold_1", parts[0])
    assert continued.pretrained == str(earlier / "fold_1" / RunFolder.CHECKPOINT), (
        "expected fold 1 to start from the earlier fold 1's last epoch")
    with pytest.raises(ConfigError, match="validates or tests on"):
        continued_from(cfg, earlier / "fold_2", parts[0])  # fold 2 trained on fold 1's held-out patients
    with pytest.raises(ConfigError, match="no finished run"):
        continued_from(cfg, tmp_path / "nothing", parts[0])


@pytest.mark.slow
def test_a_cross_validated_second_stage_scores_each_folds_weight_average_out_of_fold(tmp_path):
    metadata, images = write_dataset(tmp_path / "data", count=40, size=64, seed=4, images_per_patient=2)
    argv = ["--folds", "2", "--metadata", str(metadata), "--images", str(images),
            "--input-size", "32", "--batch-size", "8", "--pretrained", "none", "--architecture", "tiny-resnet", "--num-workers", "0",
            "--no-progress", "--val-fraction", "0.2", "--test-fraction", "0.2", "--lr", "1e-3"]
    first, second = tmp_path / "cv", tmp_path / "cv_swa"
    assert main([*argv, "--out", str(first), "--epochs", "1"]) == 0, "expected the first stage to run"
    assert main([*argv, "--out", str(second), "--epochs", "2", "--swa-epochs", "2",
                 "--continue-from", str(first), "--out-of-fold"]) == 0, "expected the second stage to run"
    report = json.loads((second / REPORT_FILE).read_text())
    oof = pd.read_csv(second / OOF_FILE)
    for k in (1, 2):
        config = parse_config(["--config", str(second / f"fold_{k}" / "config.yaml")])
        assert config.pretrained == str(first / f"fold_{k}" / RunFolder.CHECKPOINT), (
            f"expected fold {k} continued from the first stage's fold {k}")
        last = pd.read_csv(second / f"fold_{k}" / "metrics.csv").iloc[-1]
        assert last["swa_models"] == 2, "expected both epochs of the second stage averaged"
        expected = last[[f"val_auroc_{n}" for n in PATHOLOGIES]].astype(float).mean(skipna=True)
        fold_images = set(pd.read_csv(second / f"fold_{k}" / "val.csv")[IMAGE])
        labelled = oof[oof[IMAGE].isin(fold_images)].merge(
            pd.read_csv(second / f"fold_{k}" / "val.csv")[[IMAGE, FINDINGS]], on=IMAGE)
        assert _pathology_auroc(labelled) == pytest.approx(expected, abs=1e-4), (
            f"expected fold {k} scored out of fold by the weight average it validated")
        assert report["out_of_fold"]["as_given"]["folds"][k - 1] == pytest.approx(expected, abs=1e-4)


def test_pooling_the_training_rows_alone_keeps_the_validation_rows_out_of_every_fold():
    splits = Splits(train=_rows(range(1, 31), 2), val=_rows(range(31, 41), 2),
                    test=_rows(range(41, 51), 1), method="test")
    folds = fold_splits(pooled_rows(splits, "train"), 3, seed=0)
    kept_out = set(splits.val[IMAGE])
    for part in folds:
        assert set(part.train[IMAGE]) | set(part.val[IMAGE]) == set(splits.train[IMAGE]), (
            "expected the folds to deal the training rows alone")
        assert kept_out <= set(part.test[IMAGE]), "expected the validation rows beside the test rows"
    assert pooled_rows(splits, "train+val") is splits, "expected the default pool to be the splits as given"
    with pytest.raises(ConfigError, match="--pool"):
        pooled_rows(splits, "everything")


@pytest.mark.slow
def test_the_ensemble_teacher_averages_the_fold_models_as_the_app_scores_and_nests_within_a_fold(tmp_path):
    argv, out = _small_cv(tmp_path, count=40, seed=5)
    argv = [*argv[:argv.index("--epochs")], "--epochs", "1", "--no-validate", "--mirror-average"]
    assert main([*argv, "--out-of-fold", "--ensemble-predictions"]) == 0, "expected exit 0"
    report = json.loads((out / REPORT_FILE).read_text())
    ensemble = read_predictions(out / ENSEMBLE_FILE)
    pooled = pd.concat([pd.read_csv(out / "fold_1" / name) for name in ("train.csv", "val.csv")])
    assert sorted(ensemble.images) == sorted(pooled[IMAGE]), "expected every pooled image scored once"
    assert report["ensemble"]["models"] == 2, "expected both fold models in the ensemble"

    cfg = parse_config(argv[2:])  # training.train's flags: --folds is crossval's own
    runs = [out / "fold_1", out / "fold_2"]
    alone = [read_predictions(ensemble_predictions(cfg, [run, run], tmp_path / f"{run.name}.csv"))
             for run in runs]
    oof = pd.read_csv(out / "fold_1" / OOF_FILE).set_index(IMAGE)
    rows = [alone[0].images.index(name) for name in oof.index]
    expected = 1 / (1 + np.exp(-oof[[f"logit_{n}" for n in alone[0].labels]].to_numpy()))
    assert np.allclose(alone[0].probs[rows], expected, atol=1e-4), (
        "expected a fold model to score its held-out images as the out-of-fold scoring (and the app) does")
    assert np.allclose(ensemble.probs, (alone[0].probs + alone[1].probs) / 2, atol=1e-5), (
        "expected the ensemble to average the fold models' probabilities")

    nested = tmp_path / "nested"
    nested_argv = [*argv[:argv.index("--out")], "--out", str(nested), *argv[argv.index("--out") + 2:],
                   "--splits", str(out / "fold_1"), "--pool", "train"]
    assert main([*nested_argv, "--ensemble-predictions"]) == 0, "expected exit 0 within fold 1"
    taught = set(read_predictions(nested / ENSEMBLE_FILE).images)
    assert taught == set(pd.read_csv(out / "fold_1" / "train.csv")[IMAGE]), (
        "expected the nested teacher to cover fold 1's training images alone")
    held_out = set(pd.read_csv(out / "fold_1" / "val.csv")[IMAGE])
    for k in (1, 2):
        seen = pd.concat([pd.read_csv(nested / f"fold_{k}" / name) for name in ("train.csv", "val.csv")])
        assert not held_out & set(seen[IMAGE]), "expected no nested fold to see fold 1's held-out images"
