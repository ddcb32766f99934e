"""Heatmaps: the fast exact Grad-CAM for all classes, pytorch-grad-cam's methods, overlays.

**Fast Grad-CAM for all 15 classes in one pass.**  The model's head is global average
pooling followed by one linear layer (:mod:`xray_app.model`), so the gradient of logit
``c`` with respect to the layer4 activations ``A`` (``(2048, h, w)``) is
``fc.weight[c] / (h * w)`` at every position.  Grad-CAM's channel weights (the spatial
mean of that gradient) are therefore ``fc.weight[c] / (h * w)`` and its map is
``sum_k fc.weight[c, k] * A[k] / (h * w)``: the class activation map.  All classes cost one
``(15, 2048) x (2048, h * w)`` matrix product on the features that the forward pass
computed anyway, with no backward pass and no hooks.  :func:`class_activation_maps`
then normalises each map exactly as pytorch-grad-cam does (ReLU, min-max to [0, 1],
``cv2.resize`` to the input size, min-max again), so its output equals
``pytorch_grad_cam.GradCAM`` with ``ClassifierOutputTarget(c)`` on ``layer4`` (a test
checks all 15 classes to 1e-4 on a real radiograph).

**Other methods** (:data:`METHODS`) run pytorch-grad-cam on one class at a time, each
call inside its own ``with`` block so that its hooks are removed when it ends
(:func:`library_cam`).  EigenCAM is class-agnostic (the same map for every class);
ScoreCAM runs 2048 extra forward passes: a minute or more on a CPU.

**How maps are drawn (a product decision).**  Each map is normalised per class, so its
*shape* says where the evidence for that class is, but its brightness says nothing about
how likely the class is: a normalised map of a class at probability 0.001 has the same
bright red peak as one at 0.99.  Shown as is, every class would look alarming.  So each
map is drawn with a *strength*

    ``strength = clip(probability / threshold, 0, 1)``   (:func:`display_strength`)

where ``threshold`` is the class's decision threshold from the checkpoint's config (on the
calibrated probability).  Using the ratio to the threshold rather than the raw
probability matters because thresholds differ a lot between classes (a rare class such
as Hernia may be called positive at 0.05): a class at or above its threshold is drawn
at full strength, a class at half its threshold at half strength, a class far below it
fades out.  :func:`overlay` applies the strength twice, on purpose:

* to the **colour**: the colour map is indexed by ``strength * map``, so a faint class
  only ever reaches the cool (blue) end of the colour map and never shows the red that
  readers associate with "hot";
* to the **opacity**: each pixel's opacity is ``opacity * strength * map``, so regions
  outside the peak, and whole maps of unlikely classes, leave the radiograph visible
  instead of washing it in blue.

A class exactly at its threshold is drawn exactly like a clearly positive one: the map
shows *where*, the probability and the POSITIVE flag (shown beside it) say *how sure*.
Overlays are drawn over the original radiograph at its own resolution (``max_side``
only shrinks it for display); the map, computed on the stretched square model input, is
resized back to the original's width and height, which is exact because preprocessing
stretches without padding (:mod:`xray_app.preprocess`).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from pytorch_grad_cam import (
    EigenCAM,
    EigenGradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from xray_app.model import average_with_mirror

FAST_METHOD = "Grad-CAM (fast, all classes)"

# pytorch-grad-cam classes by display name; each takes (model=, target_layers=).
_LIBRARY_METHODS: dict[str, type] = {
    "Grad-CAM++": GradCAMPlusPlus,
    "HiResCAM": HiResCAM,
    "EigenCAM": EigenCAM,
    "LayerCAM": LayerCAM,
    "ScoreCAM": ScoreCAM,
    "XGrad-CAM": XGradCAM,
    "EigenGrad-CAM": EigenGradCAM,
}

METHODS: tuple[str, ...] = (FAST_METHOD, *_LIBRARY_METHODS)
"""Every heatmap method, the fast one first; the names are what the UI and CLI show."""

METHOD_NOTES: dict[str, str] = {
    FAST_METHOD: "exact Grad-CAM at layer4 for all 15 classes from the prediction's own forward pass",
    "Grad-CAM++": "Grad-CAM with higher-order gradient weights; one forward and backward pass",
    "HiResCAM": "element-wise gradient x activation; faithful to the model's computation",
    "EigenCAM": "first principal component of the activations: class-agnostic, the same map for every class",
    "LayerCAM": "positive gradients x activations, per position",
    "ScoreCAM": "gradient-free, 2048 extra forward passes: a minute or more on a CPU, ~1 s on an H100",
    "XGrad-CAM": "axiom-based gradient weights",
    "EigenGrad-CAM": "first principal component of gradient x activations",
}

CLASS_AGNOSTIC_METHODS: frozenset[str] = frozenset({"EigenCAM"})
DEFAULT_COLORMAP = cv2.COLORMAP_TURBO  # perceptually smoother than JET, same blue -> red reading


def resolve_method(name: str) -> str:
    """The canonical name in :data:`METHODS` for ``name``.

    Case, spaces, hyphens and underscores are ignored (``"gradcam++"``, ``"score_cam"``);
    ``"fast"`` and ``"gradcam"`` mean :data:`FAST_METHOD`.  Unknown names raise
    ``ValueError`` listing the methods.
    """
    key = _method_key(name)
    aliases = {_method_key(method): method for method in METHODS}
    aliases.update({"fast": FAST_METHOD, "gradcam": FAST_METHOD, "cam": FAST_METHOD})
    if key not in aliases:
        raise ValueError(f"unknown heatmap method {name!r}; choose one of: {', '.join(METHODS)}")
    return aliases[key]


def _method_key(name: str) -> str:
    return "".join(ch for ch in str(name).lower() if ch not in " -_")


# --------------------------------------------------------------------------- fast CAM
def class_activation_maps(
    features: torch.Tensor, fc_weight: torch.Tensor, size: int, *, mirror_average: bool = False
) -> np.ndarray:
    """Grad-CAM of every class at once from layer4 features: ``(N, C, size, size)`` float32.

    ``features``: ``(N, 2048, h, w)`` layer4 activations (any device, any float dtype; the
    maps are computed in float32).  ``fc_weight``: ``(C, 2048)`` weights of the linear head.
    ``mirror_average``: ``features`` are ``(2N, ...)``, of the images then of their mirror
    images (:func:`xray_app.model.with_mirror_images`), and each map is Grad-CAM of the
    averaged logit: the two raw maps, the mirror's flipped back, averaged before the ReLU.
    Each map is normalised per class like pytorch-grad-cam: ReLU, min-max to [0, 1],
    ``cv2.resize`` (bilinear) to ``size`` x ``size``, min-max again.  Values lie in [0, 1];
    a map with no positive evidence anywhere is all zeros.  Features on a GPU are
    normalised there with the same arithmetic (``interpolate(mode="bilinear")``, equal to
    cv2's to float32 rounding) and only the finished maps are copied to the host.
    """
    if features.ndim != 4 or fc_weight.ndim != 2 or features.shape[1] != fc_weight.shape[1]:
        raise ValueError(
            f"expected features (N, K, h, w) and fc_weight (C, K), got {tuple(features.shape)} "
            f"and {tuple(fc_weight.shape)}"
        )
    height, width = features.shape[-2:]
    weight = fc_weight.detach().to(device=features.device, dtype=torch.float32)
    # Grad-CAM's channel weights are fc_weight / (h*w); keeping the factor makes the
    # library's 1e-7 guard in the min-max act on the same magnitudes.
    raw = torch.einsum("ck,nkhw->nchw", weight, features.detach().float()) / (height * width)
    if mirror_average:
        raw = average_with_mirror(raw, spatial=True)
    raw = raw.clamp_min(0)
    if raw.device.type == "cpu":
        return normalise_maps(raw.numpy(), size)
    # On an accelerator, normalise and resize where the maps are: copying 15 small maps
    # to the host and resizing them there costs more than the forward pass.  Bilinear
    # interpolation with half-pixel centres and clamped edges is cv2.INTER_LINEAR's
    # arithmetic; the two agree to float32 rounding (checked on CUDA against the cv2 path).
    maps = _min_max_tensor(raw)
    maps = torch.nn.functional.interpolate(maps, size=(size, size), mode="bilinear",
                                           align_corners=False)
    return _min_max_tensor(maps).cpu().numpy()


def normalise_maps(maps: np.ndarray, size: int) -> np.ndarray:
    """``(N, C, h, w)`` non-negative maps -> ``(N, C, size, size)`` float32 in [0, 1].

    The same arithmetic as pytorch-grad-cam's ``scale_cam_image`` applied per target layer
    and then once more after aggregation: min-max with a 1e-7 guard, ``cv2.resize``
    (bilinear), min-max.
    """
    maps = _min_max(np.asarray(maps, dtype=np.float32))
    count, classes = maps.shape[:2]
    resized = np.empty((count, classes, size, size), dtype=np.float32)
    for i in range(count):
        # cv2 resizes every channel of an (h, w, C) image in one call
        channels_last = np.ascontiguousarray(maps[i].transpose(1, 2, 0))
        out = cv2.resize(channels_last, (size, size))
        resized[i] = out.reshape(size, size, classes).transpose(2, 0, 1)
    return _min_max(resized)


def _min_max_tensor(maps: torch.Tensor) -> torch.Tensor:
    maps = maps - maps.amin(dim=(-2, -1), keepdim=True)
    return maps / (1e-7 + maps.amax(dim=(-2, -1), keepdim=True))


def _min_max(maps: np.ndarray) -> np.ndarray:
    low = maps.min(axis=(-2, -1), keepdims=True)
    maps = maps - low
    return (maps / (1e-7 + maps.max(axis=(-2, -1), keepdims=True))).astype(np.float32)


# --------------------------------------------------------------------------- library CAMs
def library_cam(
    model: nn.Module,
    target_layer: nn.Module,
    input_tensor: torch.Tensor,
    class_index: int,
    method: str,
    *,
    batch_size: int = 16,
) -> np.ndarray:
    """One class's map from a pytorch-grad-cam method: ``(S, S)`` float32 in [0, 1].

    ``input_tensor`` is one ``(1, 3, S, S)`` normalised image on the model's device.  The
    method object lives only inside this call's ``with`` block, so its forward hooks are
    removed before returning, even on error.  Hooks are registered on ``model``'s modules:
    the caller must make sure nothing else runs ``model`` concurrently (the
    :class:`~xray_app.predictor.Predictor` serialises calls with a lock on a twin of its
    model that the fast path never uses).  Gradients flow to a copy of the input, so
    parameters frozen with ``requires_grad_(False)`` stay without ``.grad``.
    ``batch_size`` applies to ScoreCAM's masked forward passes.
    """
    method = resolve_method(method)
    if method == FAST_METHOD:
        raise ValueError(f"{FAST_METHOD!r} comes from the prediction itself, not from the library")
    if input_tensor.ndim != 4 or input_tensor.shape[0] != 1:
        raise ValueError(f"expected one (1, 3, S, S) image, got {tuple(input_tensor.shape)}")
    maps = None
    # gradients are needed even if the caller runs under no_grad or inference_mode
    with torch.inference_mode(False), torch.enable_grad():
        x = input_tensor.detach().clone().requires_grad_(True)
        with _LIBRARY_METHODS[method](model=model, target_layers=[target_layer]) as cam:
            if method == "ScoreCAM":
                cam.batch_size = batch_size  # ScoreCAM reads this attribute if present
            maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(class_index)])
    if maps is None:  # BaseCAM.__exit__ swallows IndexError after printing it
        raise RuntimeError(f"{method} failed for class {class_index} (see the message above)")
    result = np.asarray(maps[0], dtype=np.float32)
    return np.clip(np.nan_to_num(result, nan=0.0), 0.0, 1.0)


# --------------------------------------------------------------------------- display
def display_strength(probability: float, threshold: float) -> float:
    """How strongly a class's map is drawn, in [0, 1]: ``clip(probability / threshold, 0, 1)``.

    1 at or above the class's threshold, fading linearly to 0 far below it; see the module
    docstring for why.  A non-finite probability gives 0.
    """
    if not np.isfinite(probability) or threshold <= 0:
        return 0.0
    return float(np.clip(probability / threshold, 0.0, 1.0))


def shrink(gray: np.ndarray, max_side: int) -> np.ndarray:
    """``(H, W)`` image with its longer side at most ``max_side`` (aspect kept, area-averaged)."""
    height, width = gray.shape
    if max(height, width) <= max_side:
        return gray
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(gray.astype(np.float32), size, interpolation=cv2.INTER_AREA)


def overlay(
    gray: np.ndarray,
    cam: np.ndarray,
    *,
    strength: float = 1.0,
    opacity: float = 0.5,
    max_side: int | None = None,
    colormap: int = DEFAULT_COLORMAP,
    channels: str = "rgb",
) -> np.ndarray:
    """Draw ``cam`` over the radiograph ``gray``: ``(H', W', 3)`` uint8 RGB (``channels="bgr"``:
    BGR, OpenCV's order, for writing files without a copy).

    ``gray``: ``(H, W)`` float in [0, 1] at the original resolution (1 = white).  ``cam``:
    ``(h, w)`` in [0, 1], any size (resized to the image).  ``strength`` in [0, 1] (see
    :func:`display_strength`) scales both the colour reached and the opacity; ``opacity`` is
    the opacity of the hottest pixel at full strength.  ``max_side`` shrinks the result so
    that its longer side is at most that many pixels (aspect ratio kept); ``None`` keeps the
    original resolution.
    """
    gray = np.asarray(gray, dtype=np.float32)
    cam = np.asarray(cam, dtype=np.float32)
    if gray.ndim != 2 or cam.ndim != 2:
        raise ValueError(f"expected 2-D image and map, got {gray.shape} and {cam.shape}")
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must lie in [0, 1], got {opacity}")
    if channels not in ("rgb", "bgr"):
        raise ValueError(f"channels must be 'rgb' or 'bgr', got {channels!r}")
    if max_side is not None:
        gray = shrink(gray, max_side)
    height, width = gray.shape
    # clip the small map, not the resized one: bilinear interpolation stays within [0, 1]
    cam = np.clip(np.nan_to_num(cam), 0.0, 1.0) * np.float32(np.clip(strength, 0.0, 1.0))
    level = cv2.resize(cam, (width, height), interpolation=cv2.INTER_LINEAR)
    colour = cv2.applyColorMap(cv2.convertScaleAbs(level, alpha=255.0), colormap)  # BGR
    grey = cv2.convertScaleAbs(np.clip(gray, 0.0, 1.0), alpha=255.0)
    if channels == "rgb":
        colour = cv2.cvtColor(colour, cv2.COLOR_BGR2RGB)
    base = cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB)  # grey: the same in either order
    alpha = level * np.float32(opacity)
    # (1 - alpha) * base + alpha * colour, per pixel, in OpenCV's vectorised uint8 kernel
    # (ten times faster than the same sum in float32 NumPy; equal to within 1 grey level)
    return cv2.blendLinear(base, colour, 1.0 - alpha, alpha)
