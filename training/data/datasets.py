"""Training datasets: one image source (files or cache) + labels -> model tensors.

Every item goes through the app's preprocessing: the grey image (decoded by
:func:`~xray_app.preprocess.decode_image`, or read from the uint8 cache built with
:func:`~xray_app.preprocess.resize_gray`) is optionally augmented and then turned into
a tensor by :func:`~xray_app.preprocess.to_model_input`, the one normalisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

from training.data.augment import apply_augment
from training.data.image_cache import ImageCache
from xray_app.preprocess import IMAGENET_MEAN, IMAGENET_STD, decode_image, to_model_input


class GraySource(Protocol):
    """Random access to ``(H, W)`` grey images: float32 in [0, 1] or uint8."""

    def __len__(self) -> int: ...

    def load(self, index: int) -> np.ndarray: ...


class FileImages:
    """Images decoded from their files with :func:`decode_image` (float32 in [0, 1])."""

    def __init__(self, paths: Sequence[str | Path]) -> None:
        self.paths = [Path(p) for p in paths]

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> np.ndarray:
        return decode_image(self.paths[index]).pixels


class CachedImages:
    """Images read from an :class:`ImageCache` (uint8), by image name."""

    def __init__(self, cache: ImageCache, names: Sequence[str]) -> None:
        absent = [name for name in names if name not in cache.row_of]
        if absent:
            raise KeyError(f"{len(absent)} images not in cache {cache.directory} (e.g. {absent[0]})")
        self.cache = cache
        self.rows = [cache.row_of[name] for name in names]

    def __len__(self) -> int:
        return len(self.rows)

    def load(self, index: int) -> np.ndarray:
        return self.cache.read(self.rows[index])


class XrayDataset(Dataset):
    """``dataset[i]`` or ``dataset[(i, seed)]`` -> ``((3, S, S) float32, (15,) float32)``.

    ``labels`` is ``(N, 15)`` in logit order.  The ``(index, seed)`` form (from
    :class:`~training.data.sampling.RepeatFactorSampler`) seeds the augmentation of that draw;
    a plain index uses seed = index.  Without ``augment`` the tensor is exactly the app's.
    """

    def __init__(
        self,
        source: GraySource,
        labels: np.ndarray,
        *,
        input_size: int,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        augment: A.Compose | None = None,
    ) -> None:
        if len(source) != len(labels):
            raise ValueError(f"{len(source)} images but {len(labels)} label rows")
        self.source = source
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.float32))
        self.input_size = input_size
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, seed = key if isinstance(key, tuple) else (key, key)
        gray = apply_augment(self.augment, self.source.load(index), seed)
        image = to_model_input(gray, self.input_size, self.mean, self.std)
        return image, self.labels[index]
