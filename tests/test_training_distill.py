"""Distillation: soft targets only on training images, validation keeps the NIH labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.synthetic_xray import write_dataset
from training.data.metadata import IMAGE, labels_of
from training.data.predictions import Predictions
from training.data.run_data import load_data
from training.data.soft_targets import soft_targets
from training.fitting.config import ConfigError, parse_config
from training.fitting.loop import fit
from training.train import main as train_main
from xray_app.labels import LABELS
from xray_app.model import load_checkpoint

EFFUSION = LABELS.index("Effusion")
NO_FINDING = LABELS.index("No Finding")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> tuple[Path, Path]:
    return write_dataset(tmp_path_factory.mktemp("distill"), count=40, size=64, seed=1)


def _teacher(names: list[str], probability: float = 0.9) -> Predictions:
    """A 14-class teacher (no "No Finding") that says ``probability`` for every output."""
    labels = tuple(label for label in LABELS if label != "No Finding")
    return Predictions(tuple(names), labels, None, np.full((len(names), len(labels)), probability))


def test_soft_target_mixes_label_and_teacher_only_where_the_teacher_speaks():
    labels = np.zeros((3, len(LABELS)), dtype=np.float32)
    labels[0, EFFUSION] = 1.0
    labels[1, NO_FINDING] = 1.0
    labels[2, NO_FINDING] = 1.0
    teacher = _teacher(["a.png", "b.png", "elsewhere.png"], probability=0.9)
    targets, softened, ignored = soft_targets(["a.png", "b.png", "c.png"], labels, teacher, 0.25)
    assert targets[0, EFFUSION] == pytest.approx(0.75 * 1 + 0.25 * 0.9), "expected (1-w)*label + w*teacher"
    assert targets[1, EFFUSION] == pytest.approx(0.25 * 0.9), "expected a negative label softened too"
    assert targets[:, NO_FINDING].tolist() == [0.0, 1.0, 1.0], "expected outputs the teacher lacks untouched"
    np.testing.assert_array_equal(targets[2], labels[2], err_msg="expected an unlisted image to keep its labels")
    assert (softened, ignored) == (2, 1), f"expected 2 softened images and 1 ignored row, got {(softened, ignored)}"


def test_weight_zero_is_plain_labels_and_weights_outside_0_1_are_refused():
    labels = np.eye(len(LABELS), dtype=np.float32)[:2]
    targets, _, _ = soft_targets(["a", "b"], labels, _teacher(["a", "b"]), 0.0)
    np.testing.assert_array_equal(targets, labels, err_msg="expected weight 0 to leave the labels as they are")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        soft_targets(["a", "b"], labels, _teacher(["a", "b"]), 1.5)


def _write_teacher_csv(names: list[str], path: Path, probability: float) -> Path:
    frame = pd.DataFrame({IMAGE: names})
    for label in LABELS[:-1]:
        frame[f"prob_{label}"] = probability
    frame.to_csv(path, index=False)
    return path


def _flags(synthetic: tuple[Path, Path], out: Path, *extra: str) -> list[str]:
    metadata, images = synthetic
    return ["--metadata", str(metadata), "--images", str(images), "--out", str(out),
            "--input-size", "32", "--batch-size", "8", "--pretrained", "none", "--architecture", "tiny-resnet", "--num-workers", "0",
            "--no-progress", "--val-fraction", "0.25", "--test-fraction", "0.25", "--seed", "3", *extra]


def test_teacher_rows_for_validation_and_test_images_never_reach_a_target(synthetic, tmp_path):
    metadata, _ = synthetic
    everyone = pd.read_csv(metadata)[IMAGE].tolist()
    teacher = _write_teacher_csv(everyone, tmp_path / "teacher.csv", probability=0.5)
    data = load_data(parse_config(_flags(synthetic, tmp_path / "run", "--teacher", str(teacher),
                                         "--distill-weight", "1")))
    assert set(data.train.labels[:, EFFUSION].tolist()) == {0.5}, (
        "expected weight 1 to give every training image the teacher's probability")
    np.testing.assert_array_equal(data.val.labels.numpy(), labels_of(data.splits.val),
                                  err_msg="expected validation targets to be the NIH labels")
    np.testing.assert_array_equal(data.train_labels, labels_of(data.splits.train),
                                  err_msg="expected the sampler and class weights to see 0/1 labels")
    assert data.distill.ignored_rows == len(data.splits.val) + len(data.splits.test), (
        f"expected the validation and test rows counted as ignored, got {data.distill}")


def test_a_distilled_run_records_its_teacher_in_the_exported_provenance(synthetic, tmp_path):
    metadata, _ = synthetic
    teacher = _write_teacher_csv(pd.read_csv(metadata)[IMAGE].tolist(), tmp_path / "teacher.csv", 0.2)
    best = fit(parse_config(_flags(synthetic, tmp_path / "run", "--teacher", str(teacher),
                                   "--epochs", "1", "--limit-batches", "1")))
    recorded = load_checkpoint(best).config.provenance["distillation"]
    assert recorded["teacher"] == teacher.name and recorded["weight"] == 0.5, (
        f"expected the teacher file by name (no machine-local path) and its weight, got {recorded}")
    assert recorded["labels"] == list(LABELS[:-1]), "expected the 14 distilled outputs listed"


def test_a_malformed_teacher_file_is_a_one_line_error(synthetic, tmp_path, capsys):
    bad = tmp_path / "teacher.csv"
    bad.write_text("Image Index,score\nx.png,0.3\n")
    assert train_main(_flags(synthetic, tmp_path / "run", "--teacher", str(bad))) == 2, "expected exit 2"
    assert "no 'logit_<Label>' or 'prob_<Label>' columns" in capsys.readouterr().err, "expected the reason"
    with pytest.raises(ConfigError, match="distill_weight"):
        parse_config(_flags(synthetic, tmp_path / "run", "--distill-weight", "-0.1"))
