"""Mirror averaging: a checkpoint whose config says ``mirror_average`` scores each image as
the mean of its logits and its left-right mirror image's logits, in the app, in
evaluation and in training's validation alike, and its heatmaps explain that mean."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from training.evaluate import run_model
from xray_app.model import (
    FORMAT_VERSION,
    CheckpointError,
    ModelConfig,
    average_with_mirror,
    build_model,
    load_checkpoint,
    read_config,
    with_mirror_images,
    write_config,
    write_random_init,
)
from xray_app.predictor import Predictor
from xray_app.scoring import score_batch

SIZE = 96  # small input: these properties do not depend on the size


@pytest.fixture(scope="module")
def mirrored_checkpoint(tmp_path_factory) -> Path:
    """A random-init checkpoint whose config asks for mirror averaging."""
    directory = write_random_init(tmp_path_factory.mktemp("mirrored"), seed=1, input_size=SIZE)
    path = directory / "config.json"
    write_config(read_config(path).with_updates(mirror_average=True), path)
    return directory


@pytest.fixture(scope="module")
def plain_checkpoint(tmp_path_factory) -> Path:
    """The same random-init weights, scoring images as given."""
    return write_random_init(tmp_path_factory.mktemp("plain"), seed=1, input_size=SIZE)


def test_averaged_logits_are_the_mean_of_the_image_and_its_mirror_image():
    model = build_model(architecture="tiny-resnet").eval()
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = (model(x) + model(x.flip(-1))) / 2
        averaged = score_batch(model, x, mirror_average=True)
        plain = score_batch(model, x, mirror_average=False)
    assert torch.allclose(averaged.logits, expected, atol=1e-5), "expected the mean of both views"
    assert torch.allclose(averaged.view_logits[:, 1], model(x.flip(-1)), atol=1e-5), (
        "expected the second view to be the mirror image's own logits")
    assert torch.allclose(plain.logits, model(x), atol=1e-6), (
        "expected plain logits when the config does not ask for mirror averaging")


def test_maps_of_the_mirror_images_are_flipped_back_before_averaging():
    maps = torch.arange(2 * 1 * 2 * 3, dtype=torch.float32).reshape(2, 1, 2, 3)
    averaged = average_with_mirror(maps, spatial=True)
    assert torch.equal(averaged, (maps[:1] + maps[1:].flip(-1)) / 2)
    assert torch.equal(with_mirror_images(maps[:1])[1], maps[0].flip(-1)), (
        "expected the second half of the batch to be the mirror images")
    with pytest.raises(ValueError, match="even"):
        average_with_mirror(maps[:1])


def test_a_mirror_averaging_predictor_gives_a_radiograph_and_its_mirror_image_the_same_scores(
    mirrored_checkpoint,
):
    predictor = Predictor(load_checkpoint(mirrored_checkpoint), device="cpu")
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    out, mirrored = predictor.infer(x), predictor.infer(x.flip(-1))
    np.testing.assert_allclose(mirrored.logits, out.logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(mirrored.probabilities, out.probabilities, rtol=1e-5, atol=1e-6)
    # the heatmaps say where, in the image as uploaded: mirroring the image mirrors them
    np.testing.assert_allclose(mirrored.cams, out.cams[..., ::-1], atol=1e-4)
    assert out.cams.shape == (2, 15, SIZE, SIZE) and out.cams.max() > 0


def test_a_plain_predictor_scores_the_image_as_given(plain_checkpoint, mirrored_checkpoint):
    plain = Predictor(load_checkpoint(plain_checkpoint), device="cpu")
    mirrored = Predictor(load_checkpoint(mirrored_checkpoint), device="cpu")
    x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    as_given, flipped = plain.infer(x).logits, plain.infer(x.flip(-1)).logits
    assert not np.allclose(as_given, flipped, atol=1e-4), (
        "expected the untrained network to score an image and its mirror differently, "
        "or the invariance above would prove nothing")
    np.testing.assert_allclose(mirrored.infer(x).logits, (as_given + flipped) / 2, rtol=1e-4, atol=1e-5)


def test_evaluation_scores_images_as_the_checkpoint_says(mirrored_checkpoint, plain_checkpoint,
                                                         shared_data, tmp_path):
    radiograph = cv2.imread(str(shared_data / "nih/images/00000075_000.png"), cv2.IMREAD_GRAYSCALE)
    paths = [tmp_path / "as_given.png", tmp_path / "mirror.png"]
    cv2.imwrite(str(paths[0]), radiograph)
    cv2.imwrite(str(paths[1]), radiograph[:, ::-1])
    mirrored = run_model(mirrored_checkpoint, paths)
    np.testing.assert_allclose(mirrored[0], mirrored[1], rtol=1e-4, atol=1e-4)
    plain = run_model(plain_checkpoint, paths)
    np.testing.assert_allclose(mirrored[0], plain.mean(axis=0), rtol=1e-4, atol=1e-4)


def test_configs_without_the_key_score_images_as_given_and_the_key_must_be_a_boolean(tmp_path):
    assert ModelConfig.from_dict({"name": "old"}).mirror_average is False
    with pytest.raises(CheckpointError, match="mirror_average"):
        ModelConfig(mirror_average="yes")
    path = tmp_path / "config.json"
    write_config(ModelConfig(mirror_average=True, format_version=1), path)
    written = json.loads(path.read_text())
    assert written["mirror_average"] is True
    assert written["format_version"] == FORMAT_VERSION, (
        "expected a written config to declare the format that can read it")
