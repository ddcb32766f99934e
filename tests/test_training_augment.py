"""training.data.augment + datasets: training images are augmented, validation ones never."""

from __future__ import annotations

from pathlib import Path

import cv2
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


def test_acquisition_blur_softens_about_half_the_films_within_its_sigma_range(gray):
    """--augment-blur: each draw either leaves the film as it is or blurs it by a sigma in
    [blur / 3, blur], so blurred sharpness lies between the two ends' and about half the
    draws are blurred."""
    from training.data.augment import acquisition_blur
    from training.source_audit import sharpness

    film = (gray[:256, :256] * 255).astype(np.uint8)
    transform = acquisition_blur(1.2)
    softest = sharpness(cv2.GaussianBlur(film, (0, 0), 1.2))
    sharpest = sharpness(cv2.GaussianBlur(film, (0, 0), 0.4))
    draws = []
    for seed in range(200):
        transform.set_random_seed(seed)
        draws.append(transform(image=film)["image"])
    unchanged = [np.array_equal(draw, film) for draw in draws]
    blurred = [sharpness(draw) for draw, same in zip(draws, unchanged, strict=True) if not same]
    assert 0.35 < len(blurred) / len(draws) < 0.65, f"expected about half blurred, got {len(blurred)} of 200"
    assert all(softest * 0.97 <= s <= sharpest * 1.03 for s in blurred), (
        f"expected blurred sharpness within [{softest:.3f}, {sharpest:.3f}], got "
        f"[{min(blurred):.3f}, {max(blurred):.3f}]")


def test_blur_and_gamma_are_off_by_default_and_on_when_asked():
    names = lambda config: [type(step).__name__ for step in build_augment(config, train=True).transforms]  # noqa: E731
    assert "GaussianBlur" not in names(AugmentConfig()), "expected no blur by default"
    assert "GaussianBlur" in names(AugmentConfig(blur=1.0)), "expected --augment-blur to add the blur"
    assert "RandomGamma" not in names(AugmentConfig()), "expected no tone curve by default"
    assert "RandomGamma" in names(AugmentConfig(gamma=0.5)), "expected --augment-gamma to add the tone curve"
    with pytest.raises(ValueError, match="blur"):
        AugmentConfig(blur=-1.0)
    with pytest.raises(ValueError, match="gamma"):
        AugmentConfig(gamma=-0.1)
    from training.fitting.config import parse_config
    flags = ["--images", str(IMAGES), "--augment-blur", "0.9", "--augment-strength", "1.5"]
    assert parse_config(flags).augment.blur == 0.9, "expected --augment-blur to reach the recipe"


def test_acquisition_gamma_bends_the_tone_of_about_half_the_films_within_its_range(gray):
    """--augment-gamma: each draw either leaves the film as it is or maps x to x ** gamma
    with gamma in [exp(-g), exp(g)] (read back from a mid-grey pixel)."""
    from training.data.augment import acquisition_gamma

    film = np.clip(gray[:128, :128], 0.05, 0.95).astype(np.float32)
    film[0, 0] = 0.5
    transform = acquisition_gamma(0.5)
    gammas = []
    for seed in range(200):
        transform.set_random_seed(seed)
        draw = transform(image=film)["image"]
        if not np.array_equal(draw, film):
            gammas.append(np.log(draw[0, 0]) / np.log(0.5))
            assert np.allclose(draw, film ** gammas[-1], atol=1e-4), "expected one tone curve per film"
    assert 0.35 < len(gammas) / 200 < 0.65, f"expected about half the films changed, got {len(gammas)} of 200"
    assert np.exp(-0.5) - 1e-3 <= min(gammas) and max(gammas) <= np.exp(0.5) + 1e-3, (
        f"expected gamma within [{np.exp(-0.5):.3f}, {np.exp(0.5):.3f}], got [{min(gammas):.3f}, {max(gammas):.3f}]")
    assert min(gammas) < 0.75 and max(gammas) > 1.35, "expected draws across the range"
