"""What the gate reads of an image: the model's pooled penultimate features and the view
head's inputs (those features and image statistics), computed as the app computes them,
and the feature sets of the fit and held-out images."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice

import numpy as np
import torch

from training.gating.items import CLASS_OF_KIND, CLASSES, Item, decoded
from training.gating.synthetic import augment, other_images
from xray_app.gate import N_STATISTICS, gate_features, image_statistics, unit_images
from xray_app.model import ChestXrayResNet, LoadedCheckpoint
from xray_app.preprocess import PreprocessConfig, Source
from xray_app.scoring import model_input, score_sources


def extract_features(
    model: ChestXrayResNet,
    sources: Sequence[Source | np.ndarray],
    config: PreprocessConfig,
    *,
    batch_size: int = 16,
) -> np.ndarray:
    """``(N, 2048)`` float32 pooled penultimate features of N images as given, scored by
    :func:`xray_app.scoring.score_images` (the app's preprocessing and forward pass).

    A source is a file (path, bytes) or an already decoded ``(H, W)`` grey array (uint8
    from the training cache, or float in [0, 1]).
    """
    # features describe the images as given, so no mirror pass is needed for them
    return score_sources(model, sources, config, mirror_average=False, batch_size=batch_size,
                         features=True).features


@torch.inference_mode()
def extract_gate_inputs(
    model: ChestXrayResNet,
    pixels: Iterable[np.ndarray],
    config: PreprocessConfig,
    *,
    batch_size: int = 16,
) -> tuple[np.ndarray, np.ndarray]:
    """``(N, 2048 + N_STATISTICS)`` view-head inputs and ``(N, 2048)`` pooled features.

    Decoded ``(H, W)`` float images go through :func:`xray_app.preprocess.to_model_input`
    and the model as the app runs them (the image as given, float32 features).  ``pixels``
    may be a generator: images are consumed ``batch_size`` at a time, never all held.
    """
    features, pooled_all = [], []
    iterator = iter(pixels)
    while chunk := list(islice(iterator, batch_size)):
        # the features of the images as given, scored as the app scores them: no mirror pass
        pooled = score_sources(model, chunk, config, mirror_average=False,
                               batch_size=batch_size, features=True).features
        batch = torch.stack([model_input(p, config) for p in chunk])
        statistics = image_statistics(unit_images(batch, config.mean[0], config.std[0]))
        features.append(gate_features(torch.from_numpy(pooled), statistics).numpy())
        pooled_all.append(pooled)
    if not features:
        width = model.fc.in_features
        return np.zeros((0, width + N_STATISTICS), np.float32), np.zeros((0, width), np.float32)
    return np.concatenate(features), np.concatenate(pooled_all)


@dataclass
class FeatureSet:
    """View-head inputs of many images with their class, kind, group and whether they are
    augmented (only images as given are scored for levels and figures)."""

    features: np.ndarray  # (N, F) float32
    pooled: np.ndarray  # (N, 2048) float32
    kinds: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    augmented: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))

    @property
    def labels(self) -> np.ndarray:
        """``(N,)`` indices into :data:`~training.gating.items.CLASSES`."""
        return np.array([CLASSES.index(CLASS_OF_KIND[k]) for k in self.kinds])

    def subset(self, mask: np.ndarray) -> FeatureSet:
        """The images where the ``(N,)`` boolean ``mask`` is true, in their order."""
        index = np.flatnonzero(mask)
        return FeatureSet(self.features[index], self.pooled[index], [self.kinds[i] for i in index],
                          [self.groups[i] for i in index], self.augmented[index])


def build_fit_set(
    checkpoint: LoadedCheckpoint,
    items: Sequence[Item],
    rng: np.random.Generator,
    *,
    augment_copies: int,
    nih_augment_share: float,
    n_other: int,
    batch_size: int = 16,
) -> FeatureSet:
    """The fit images as given, their augmented variants and ``n_other`` generated "other"
    images.  Each image other than an NIH film gets ``augment_copies`` variants; an NIH film
    gets one with probability ``nih_augment_share``.  Draws from ``rng`` in a fixed order."""
    kinds: list[str] = []
    groups: list[str] = []
    augmented: list[bool] = []

    def images() -> Iterator[np.ndarray]:  # streamed: a large fit set is never all in memory
        for item, image in zip(items, decoded(items), strict=True):
            copies = augment_copies if item.kind != "nih_frontal" else int(
                rng.random() < nih_augment_share)
            for copy in range(copies + 1):
                kinds.append(item.kind)
                groups.append(item.group)
                augmented.append(copy > 0)
                yield image if copy == 0 else augment(image, rng)
        for index, image in enumerate(other_images(n_other, rng)):
            kinds.append("other")
            groups.append(f"other:{index % 20}")
            augmented.append(True)
            yield image

    features, pooled = extract_gate_inputs(checkpoint.model, images(),
                                           checkpoint.config.preprocess, batch_size=batch_size)
    return FeatureSet(features, pooled, kinds, groups, np.array(augmented))


def build_held_out_set(
    checkpoint: LoadedCheckpoint, items: Sequence[Item], *, batch_size: int = 16
) -> FeatureSet:
    """The items as given (nothing augmented, nothing generated)."""
    features, pooled = extract_gate_inputs(checkpoint.model, decoded(items),
                                           checkpoint.config.preprocess, batch_size=batch_size)
    return FeatureSet(features, pooled, [i.kind for i in items], [i.group for i in items],
                      np.zeros(len(items), bool))
