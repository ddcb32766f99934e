"""Predictor: probabilities, calibration, thresholds, batches, threads, warnings."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.dicom_factory import dicom_bytes, make_dicom, nih_gray
from tests.paths import DICOM_DIR, NIH_IMAGES, NIH_ORIGINALS
from xray_app.flags import flag_findings
from xray_app.labels import DISPLAY_NAMES, LABELS, NUM_LABELS
from xray_app.model import LoadedCheckpoint
from xray_app.model_facts import training_data_summary
from xray_app.population import Population, PopulationError
from xray_app.predictor import (
    ASPECT_RATIO_LIMIT,
    COLOURFULNESS_LIMIT,
    UNTRAINED_WARNING,
    Prediction,
    Predictor,
    input_warnings,
)
from xray_app.preprocess import ImageInputError, NotAnImageError, TruncatedImageError, decode_image

PNG_512 = NIH_IMAGES / "00000075_000.png"
RGBA_1024 = NIH_ORIGINALS / "00000100_000.png"
DICOM = DICOM_DIR / "siim_pneumothorax_example.dcm"


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def prediction(cpu_predictor, shared_data) -> Prediction:
    return cpu_predictor.predict(PNG_512)


# --------------------------------------------------------------------------- one image
def test_prediction_has_15_outputs_in_logit_order(prediction):
    assert prediction.name == "00000075_000.png", f"expected the base name, got {prediction.name!r}"
    for field in ("logits", "probabilities", "thresholds", "positive"):
        shape = getattr(prediction, field).shape
        assert shape == (NUM_LABELS,), f"expected {field} of shape (15,), got {shape}"
    assert prediction.cams.shape == (NUM_LABELS, 224, 224), (
        f"expected cams (15, 224, 224), got {prediction.cams.shape}"
    )
    assert prediction.cams.dtype == np.float32 and prediction.probabilities.dtype == np.float32, (
        "expected float32 cams and probabilities"
    )
    assert prediction.cams.min() >= 0 and prediction.cams.max() <= 1, "expected cams in [0, 1]"
    labels = [finding.label for finding in prediction.findings]
    assert labels == list(LABELS), f"expected findings in logit order {LABELS}, got {labels}"
    names = [finding.display_name for finding in prediction.findings]
    assert names == list(DISPLAY_NAMES), f"expected display names {DISPLAY_NAMES}, got {names}"
    ordered = [finding.probability for finding in prediction.sorted_findings()]
    assert ordered == sorted(ordered, reverse=True), f"expected descending probabilities, got {ordered}"
    assert prediction.image.pixels.shape == (512, 512), "expected the full-resolution image kept"


def test_uncalibrated_probabilities_are_the_sigmoid_of_the_logits(prediction):
    np.testing.assert_allclose(
        prediction.probabilities, sigmoid(prediction.logits), rtol=1e-5, atol=1e-7,
        err_msg="expected probabilities = sigmoid(logits) without calibration",
    )


def test_calibration_and_thresholds_follow_the_config(cpu_predictor, prediction):
    scale = np.linspace(0.5, 1.5, NUM_LABELS)
    bias = np.linspace(-1.0, 1.0, NUM_LABELS)
    thresholds = tuple(float(t) for t in np.linspace(0.05, 0.95, NUM_LABELS))
    config = cpu_predictor.config.with_updates(
        calibration={"method": "platt", "scale": scale.tolist(), "bias": bias.tolist()},
        thresholds=thresholds,
    )
    # the same (frozen, never mutated) network under a config with calibration
    checkpoint = LoadedCheckpoint(cpu_predictor._model, config, cpu_predictor.sha256, {}, Path("."))
    calibrated = Predictor(checkpoint, device="cpu")

    before, after = prediction, calibrated.predict(PNG_512)
    np.testing.assert_allclose(after.logits, before.logits, rtol=0, atol=1e-6,
                               err_msg="expected calibration to leave the logits alone")
    np.testing.assert_allclose(
        after.probabilities, sigmoid(scale * before.logits + bias), rtol=1e-5, atol=1e-6,
        err_msg="expected calibrated p = sigmoid(scale * logit + bias)",
    )
    assert np.abs(after.probabilities - before.probabilities).max() > 1e-2, (
        "expected the calibration to change some probability noticeably"
    )
    np.testing.assert_array_equal(after.thresholds, np.float32(thresholds),
                                  err_msg="expected the config's thresholds")
    expected_positive = flag_findings(after.probabilities, np.float32(thresholds))
    np.testing.assert_array_equal(after.positive, expected_positive,
                                  err_msg="expected positive = the one flag rule on these thresholds")
    assert 0 < expected_positive.sum() < NUM_LABELS, (
        f"expected a mix of positive and negative classes, got {expected_positive.tolist()}"
    )
    assert [f.threshold for f in after.findings] == pytest.approx(thresholds), (
        "expected each finding to carry its class threshold"
    )


def test_bad_input_raises_an_image_input_error_naming_it(cpu_predictor):
    with pytest.raises(NotAnImageError, match="notes.txt"):
        cpu_predictor.predict(b"these are not pixels", name="notes.txt")


# --------------------------------------------------------------------------- batches
def test_batch_equals_single_predictions_and_keeps_going_after_a_bad_item(cpu_predictor, shared_data):
    truncated = PNG_512.read_bytes()[:5000]
    sources = [PNG_512, truncated, DICOM, RGBA_1024]
    names = [None, "truncated.png", None, None]
    results = cpu_predictor.predict_batch(sources, names=names, batch_size=2)

    assert len(results) == 4, f"expected one result per input, got {len(results)}"
    assert isinstance(results[1], TruncatedImageError), (
        f"expected the truncated PNG to yield TruncatedImageError, got {results[1]!r}"
    )
    assert "truncated.png" in str(results[1]), f"expected the error to name the file: {results[1]}"
    for source, result in zip([PNG_512, DICOM, RGBA_1024], [results[0], results[2], results[3]],
                              strict=True):
        assert isinstance(result, Prediction), f"expected a prediction for {source.name}, got {result!r}"
        single = cpu_predictor.predict(source)
        assert result.name == single.name == source.name, f"expected the name {source.name}"
        np.testing.assert_allclose(result.probabilities, single.probabilities, atol=1e-5,
                                   err_msg=f"expected batch = single probabilities for {source.name}")
        np.testing.assert_allclose(result.cams, single.cams, atol=1e-4,
                                   err_msg=f"expected batch = single heatmaps for {source.name}")


# --------------------------------------------------------------------------- threads
def test_concurrent_calls_give_the_sequential_results(cpu_predictor, shared_data):
    files = [NIH_IMAGES / "00000100_000.png", NIH_IMAGES / "00000129_000.png", DICOM]
    sequential = [cpu_predictor.predict(path) for path in files]
    explained = cpu_predictor.explain(sequential[0], 4, "Grad-CAM++")

    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(cpu_predictor.predict, path) for path in files * 2]
        # a hooked library method running at the same time must not disturb the fast path
        explain_future = pool.submit(cpu_predictor.explain, sequential[0], 4, "Grad-CAM++")
        concurrent = [future.result() for future in futures]
        concurrent_explained = explain_future.result()

    for index, result in enumerate(concurrent):
        expected = sequential[index % len(files)]
        assert result.name == expected.name, f"expected {expected.name}, got {result.name}"
        np.testing.assert_allclose(result.probabilities, expected.probabilities, atol=1e-6,
                                   err_msg=f"expected thread {index} to match sequential probabilities")
        np.testing.assert_allclose(result.cams, expected.cams, atol=1e-5,
                                   err_msg=f"expected thread {index} to match sequential heatmaps")
    np.testing.assert_allclose(concurrent_explained, explained, atol=1e-5,
                               err_msg="expected the concurrent Grad-CAM++ map to match sequential")


# --------------------------------------------------------------------------- warnings
def test_untrained_weights_are_announced(prediction, cpu_predictor):
    assert prediction.warnings[0] == UNTRAINED_WARNING, (
        f"expected the untrained warning first, got {prediction.warnings}"
    )
    assert cpu_predictor.model_info["trained"] is False, "expected model_info to say untrained"
    assert set(cpu_predictor.model_info) >= {"name", "sha256", "trained", "data"}, (
        f"expected model_info keys name/sha256/trained/data, got {sorted(cpu_predictor.model_info)}"
    )


def test_shared_radiographs_do_not_trigger_the_not_a_radiograph_warnings(shared_data):
    files = sorted(NIH_ORIGINALS.glob("*.png")) + sorted(DICOM_DIR.glob("*.dcm"))
    modes = set()
    for path in files:
        image = decode_image(path)
        modes.add(image.mode)
        assert input_warnings(image) == (), f"expected no input warnings for {path.name}"
    assert "RGBA" in modes, f"expected the RGBA NIH originals among the files, got modes {modes}"


def test_colour_and_aspect_ratio_warnings(cpu_predictor, shared_data):
    gray = nih_gray()
    tinted = np.stack([gray, (gray * 0.6).astype(np.uint8), (gray * 0.3).astype(np.uint8)], -1)
    result = cpu_predictor.predict(png_bytes(tinted), name="photo.png")
    colour = [w for w in result.warnings if "in colour" in w]
    assert colour, f"expected a colour warning (limit {COLOURFULNESS_LIMIT}), got {result.warnings}"

    strip = decode_image(png_bytes(gray[:200]), name="strip.png")  # 512 x 200
    assert strip.aspect_ratio > ASPECT_RATIO_LIMIT, "test input should exceed the aspect limit"
    assert any("aspect ratio" in w for w in input_warnings(strip)), (
        f"expected an aspect-ratio warning for a {strip.aspect_ratio:.2f}:1 image"
    )


def test_dicom_header_warnings(shared_data):
    ds = make_dicom(nih_gray()[::4, ::4], bits_stored=8)
    ds.ViewPosition, ds.Modality, ds.BodyPartExamined = "LL", "CT", "KNEE"
    warnings = input_warnings(decode_image(dicom_bytes(ds), name="odd.dcm"))
    for expected in ("modality is CT", "'KNEE'", "lateral view"):
        assert any(expected in w for w in warnings), f"expected a warning with {expected!r}, got {warnings}"


def test_prediction_arrays_are_read_only(prediction):
    with pytest.raises(ValueError):
        prediction.probabilities[0] = 0.5
    assert isinstance(ImageInputError("x", "y"), ValueError), "ImageInputError is a ValueError"


def test_tensor_work_runs_on_one_thread_whichever_thread_asks(cpu_predictor, monkeypatch):
    """One OpenMP team per process: Gradio's pool threads all hand their forward passes to
    the compute thread (xray_app.compute) instead of running torch themselves."""
    import threading

    seen: list[str] = []
    forward_features = cpu_predictor._model.forward_features

    def recording(x):
        seen.append(threading.current_thread().name)
        return forward_features(x)

    monkeypatch.setattr(cpu_predictor._model, "forward_features", recording)
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda _: cpu_predictor.predict(NIH_IMAGES / "00000075_000.png"), range(6)))
    assert len(seen) == 6 and len(set(seen)) == 1, f"expected one thread for all forward passes, got {set(seen)}"
    assert seen[0].startswith("xray-compute"), f"expected the compute thread, got {seen[0]}"
    reference = results[0].probabilities
    assert all(np.array_equal(r.probabilities, reference) for r in results), "expected identical results"
    with ThreadPoolExecutor(max_workers=1) as solo, pytest.raises(ImageInputError):
        # the caller gets the exception raised on the compute thread
        solo.submit(cpu_predictor.predict, b"not an image", name="junk.png").result()


def test_training_data_line_says_when_targets_came_partly_from_a_teacher():
    provenance = {"data": {"images": {"train": 300, "val": 100}, "source": "the NIH sample"}}
    assert training_data_summary(provenance) == "300 train, 100 val images from the NIH sample"
    provenance["distillation"] = {"teacher": "../shared/data/nih/chexnet_repro_preds.csv", "weight": 0.7}
    assert training_data_summary(provenance).endswith(
        "; training targets partly a teacher model's probabilities (chexnet_repro_preds.csv)"
    ), "expected the banner's training-data line to mention the teacher"


def _population(name: str, value: float) -> dict:
    return {"name": name, "prevalence": dict.fromkeys(LABELS, value)}


def test_population_moves_probabilities_and_thresholds_together(cpu_predictor, prediction):
    """A config with a population record shows probabilities for that population; another
    prevalence table given at start-up moves them and the thresholds by the same odds, so
    the same findings stay flagged."""
    thresholds = tuple(float(t) for t in np.linspace(0.05, 0.95, NUM_LABELS))
    record = {**_population("all films", 0.05), "sample": _population("training sample", 0.25)}
    config = cpu_predictor.config.with_updates(thresholds=thresholds, population=record)
    checkpoint = LoadedCheckpoint(cpu_predictor._model, config, cpu_predictor.sha256, {}, Path("."))
    shifted = Predictor(checkpoint, device="cpu").predict(PNG_512)
    offset = np.log(0.05 / 0.95) - np.log(0.25 / 0.75)
    np.testing.assert_allclose(shifted.probabilities, sigmoid(prediction.logits + offset),
                               rtol=1e-5, atol=1e-6, err_msg="expected p = sigmoid(logit + offset)")
    np.testing.assert_allclose(shifted.thresholds, thresholds, rtol=1e-6,
                               err_msg="the config's thresholds are on its population's scale")

    hospital = Population("a hospital", (0.5,) * NUM_LABELS)
    moved = Predictor(checkpoint, device="cpu", population=hospital).predict(PNG_512)
    expected = sigmoid(prediction.logits + np.log(0.5 / 0.5) - np.log(0.25 / 0.75))
    np.testing.assert_allclose(moved.probabilities, expected, rtol=1e-5, atol=1e-6,
                               err_msg="a prevalence table given at start-up replaces the config's")
    np.testing.assert_array_equal(moved.positive, shifted.positive,
                                  err_msg="moving the population must not change which findings are flagged")


def test_population_without_a_calibration_sample_is_refused(cpu_predictor):
    checkpoint = LoadedCheckpoint(cpu_predictor._model, cpu_predictor.config, cpu_predictor.sha256, {}, Path("."))
    with pytest.raises(PopulationError, match="calibration sample"):
        Predictor(checkpoint, device="cpu", population=Population("x", (0.1,) * NUM_LABELS))
