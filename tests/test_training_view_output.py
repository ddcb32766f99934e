"""--view-loss-weight: an auxiliary AP/PA output that only training sees."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.synthetic_xray import write_dataset
from training.data.metadata import IMAGE
from training.data.run_data import load_data
from training.fitting.config import ConfigError, parse_config
from training.fitting.loop import fit
from training.fitting.losses import FocalWeightedLoss
from training.fitting.run_folder import RunFolder
from training.fitting.runtime import TrainingError
from training.fitting.view_output import VIEW_COLUMN, ViewAuxiliaryLoss, WithViewOutput
from xray_app.labels import NUM_LABELS
from xray_app.model import build_model, load_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> tuple[Path, Path]:
    """A small dataset whose even-numbered patients were filmed AP."""
    metadata, images = write_dataset(tmp_path_factory.mktemp("view"), count=40, size=64, seed=2)
    frame = pd.read_csv(metadata)
    frame["View Position"] = np.where(frame["Patient ID"] % 2 == 0, "AP", "PA")
    frame.to_csv(metadata, index=False)
    return metadata, images


def _flags(synthetic: tuple[Path, Path], out: Path, *extra: str) -> list[str]:
    metadata, images = synthetic
    return ["--metadata", str(metadata), "--images", str(images), "--out", str(out),
            "--input-size", "32", "--batch-size", "8", "--pretrained", "none",
            "--architecture", "tiny-resnet", "--num-workers", "0", "--no-progress",
            "--val-fraction", "0.25", "--test-fraction", "0.25", "--seed", "3", *extra]


def test_the_view_output_leaves_the_findings_logits_as_the_network_makes_them():
    torch.manual_seed(0)
    network = build_model(architecture="tiny-resnet", pretrained="none").eval()
    images = torch.randn(3, 3, 32, 32)
    logits = WithViewOutput(network).eval()(images)
    assert logits.shape == (3, NUM_LABELS + 1), f"expected 15 findings then the view, got {tuple(logits.shape)}"
    assert torch.allclose(logits[:, :NUM_LABELS], network(images), atol=1e-6), (
        "expected the first 15 logits to be the exported network's own")


def test_the_loss_adds_the_weighted_view_cross_entropy_to_the_findings_loss():
    torch.manual_seed(0)
    findings = FocalWeightedLoss(alpha=0.6, gamma=1.0)
    logits, targets = torch.randn(4, NUM_LABELS + 1), torch.randint(0, 2, (4, NUM_LABELS + 1)).float()
    expected = findings(logits[:, :NUM_LABELS], targets[:, :NUM_LABELS]) + 0.1 * torch.nn.functional.\
        binary_cross_entropy_with_logits(logits[:, VIEW_COLUMN], targets[:, VIEW_COLUMN])
    assert torch.isclose(ViewAuxiliaryLoss(findings, 0.1)(logits, targets), expected), (
        "expected findings loss + weight * BCE of the view")
    with pytest.raises(ValueError, match="16 columns"):
        ViewAuxiliaryLoss(findings, 0.1)(logits[:, :NUM_LABELS], targets[:, :NUM_LABELS])


def test_training_targets_carry_the_metadata_view_and_validation_keeps_15_labels(synthetic, tmp_path):
    metadata, _ = synthetic
    data = load_data(parse_config(_flags(synthetic, tmp_path / "run", "--view-loss-weight", "0.1")))
    views = pd.read_csv(metadata).set_index(IMAGE).loc[data.splits.train[IMAGE], "View Position"]
    assert data.train.labels.shape[1] == NUM_LABELS + 1, "expected a 16th training target column"
    np.testing.assert_array_equal(data.train.labels[:, VIEW_COLUMN].numpy(), (views == "AP").to_numpy(),
                                  err_msg="expected 1 for the films the metadata lists as AP")
    assert data.val.labels.shape[1] == NUM_LABELS, "expected validation scored on the 15 labels alone"
    assert data.train_labels.shape[1] == NUM_LABELS, "expected the sampler and class weights on 15 labels"


def test_a_run_with_the_view_output_exports_the_15_output_network_and_resumes(synthetic, tmp_path):
    class Crash(Exception):
        pass

    def crash(epoch: int, metrics: dict[str, float]) -> None:
        raise Crash

    flags = _flags(synthetic, tmp_path / "run", "--view-loss-weight", "0.5", "--epochs", "2",
                   "--limit-batches", "2")
    with pytest.raises(Crash):
        fit(parse_config(flags), on_epoch_end=crash)
    saved = torch.load(tmp_path / "run" / RunFolder.CHECKPOINT, weights_only=True)
    assert saved["view_output"]["weight"].shape == (1, 64), "expected the view output saved to resume"
    best = fit(parse_config([*flags, "--resume"]))
    loaded = load_checkpoint(best)
    assert loaded.model.fc.out_features == NUM_LABELS, "expected the exported network to keep 15 outputs"
    assert loaded.config.provenance["train_config"]["view_loss_weight"] == 0.5, (
        "expected the provenance to record the view loss weight")
    with pytest.raises(TrainingError, match="view output"):
        fit(parse_config([*_flags(synthetic, tmp_path / "run", "--epochs", "3", "--limit-batches", "2"),
                          "--resume"]))


def test_a_negative_view_loss_weight_is_refused(synthetic, tmp_path):
    with pytest.raises(ConfigError, match="view_loss_weight"):
        parse_config(_flags(synthetic, tmp_path / "run", "--view-loss-weight", "-1"))
