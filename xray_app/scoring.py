"""One way to score a checkpoint: model inputs -> logits (and features).

Every consumer scores through these two functions, so the test-time policy that a
checkpoint's ``config.json`` names is applied in one place:

* :func:`score_batch`: a batch of model inputs -> :class:`Scores`. Used by the app's
  :class:`~xray_app.predictor.Predictor` (which also needs the layer4 feature maps for
  the heatmaps and the out-of-distribution gate) and by training's validation
  (:func:`training.fitting.loop.predict`), through which cross-validation and tuning score;
* :func:`score_images`: files or decoded arrays -> logits and pooled features, through
  the app's own preprocessing. Used by evaluation and the out-of-distribution fit.

The policy today is ``mirror_average``: the logits of a checkpoint that asks for it are
the mean of each image's and its left-right mirror image's logits, computed in one
forward pass over both (images first, then their mirrors). Features describe the images
as given, never their mirrors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch

from xray_app.model import ChestXrayResNet, average_with_mirror, with_mirror_images
from xray_app.preprocess import PreprocessConfig, Source, preprocess, to_model_input

if TYPE_CHECKING:
    from xray_app.model import LoadedCheckpoint


class Scores(NamedTuple):
    """What one forward pass gives, for a batch of N images.

    ``logits``: ``(N, C)`` float32, the checkpoint's logits (mirror-averaged when its
    policy says so). ``view_logits``: ``(N, V, C)`` float32, each view's own logits (V = 2
    with mirror averaging: the image, then its mirror image; else V = 1).
    ``feature_maps``: ``(V * N, 2048, h, w)`` float32 layer4 activations of the pass (the
    N images, then their N mirror images), only when asked for.
    """

    logits: torch.Tensor
    view_logits: torch.Tensor
    feature_maps: torch.Tensor | None


def score_batch(
    model: ChestXrayResNet,
    batch: torch.Tensor,
    *,
    mirror_average: bool,
    feature_maps: bool = False,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> Scores:
    """Score ``(N, 3, S, S)`` model inputs (already on the model's device).

    ``autocast_dtype`` runs the trunk under autocast (bf16/fp16); the head always runs in
    float32 on float32 features. ``channels_last`` lays the pass out for faster
    convolutions (CUDA). The caller chooses train/eval mode and gradient tracking.
    """
    views = 2 if mirror_average else 1
    x = with_mirror_images(batch) if mirror_average else batch
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    autocast = (torch.autocast(x.device.type, dtype=autocast_dtype) if autocast_dtype is not None
                else nullcontext())
    with autocast:
        maps = model.forward_features(x)
    maps = maps.float()
    per_view = model.forward_head(maps)
    logits = average_with_mirror(per_view) if mirror_average else per_view
    view_logits = torch.stack(per_view.chunk(views), dim=1)
    return Scores(logits, view_logits, maps if feature_maps else None)


def pooled_features(model: ChestXrayResNet, scores: Scores) -> torch.Tensor:
    """``(N, 2048)`` penultimate features of the images as given (never their mirrors)."""
    if scores.feature_maps is None:
        raise ValueError("these scores hold no feature maps: score with feature_maps=True")
    count = scores.logits.shape[0]
    return model.pool(scores.feature_maps[:count])


class ImageScores(NamedTuple):
    """``logits``: ``(N, C)`` float32 numpy; ``features``: ``(N, 2048)`` float32 pooled
    features of the images as given, or None when not asked for."""

    logits: np.ndarray
    features: np.ndarray | None


def score_images(
    checkpoint: LoadedCheckpoint,
    sources: Sequence[Source | np.ndarray],
    *,
    batch_size: int = 16,
    features: bool = False,
    on_batch: Callable[[int, int], None] | None = None,
) -> ImageScores:
    """Score images the way the app scores them with ``checkpoint``: its preprocessing and
    its test-time policy (:func:`score_sources`)."""
    return score_sources(checkpoint.model, sources, checkpoint.config.preprocess,
                         mirror_average=checkpoint.config.mirror_average, batch_size=batch_size,
                         features=features, on_batch=on_batch)


@torch.inference_mode()
def score_sources(
    model: ChestXrayResNet,
    sources: Sequence[Source | np.ndarray],
    config: PreprocessConfig,
    *,
    mirror_average: bool,
    batch_size: int = 16,
    features: bool = False,
    on_batch: Callable[[int, int], None] | None = None,
) -> ImageScores:
    """Score images in the given order through the app's preprocessing and
    :func:`score_batch`.

    A source is a file (path or bytes), which goes through
    :func:`xray_app.preprocess.preprocess`, the app's path; or an already decoded
    ``(H, W)`` grey array (uint8 from the training cache, or float in [0, 1]), which goes
    through :func:`xray_app.preprocess.to_model_input`, that path's second step.
    ``on_batch(done, total)`` is called after each batch (progress).
    """
    model.eval()
    device = next(model.parameters()).device
    logits, pooled = [], []
    for start in range(0, len(sources), batch_size):
        chunk = sources[start : start + batch_size]
        batch = torch.stack([model_input(source, config) for source in chunk])
        scores = score_batch(model, batch.to(device), mirror_average=mirror_average,
                             feature_maps=features)
        logits.append(scores.logits.cpu().numpy())
        if features:
            pooled.append(pooled_features(model, scores).cpu().numpy())
        if on_batch is not None:
            on_batch(start + len(chunk), len(sources))
    classes = model.fc.out_features
    return ImageScores(
        np.concatenate(logits) if logits else np.zeros((0, classes), dtype=np.float32),
        (np.concatenate(pooled) if pooled else np.zeros((0, model.fc.in_features), dtype=np.float32))
        if features else None,
    )


def model_input(source: Source | np.ndarray, config: PreprocessConfig) -> torch.Tensor:
    """``(3, S, S)`` model input of a file or of a decoded ``(H, W)`` grey array."""
    if isinstance(source, np.ndarray):
        return to_model_input(source, config.input_size, config.mean, config.std)
    return preprocess(source, config)[0]
