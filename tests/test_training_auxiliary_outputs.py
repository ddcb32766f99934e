"""--view-loss-weight and --patient-loss-weight: auxiliary outputs for traits of the film
and the patient, from the metadata, that only training sees."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.synthetic_xray import write_dataset
from training.data.metadata import IMAGE
from training.data.run_data import load_data
from training.fitting.auxiliary_outputs import (
    FIRST_AUXILIARY_COLUMN,
    AuxiliaryLoss,
    WithAuxiliaryOutputs,
    auxiliary_columns,
    auxiliary_weights,
    folder_column,
)
from training.fitting.config import ConfigError, parse_config
from training.fitting.loop import fit
from training.fitting.losses import FocalWeightedLoss
from training.fitting.run_folder import RunFolder
from training.fitting.runtime import TrainingError
from xray_app.labels import NO_FINDING_INDEX, NUM_LABELS
from xray_app.model import build_model, load_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> tuple[Path, Path]:
    """A small dataset whose even-numbered patients were filmed AP, whose patients of a
    number divisible by three are women, and whose ages and follow-up numbers vary."""
    metadata, images = write_dataset(tmp_path_factory.mktemp("view"), count=40, size=64, seed=2)
    frame = pd.read_csv(metadata)
    frame["View Position"] = np.where(frame["Patient ID"] % 2 == 0, "AP", "PA")
    frame["Patient Gender"] = np.where(frame["Patient ID"] % 3 == 0, "F", "M")
    frame["Patient Age"] = 20 + frame["Patient ID"]
    frame["Follow-up #"] = frame["Patient ID"] % 7
    frame.to_csv(metadata, index=False)
    return metadata, images


def _flags(synthetic: tuple[Path, Path], out: Path, *extra: str) -> list[str]:
    metadata, images = synthetic
    return ["--metadata", str(metadata), "--images", str(images), "--out", str(out),
            "--input-size", "32", "--batch-size", "8", "--pretrained", "none",
            "--architecture", "tiny-resnet", "--num-workers", "0", "--no-progress",
            "--val-fraction", "0.25", "--test-fraction", "0.25", "--seed", "3", *extra]


def test_the_auxiliary_outputs_leave_the_findings_logits_as_the_network_makes_them():
    torch.manual_seed(0)
    network = build_model(architecture="tiny-resnet", pretrained="none").eval()
    images = torch.randn(3, 3, 32, 32)
    logits = WithAuxiliaryOutputs(network, ("view", "sex", "age", "follow_up")).eval()(images)
    assert logits.shape == (3, NUM_LABELS + 4), f"expected 15 findings then 4 traits, got {tuple(logits.shape)}"
    assert torch.allclose(logits[:, :NUM_LABELS], network(images), atol=1e-6), (
        "expected the first 15 logits to be the exported network's own")


def test_the_loss_adds_each_weighted_trait_cross_entropy_to_the_findings_loss():
    torch.manual_seed(0)
    findings = FocalWeightedLoss(alpha=0.6, gamma=1.0)
    logits, targets = torch.randn(4, NUM_LABELS + 2), torch.rand(4, NUM_LABELS + 2)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    view, age = FIRST_AUXILIARY_COLUMN, FIRST_AUXILIARY_COLUMN + 1
    expected = (findings(logits[:, :NUM_LABELS], targets[:, :NUM_LABELS])
                + 0.1 * bce(logits[:, view], targets[:, view]) + 0.3 * bce(logits[:, age], targets[:, age]))
    assert torch.isclose(AuxiliaryLoss(findings, [0.1, 0.3])(logits, targets), expected), (
        "expected findings loss + each weight * BCE of its trait")
    with pytest.raises(ValueError, match="17 columns"):
        AuxiliaryLoss(findings, [0.1, 0.3])(logits[:, :NUM_LABELS], targets[:, :NUM_LABELS])


def test_the_view_comes_first_and_the_patient_weight_trains_sex_age_and_follow_up():
    assert list(auxiliary_weights(0.1, 0.0)) == ["view"]
    assert auxiliary_weights(0.1, 0.05) == {"view": 0.1, "sex": 0.05, "age": 0.05, "follow_up": 0.05}
    assert list(auxiliary_weights(0.0, 0.05)) == ["sex", "age", "follow_up"]
    assert auxiliary_weights(0.0, 0.0) == {}


def test_trait_targets_lie_in_0_1_and_keep_the_metadata_order():
    rows = pd.DataFrame({"View Position": ["AP", "PA", "AP"], "Patient Gender": ["M", "F", "M"],
                         "Patient Age": [0, 50, 130], "Follow-up #": [0, 9, 500]})
    columns = auxiliary_columns(rows, ["view", "sex", "age", "follow_up"])
    np.testing.assert_array_equal(columns[:, 0], [1, 0, 1], err_msg="expected AP = 1")
    np.testing.assert_array_equal(columns[:, 1], [1, 0, 1], err_msg="expected male = 1")
    np.testing.assert_allclose(columns[:, 2], [0.0, 0.5, 1.0], err_msg="expected age / 100, clipped")
    np.testing.assert_allclose(columns[:, 3], [0.0, np.log(10) / np.log(101), 1.0], rtol=1e-6,
                               err_msg="expected log(1 + n) / log(101), clipped")
    with pytest.raises(ValueError, match="unknown auxiliary"):
        auxiliary_columns(rows, ["height"])


def test_training_targets_carry_the_metadata_traits_and_validation_keeps_15_labels(synthetic, tmp_path):
    metadata, _ = synthetic
    data = load_data(parse_config(_flags(synthetic, tmp_path / "run", "--view-loss-weight", "0.1",
                                         "--patient-loss-weight", "0.05")))
    rows = pd.read_csv(metadata).set_index(IMAGE).loc[data.splits.train[IMAGE]]
    assert data.train.labels.shape[1] == NUM_LABELS + 4, "expected the view, sex, age and follow-up columns"
    first = FIRST_AUXILIARY_COLUMN
    np.testing.assert_array_equal(data.train.labels[:, first].numpy(), (rows["View Position"] == "AP").to_numpy(),
                                  err_msg="expected 1 for the films the metadata lists as AP")
    np.testing.assert_array_equal(data.train.labels[:, first + 1].numpy(), (rows["Patient Gender"] == "M").to_numpy(),
                                  err_msg="expected 1 for the films of men")
    np.testing.assert_allclose(data.train.labels[:, first + 2].numpy(), rows["Patient Age"].to_numpy() / 100,
                               rtol=1e-6, err_msg="expected each film's patient's age / 100")
    assert data.val.labels.shape[1] == NUM_LABELS, "expected validation scored on the 15 labels alone"
    assert data.train_labels.shape[1] == NUM_LABELS, "expected the sampler and class weights on 15 labels"


def test_a_run_with_auxiliary_outputs_exports_the_15_output_network_and_resumes(synthetic, tmp_path):
    class Crash(Exception):
        pass

    def crash(epoch: int, metrics: dict[str, float]) -> None:
        raise Crash

    flags = _flags(synthetic, tmp_path / "run", "--view-loss-weight", "0.5", "--patient-loss-weight",
                   "0.1", "--epochs", "2", "--limit-batches", "2")
    with pytest.raises(Crash):
        fit(parse_config(flags), on_epoch_end=crash)
    saved = torch.load(tmp_path / "run" / RunFolder.CHECKPOINT, weights_only=True)
    assert saved["auxiliary_outputs"]["names"] == ["view", "sex", "age", "follow_up"]
    assert saved["auxiliary_outputs"]["state"]["weight"].shape == (4, 64), (
        "expected the auxiliary outputs saved to resume")
    best = fit(parse_config([*flags, "--resume"]))
    loaded = load_checkpoint(best)
    assert loaded.model.fc.out_features == NUM_LABELS, "expected the exported network to keep 15 outputs"
    recorded = loaded.config.provenance["train_config"]
    assert (recorded["view_loss_weight"], recorded["patient_loss_weight"]) == (0.5, 0.1), (
        "expected the provenance to record the auxiliary loss weights")
    with pytest.raises(TrainingError, match="auxiliary outputs"):
        fit(parse_config([*_flags(synthetic, tmp_path / "run", "--epochs", "3", "--limit-batches", "2"),
                          "--resume"]))


@pytest.mark.parametrize("name", ["view", "patient"])
def test_a_negative_auxiliary_loss_weight_is_refused(synthetic, tmp_path, name):
    with pytest.raises(ConfigError, match=f"{name}_loss_weight"):
        parse_config(_flags(synthetic, tmp_path / "run", f"--{name}-loss-weight", "-1"))


def test_a_checkpoint_written_with_the_view_output_alone_resumes(synthetic, tmp_path):
    """last.ckpt files written before the patient traits existed keep the view's weights
    under ``view_output``; a --view-loss-weight run continues from them."""
    class Crash(Exception):
        pass

    def crash(epoch: int, metrics: dict[str, float]) -> None:
        raise Crash

    flags = _flags(synthetic, tmp_path / "run", "--view-loss-weight", "0.1", "--epochs", "2",
                   "--limit-batches", "2")
    with pytest.raises(Crash):
        fit(parse_config(flags), on_epoch_end=crash)
    path = tmp_path / "run" / RunFolder.CHECKPOINT
    saved = torch.load(path, weights_only=True)
    saved["view_output"] = saved.pop("auxiliary_outputs")["state"]
    torch.save(saved, path)
    assert load_checkpoint(fit(parse_config([*flags, "--resume"]))).model.fc.out_features == NUM_LABELS


@pytest.fixture(scope="module")
def two_folders(tmp_path_factory) -> tuple[Path, Path]:
    """A small dataset whose images are split between two source folders by patient:
    odd-numbered patients in ``images_001/``, even-numbered ones in ``images_002/``."""
    metadata, root = write_dataset(tmp_path_factory.mktemp("folders"), count=40, size=64, seed=4)
    second = root / "images_002" / "images"
    second.mkdir(parents=True)
    for path in sorted((root / "images_001" / "images").glob("*.png")):
        if int(path.name[:8]) % 2 == 0:
            path.rename(second / path.name)
    return metadata, root


def test_the_hidden_folder_output_sends_the_features_the_opposite_gradient_of_an_open_one():
    torch.manual_seed(0)
    network = build_model(architecture="tiny-resnet", pretrained="none")
    hidden = WithAuxiliaryOutputs(network, ("folder",))
    images = torch.randn(4, 3, 32, 32)

    def gradients(model: WithAuxiliaryOutputs, head: torch.nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
        network.zero_grad()
        head.zero_grad()
        model(images)[:, FIRST_AUXILIARY_COLUMN].sum().backward()
        return network.conv1.weight.grad.clone(), head.weight.grad.clone()

    open_model = WithAuxiliaryOutputs(network, ("view",))
    open_model.auxiliary.load_state_dict(hidden.adversary.state_dict())
    features_hidden, head_hidden = gradients(hidden, hidden.adversary)
    features_open, head_open = gradients(open_model, open_model.auxiliary)
    assert hidden.auxiliary is None and open_model.adversary is None
    assert torch.allclose(features_hidden, -features_open, atol=1e-6), (
        "expected the network to receive the hidden output's gradient with its sign turned")
    assert torch.allclose(head_hidden, head_open, atol=1e-6), (
        "expected the hidden output itself to learn the folder as an open output would")
    assert torch.allclose(hidden.eval()(images)[:, :NUM_LABELS], network.eval()(images), atol=1e-6)


def test_the_folder_target_is_defined_for_no_finding_films_of_the_two_folders_only():
    labels = np.zeros((5, NUM_LABELS), dtype=np.float32)
    labels[[0, 1, 3], NO_FINDING_INDEX] = 1
    labels[2, 0] = 1
    column = folder_column(["images", "images_extra", "images_extra", None, "images"],
                           ["images", "images_extra"], labels)
    assert column.shape == (5, 1)
    np.testing.assert_array_equal(column[:, 0], [0, 1, np.nan, np.nan, np.nan],
                                  err_msg="expected 0/1 by folder for normal films, NaN otherwise")
    with pytest.raises(ValueError, match="two source folders"):
        folder_column(["a"], ["a"], labels[:1])


def test_within_view_the_folder_target_splits_into_a_pa_and_an_ap_column():
    labels = np.zeros((4, NUM_LABELS), dtype=np.float32)
    labels[[0, 1, 2], NO_FINDING_INDEX] = 1
    columns = folder_column(["images", "images_extra", "images_extra", "images"], ["images", "images_extra"],
                            labels, ap=np.array([False, True, False, False]))
    assert columns.shape == (4, 2)
    np.testing.assert_array_equal(columns[:, 0], [0, np.nan, 1, np.nan],
                                  err_msg="expected the folder of normal PA films in the first column")
    np.testing.assert_array_equal(columns[:, 1], [np.nan, 1, np.nan, np.nan],
                                  err_msg="expected the folder of normal AP films in the second column")


def test_films_without_a_trait_target_are_left_out_of_that_trait_loss():
    torch.manual_seed(0)
    findings = FocalWeightedLoss(alpha=0.6, gamma=1.0)
    logits, targets = torch.randn(4, NUM_LABELS + 1), torch.rand(4, NUM_LABELS + 1)
    targets[[1, 3], FIRST_AUXILIARY_COLUMN] = float("nan")
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    column = FIRST_AUXILIARY_COLUMN
    expected = (findings(logits[:, :NUM_LABELS], targets[:, :NUM_LABELS])
                + 0.2 * bce(logits[[0, 2], column], targets[[0, 2], column]))
    loss = AuxiliaryLoss(findings, [0.2])(logits, targets)
    assert torch.isclose(loss, expected), "expected the trait's BCE over the two films that have a target"
    targets[:, column] = float("nan")
    assert torch.isclose(AuxiliaryLoss(findings, [0.2])(logits, targets),
                         findings(logits[:, :NUM_LABELS], targets[:, :NUM_LABELS])), (
        "expected no trait loss when no film in the batch has a target")


def test_the_hidden_folder_comes_after_every_open_trait():
    assert list(auxiliary_weights(0.1, 0.05, 0.2)) == ["view", "sex", "age", "follow_up", "folder"]
    assert auxiliary_weights(0.0, 0.0, 0.2) == {"folder": 0.2}
    assert auxiliary_weights(0.1, 0.0, 0.2, within_view=True) == {"view": 0.1, "folder_pa": 0.2, "folder_ap": 0.2}
    with pytest.raises(ValueError, match="must come after"):
        WithAuxiliaryOutputs(build_model(architecture="tiny-resnet", pretrained="none"), ("folder", "view"))


def test_the_folder_adversary_needs_two_source_folders(two_folders, tmp_path):
    with pytest.raises(ConfigError, match="--source-folders DIR DIR"):
        parse_config(_flags(two_folders, tmp_path / "run", "--folder-adversary-weight", "0.1"))
    _, root = two_folders
    with pytest.raises(ConfigError, match="--source-folders DIR DIR"):
        parse_config(_flags(two_folders, tmp_path / "run", "--folder-adversary-weight", "0.1",
                            "--source-folders", str(root / "images_001")))
    with pytest.raises(ConfigError, match="give --folder-adversary-weight too"):
        parse_config(_flags(two_folders, tmp_path / "run", "--folder-adversary-within-view"))


def test_a_run_with_the_folder_adversary_targets_normal_films_by_folder_and_resumes(two_folders, tmp_path):
    class Crash(Exception):
        pass

    def crash(epoch: int, metrics: dict[str, float]) -> None:
        raise Crash

    metadata, root = two_folders
    flags = _flags(two_folders, tmp_path / "run", "--view-loss-weight", "0.1", "--folder-adversary-weight",
                   "0.2", "--source-folders", str(root / "images_001"), str(root / "images_002"),
                   "--epochs", "2", "--limit-batches", "2")
    data = load_data(parse_config(flags))
    folder = data.train.labels[:, FIRST_AUXILIARY_COLUMN + 1].numpy()
    normal = data.train_labels[:, NO_FINDING_INDEX] == 1
    even = data.splits.train[IMAGE].str[:8].astype(int).to_numpy() % 2 == 0
    assert normal.any() and (~normal).any()
    np.testing.assert_array_equal(folder[normal], even[normal].astype(np.float32),
                                  err_msg="expected 1 for normal films of the second folder")
    assert np.isnan(folder[~normal]).all(), "expected no folder target for films with a finding"
    with pytest.raises(Crash):
        fit(parse_config(flags), on_epoch_end=crash)
    saved = torch.load(tmp_path / "run" / RunFolder.CHECKPOINT, weights_only=True)
    assert saved["auxiliary_outputs"]["names"] == ["view", "folder"]
    assert saved["auxiliary_outputs"]["adversary"]["weight"].shape == (1, 64), (
        "expected the hidden output saved to resume")
    best = fit(parse_config([*flags, "--resume"]))
    loaded = load_checkpoint(best)
    assert loaded.model.fc.out_features == NUM_LABELS, "expected the exported network to keep 15 outputs"
    assert loaded.config.provenance["train_config"]["folder_adversary_weight"] == 0.2


def test_within_view_the_hidden_outputs_target_normal_films_of_their_own_view(two_folders, tmp_path):
    metadata, root = two_folders
    frame = pd.read_csv(metadata)
    ap = frame.set_index(IMAGE)["Patient ID"] % 4 < 2  # AP for patients 4k and 4k + 1: both folders
    frame["View Position"] = np.where(frame["Patient ID"] % 4 < 2, "AP", "PA")
    frame.to_csv(tmp_path / "metadata.csv", index=False)
    flags = [*_flags(two_folders, tmp_path / "run", "--folder-adversary-weight", "0.2",
                     "--folder-adversary-within-view", "--source-folders", str(root / "images_001"),
                     str(root / "images_002"), "--epochs", "1", "--limit-batches", "1"),
             "--metadata", str(tmp_path / "metadata.csv")]
    data = load_data(parse_config(flags))
    first = FIRST_AUXILIARY_COLUMN
    pa, on_ap = data.train.labels[:, first].numpy(), data.train.labels[:, first + 1].numpy()
    normal = data.train_labels[:, NO_FINDING_INDEX] == 1
    film_ap = ap.loc[data.splits.train[IMAGE]].to_numpy()
    even = data.splits.train[IMAGE].str[:8].astype(int).to_numpy() % 2 == 0
    assert (normal & film_ap).any() and (normal & ~film_ap).any()
    np.testing.assert_array_equal(pa[normal & ~film_ap], even[normal & ~film_ap].astype(np.float32))
    np.testing.assert_array_equal(on_ap[normal & film_ap], even[normal & film_ap].astype(np.float32))
    assert np.isnan(pa[film_ap | ~normal]).all() and np.isnan(on_ap[~film_ap | ~normal]).all(), (
        "expected each view's column defined for normal films of that view alone")
    best = fit(parse_config(flags))
    assert load_checkpoint(best).model.fc.out_features == NUM_LABELS
