"""Training-time augmentation of the decoded greyscale image (albumentations 2).

Applied to the ``(H, W)`` grey image (float32 in [0, 1] from
:func:`xray_app.preprocess.decode_image`, or uint8 from the cache) *before*
:func:`xray_app.preprocess.to_model_input`, which stays the one resize/normalise step.
Validation and test get no augmentation: :func:`build_augment` returns None for them.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

# albumentations asks pypi.org for a newer version on every import (a 2 s network
# timeout offline); training runs offline and must not phone home
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation ranges; ``strength`` scales every range (0 disables augmentation)."""

    strength: float = 1.0
    rotate_degrees: float = 10.0
    hflip: bool = True
    brightness: float = 0.1
    contrast: float = 0.1
    shift_scale: bool = False
    shift: float = 0.05
    scale: float = 0.05
    blur: float = 0.0
    gamma: float = 0.0

    def __post_init__(self) -> None:
        if self.strength < 0:
            raise ValueError(f"augment strength must be >= 0, got {self.strength}")
        if self.blur < 0:
            raise ValueError(f"augment blur must be >= 0 (a Gaussian sigma in pixels), got {self.blur}")
        if self.gamma < 0:
            raise ValueError(f"augment gamma must be >= 0 (the largest |log gamma|), got {self.gamma}")


def build_augment(config: AugmentConfig, *, train: bool) -> A.Compose | None:
    """The training transform, or None (validation/test, or ``strength == 0``)."""
    if not train or config.strength == 0:
        return None
    s = config.strength
    shift = config.shift * s if config.shift_scale else 0.0
    scale = config.scale * s if config.shift_scale else 0.0
    steps: list[A.BasicTransform] = [
        A.Affine(
            rotate=(-config.rotate_degrees * s, config.rotate_degrees * s),
            translate_percent=(-shift, shift),
            scale=(1.0 - scale, 1.0 + scale),
            interpolation=cv2.INTER_LINEAR,
            border_mode=cv2.BORDER_CONSTANT,
            fill=0,
            p=1.0,
        ),
    ]
    if config.hflip:
        steps.append(A.HorizontalFlip(p=0.5))
    if config.brightness > 0 or config.contrast > 0:
        steps.append(
            A.RandomBrightnessContrast(
                brightness_limit=config.brightness * s, contrast_limit=config.contrast * s, p=1.0
            )
        )
    if config.blur > 0:
        steps.append(acquisition_blur(config.blur))
    if config.gamma > 0:
        steps.append(acquisition_gamma(config.gamma))
    return A.Compose(steps)


BLUR_PROBABILITY = 0.5
GAMMA_PROBABILITY = 0.5


def acquisition_blur(max_sigma: float) -> A.GaussianBlur:
    """Half of the films blurred by a Gaussian of sigma drawn from ``[max_sigma / 3,
    max_sigma]`` pixels of the image it is given (the 256 px cache): a film's sharpness
    then says little about where it was copied from (``training.source_audit`` measures
    the copies of one repository's No-Finding folder about 16% less sharp than the other
    films). Not scaled by ``strength``: its range is set by that signature, not by how
    hard the geometry is varied."""
    return A.GaussianBlur(blur_limit=0, sigma_limit=(max_sigma / 3, max_sigma), p=BLUR_PROBABILITY)


def acquisition_gamma(max_log_gamma: float) -> A.RandomGamma:
    """Half of the films given a tone curve ``x ** gamma`` (x in [0, 1]), gamma drawn from
    ``[exp(-max_log_gamma), exp(max_log_gamma)]``: a film's brightness then says little
    about where it was copied from (``training.source_audit``: one repository's No-Finding
    copies are brighter than the other films, as a tone curve of gamma about 0.7 would make them). Not
    scaled by ``strength``, for the same reason as :func:`acquisition_blur`."""
    low, high = math.exp(-max_log_gamma), math.exp(max_log_gamma)
    return A.RandomGamma(gamma_limit=(100 * low, 100 * high), p=GAMMA_PROBABILITY)


def apply_augment(transform: A.Compose | None, gray: np.ndarray, seed: int) -> np.ndarray:
    """``gray`` ``(H, W)`` augmented with randomness drawn from ``seed`` only (so a given
    draw replays identically after a resume and in any DataLoader worker)."""
    if transform is None:
        return gray
    transform.set_random_seed(seed)
    return transform(image=gray)["image"]
