"""training.data.augment + datasets: training images are augmented, validation ones never."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from training.data.augment import AugmentConfig, apply_augment, build_augment
from training.data.datasets import FileImages, XrayDataset
from training.data.images import find_images
from xray_app.preprocess import decode_image, to_model_input

IMAGES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nih" / "images"


@pytest.fixture(scope="module")
def gray() -> np.ndarray:
    return decode_image(sorted(find_images(IMAGES).values())[0]).pixels


def test_validation_gets_no_augmentation():
    assert build_augment(AugmentConfig(), train=False) is None, "expected no transform for validation"
    assert build_augment(AugmentConfig(strength=0.0), train=True) is None, "expected strength 0 to disable"


def test_training_augmentation_changes_the_image_reproducibly_per_seed(gray):
    transform = build_augment(AugmentConfig(shift_scale=True), train=True)
    a = apply_augment(transform, gray, seed=11)
    b = apply_augment(transform, gray, seed=11)
    c = apply_augment(transform, gray, seed=12)
    assert a.shape == gray.shape and a.dtype == np.float32, f"expected float32 {gray.shape}, got {a.dtype} {a.shape}"
    assert np.array_equal(a, b), "expected one seed to give one augmentation"
    assert not np.allclose(a, gray, atol=0.02), "expected the training image to be changed"
    assert not np.array_equal(a, c), "expected another seed to give another augmentation"


def test_validation_dataset_items_equal_the_app_tensor_every_time():
    path = sorted(find_images(IMAGES).values())[1]
    labels = np.zeros((1, 15), dtype=np.float32)
    val = XrayDataset(FileImages([path]), labels, input_size=64,
                      augment=build_augment(AugmentConfig(), train=False))
    train = XrayDataset(FileImages([path]), labels, input_size=64,
                        augment=build_augment(AugmentConfig(), train=True))
    app = to_model_input(decode_image(path).pixels, 64)
    assert torch.equal(val[0][0], app) and torch.equal(val[(0, 99)][0], app), (
        "expected validation items identical to the app's tensor whatever the seed")
    assert not torch.equal(train[(0, 99)][0], app), "expected the training item augmented"
