"""Heatmaps: the fast all-class Grad-CAM equals pytorch-grad-cam's; library methods; overlays."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from tests.paths import NIH_IMAGES, NIH_ORIGINALS
from xray_app import explain
from xray_app.labels import NUM_LABELS
from xray_app.model import load_checkpoint, write_random_init
from xray_app.predictor import Predictor
from xray_app.preprocess import to_model_input

RADIOGRAPH = NIH_IMAGES / "00000075_000.png"


@pytest.fixture(scope="module")
def prediction(cpu_predictor, shared_data):
    return cpu_predictor.predict(RADIOGRAPH)


# --------------------------------------------------------------------------- exactness
def test_fast_cams_equal_pytorch_grad_cam_for_all_15_classes(
    cpu_predictor, prediction, random_init_checkpoint
):
    # An independent copy of the model for the library, so that its hooks and gradients
    # touch nothing the predictor uses.  Only the last BatchNorm of layer4 requires grad:
    # that makes layer4's output require grad (the library hooks its gradient there) while
    # backpropagation stops at layer4 instead of running through the whole trunk.  The
    # gradient at layer4's output, all that Grad-CAM uses, does not depend on this.
    reference = load_checkpoint(random_init_checkpoint).model.requires_grad_(False)
    reference.layer4[-1].bn3.requires_grad_(True)
    config = cpu_predictor.config
    x = to_model_input(prediction.image.pixels, config.input_size, config.mean, config.std)
    with GradCAM(model=reference, target_layers=[reference.layer4]) as cam:
        expected = cam(
            input_tensor=x.unsqueeze(0).repeat(NUM_LABELS, 1, 1, 1),
            targets=[ClassifierOutputTarget(c) for c in range(NUM_LABELS)],
        )

    assert expected.shape == prediction.cams.shape == (NUM_LABELS, 224, 224), (
        f"expected 15 maps of 224 x 224 from both, got {expected.shape} and {prediction.cams.shape}"
    )
    # the comparison is only meaningful if the 15 maps differ from each other
    assert expected.std(axis=0).mean() > 0.05, "expected the 15 library maps to differ by class"
    difference = np.abs(prediction.cams - expected).max(axis=(1, 2))
    assert difference.max() <= 1e-4, (
        f"expected the fast maps to equal pytorch-grad-cam's GradCAM within 1e-4 for every "
        f"class, got max differences {np.round(difference, 6).tolist()}"
    )


def test_class_activation_maps_shapes_and_range():
    generator = torch.Generator().manual_seed(0)
    features = torch.rand(2, 2048, 7, 7, generator=generator)
    weight = torch.randn(NUM_LABELS, 2048, generator=generator)
    maps = explain.class_activation_maps(features, weight, 64)
    assert maps.shape == (2, NUM_LABELS, 64, 64), f"expected (2, 15, 64, 64), got {maps.shape}"
    assert maps.dtype == np.float32, f"expected float32 maps, got {maps.dtype}"
    assert maps.min() >= 0.0 and maps.max() <= 1.0, (
        f"expected maps in [0, 1], got [{maps.min()}, {maps.max()}]"
    )
    # a class whose weights are all negative on non-negative features has no evidence
    weight[3] = -weight[3].abs()
    maps = explain.class_activation_maps(features, weight, 64)
    assert np.all(maps[:, 3] == 0.0), "expected an all-zero map for a class with no positive evidence"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_normalisation_equals_the_cv2_path(cpu_predictor, prediction):
    config = cpu_predictor.config
    x = to_model_input(prediction.image.pixels, config.input_size, config.mean, config.std)
    with torch.inference_mode():
        features = cpu_predictor._model.forward_features(x.unsqueeze(0))
    on_cpu = explain.class_activation_maps(features, cpu_predictor._fc_weight, 224)
    on_gpu = explain.class_activation_maps(features.cuda(), cpu_predictor._fc_weight, 224)
    difference = np.abs(on_cpu - on_gpu).max()
    assert difference <= 1e-5, f"expected the CUDA maps to equal the cv2 maps within 1e-5, got {difference}"


# --------------------------------------------------------------------------- library methods
LIBRARY_METHODS = [m for m in explain.METHODS if m not in (explain.FAST_METHOD, "ScoreCAM")]


@pytest.mark.parametrize("method", LIBRARY_METHODS)
def test_library_method_gives_one_unit_map(cpu_predictor, prediction, method):
    result = cpu_predictor.explain(prediction, 2, method)
    assert result.shape == (224, 224), f"{method}: expected a (224, 224) map, got {result.shape}"
    assert np.isfinite(result).all(), f"{method}: expected finite values"
    assert result.min() >= 0.0 and result.max() <= 1.0, (
        f"{method}: expected values in [0, 1], got [{result.min()}, {result.max()}]"
    )
    assert result.max() > 0.5, f"{method}: expected a non-empty map (max {result.max()})"


def test_library_methods_leave_no_hooks_and_no_gradients(cpu_predictor, prediction):
    before = {key: value.clone() for key, value in cpu_predictor._model.state_dict().items()}
    with torch.inference_mode():  # a caller's inference mode must not break the gradients
        result = cpu_predictor.explain(prediction, 0, "HiResCAM")
    assert result.shape == (224, 224) and result.max() > 0.5, (
        f"expected a non-empty (224, 224) map under inference_mode, got {result.shape}, max {result.max()}"
    )
    for model in (cpu_predictor._model, cpu_predictor._hooked_twin):
        hooked = [name for name, module in model.named_modules() if module._forward_hooks]
        assert not hooked, f"expected no forward hooks left after explain, found them on {hooked}"
        with_grad = [name for name, p in model.named_parameters() if p.grad is not None]
        assert not with_grad, f"expected no parameter gradients, found them on {with_grad[:3]}"
    after = cpu_predictor._model.state_dict()
    changed = [key for key in before if not torch.equal(before[key], after[key])]
    assert not changed, f"expected explain to leave the model's tensors unchanged, changed: {changed}"


@pytest.mark.slow
def test_score_cam_on_a_small_input(tmp_path, shared_data):
    # ScoreCAM runs one forward pass per layer4 channel (2048): at 40 px that is seconds
    predictor = Predictor(
        load_checkpoint(write_random_init(tmp_path / "small", input_size=40)),
        device="cpu",
        score_cam_batch_size=512,
    )
    prediction = predictor.predict(RADIOGRAPH)
    result = predictor.explain(prediction, 2, "ScoreCAM")
    assert result.shape == (40, 40), f"expected a (40, 40) ScoreCAM map, got {result.shape}"
    assert result.min() >= 0.0 and result.max() <= 1.0, (
        f"expected values in [0, 1], got [{result.min()}, {result.max()}]"
    )
    assert result.max() > 0.5, f"expected a non-empty ScoreCAM map (max {result.max()})"


def test_fast_method_returns_the_predictions_own_map(cpu_predictor, prediction):
    result = cpu_predictor.explain(prediction, 7, explain.FAST_METHOD)
    assert result is prediction.cams[7] or np.array_equal(result, prediction.cams[7]), (
        "expected the fast method to return prediction.cams[7]"
    )


def test_unknown_method_and_class_are_rejected(cpu_predictor, prediction):
    with pytest.raises(ValueError, match="unknown heatmap method"):
        cpu_predictor.explain(prediction, 0, "DeepDream")
    with pytest.raises(ValueError, match="class_index"):
        cpu_predictor.explain(prediction, NUM_LABELS, "HiResCAM")


def test_method_names_resolve_loosely():
    assert explain.resolve_method("gradcam++") == "Grad-CAM++", "expected 'gradcam++' -> 'Grad-CAM++'"
    assert explain.resolve_method("score_cam") == "ScoreCAM", "expected 'score_cam' -> 'ScoreCAM'"
    assert explain.resolve_method("fast") == explain.FAST_METHOD, "expected 'fast' -> the fast method"
    assert explain.METHODS[:6] == (
        explain.FAST_METHOD, "Grad-CAM++", "HiResCAM", "EigenCAM", "LayerCAM", "ScoreCAM"
    ), f"expected the agreed first six method names, got {explain.METHODS[:6]}"


# --------------------------------------------------------------------------- display
@pytest.mark.parametrize(
    ("probability", "threshold", "expected"),
    [(0.0, 0.4, 0.0), (0.1, 0.4, 0.25), (0.2, 0.4, 0.5), (0.4, 0.4, 1.0), (0.9, 0.4, 1.0),
     (0.004, 0.04, 0.1), (float("nan"), 0.5, 0.0)],
)
def test_display_strength_is_probability_over_threshold_clipped(probability, threshold, expected):
    strength = explain.display_strength(probability, threshold)
    assert strength == pytest.approx(expected), (
        f"expected strength {expected} for p={probability}, threshold={threshold}, got {strength}"
    )


def test_overlay_keeps_the_original_resolution_or_shrinks_to_max_side(shared_data):
    from xray_app.preprocess import decode_image

    image = decode_image(NIH_ORIGINALS / "00000100_000.png")  # 1024 x 1024 RGBA original
    cam = np.zeros((224, 224), dtype=np.float32)
    cam[150:200, 20:80] = 1.0
    full = explain.overlay(image.pixels, cam)
    assert full.shape == (1024, 1024, 3) and full.dtype == np.uint8, (
        f"expected a (1024, 1024, 3) uint8 overlay, got {full.shape} {full.dtype}"
    )
    wide = np.tile(image.pixels, (1, 2))  # 1024 x 2048
    small = explain.overlay(wide, cam, max_side=512)
    assert small.shape == (256, 512, 3), f"expected (256, 512, 3) with max_side=512, got {small.shape}"
    # the map lands where it was: rows 150-200 of 224 -> about rows 686-914 of 1024
    hot = np.abs(full.astype(int) - (np.clip(image.pixels, 0, 1) * 255).round()[..., None]).sum(-1)
    assert hot[700:900, 100:350].mean() > 10 * max(hot[:500].mean(), 1e-3), (
        "expected the overlay to colour the region of the map and leave the rest grey"
    )


def test_faint_class_is_drawn_fainter_and_cooler(prediction):
    gray = prediction.image.pixels
    cam = prediction.cams[2]
    base = (np.clip(gray, 0, 1) * 255).round()[..., None]
    change = {}
    for strength in (1.0, 0.2):
        drawn = explain.overlay(gray, cam, strength=strength).astype(float)
        change[strength] = np.abs(drawn - base).mean()
        peak = np.unravel_index(np.argmax(cv2_resize(cam, gray.shape)), gray.shape)
        red, _, blue = drawn[peak] - base[peak]
        if strength == 1.0:
            assert red > blue, f"expected the peak of a full-strength map to be red-shifted, got {red, blue}"
        else:
            assert red < blue, f"expected the peak of a faint map to stay blue-shifted, got {red, blue}"
    assert change[0.2] < 0.25 * change[1.0], (
        f"expected strength 0.2 to change the image much less than 1.0, got {change}"
    )


def cv2_resize(cam: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    import cv2

    return cv2.resize(cam, (shape[1], shape[0]))
