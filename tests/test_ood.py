"""Out-of-distribution gate: statistics, levels, app-side scoring, and the CLI on real radiographs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.covariance import LedoitWolf

from training import fit_ood
from training.gating.feature_distance import choose_levels, fit_feature_stats, ood_score
from training.gating.features import extract_features
from training.gating.synthetic import GENERATED_KINDS, generate_non_radiographs
from xray_app.model import load_checkpoint, write_random_init
from xray_app.ood import (
    TENSOR_KEYS,
    OodConfigError,
    OodGate,
    assess_ood,
    level_of,
    mahalanobis_score,
)
from xray_app.preprocess import decode_image

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nih"
IMAGES = DATA / "images"


def _dense_whitening(stats: dict[str, torch.Tensor]) -> np.ndarray:
    """``W = outside I + basis^T diag(coef) basis`` in float64, from the compact tensors."""
    basis, coef = stats["basis"].double().numpy(), stats["coef"].double().numpy()
    outside = float(stats["outside"].double().item())
    return outside * np.eye(basis.shape[1]) + basis.T @ (coef[:, None] * basis)


@pytest.mark.parametrize(("n", "d"), [(30, 40), (300, 40)])
def test_whitening_squares_to_the_ledoit_wolf_precision(n: int, d: int) -> None:
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, d)) * rng.uniform(0.5, 3.0, d) + rng.normal(size=d)
    stats = fit_feature_stats(x)
    k = min(n, d)
    shapes = {key: tuple(value.shape) for key, value in stats.items()}
    assert shapes == {"mean": (d,), "basis": (k, d), "coef": (k,), "outside": (1,)}, shapes
    assert all(v.dtype == torch.float32 for v in stats.values()), "stored tensors are float32"
    w = _dense_whitening(stats)
    precision = np.linalg.inv(LedoitWolf().fit(x).covariance_)
    error = np.abs(w @ w.T - precision).max() / np.abs(precision).max()
    assert error < 1e-5, f"W W^T should equal sklearn's Ledoit-Wolf precision, rel. error {error}"
    assert np.allclose(stats["mean"].numpy(), x.mean(axis=0), atol=1e-5), "mean should be the sample mean"


def test_score_is_the_mahalanobis_distance() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 8)) * np.arange(1, 9)
    stats = fit_feature_stats(x)
    precision = np.linalg.inv(LedoitWolf().fit(x).covariance_)
    probes = rng.normal(size=(5, 8)) * 4
    centred = probes - x.mean(axis=0)
    expected = np.sqrt(np.einsum("nd,de,ne->n", centred, precision, centred))
    got = ood_score(probes, stats)
    assert np.allclose(got, expected, rtol=1e-4), f"expected distances {expected}, got {got}"
    at_mean = ood_score(x.mean(axis=0, keepdims=True), stats)
    assert at_mean[0] == pytest.approx(0.0, abs=1e-3), f"the mean itself should score 0, got {at_mean}"


def test_compact_score_equals_the_dense_matrix_score() -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(20, 64)) * rng.uniform(0.5, 3.0, 64) + rng.normal(size=64)
    stats = fit_feature_stats(x)
    probes = rng.normal(size=(10, 64)) * 2 + x.mean(axis=0)
    centred = probes - stats["mean"].double().numpy()
    expected = np.linalg.norm(centred @ _dense_whitening(stats), axis=1)  # float64 reference
    got = mahalanobis_score(torch.from_numpy(probes).float(), *(stats[k] for k in TENSOR_KEYS))
    assert got.dtype == torch.float32, got.dtype
    assert np.allclose(got.numpy(), expected, rtol=1e-4), f"expected {expected}, got {got}"


def test_stored_statistics_are_far_smaller_than_a_dense_matrix() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 2048)).astype(np.float32)
    stats = fit_feature_stats(x)
    assert tuple(stats["basis"].shape) == (300, 2048), tuple(stats["basis"].shape)
    stored = sum(t.numel() * t.element_size() for t in stats.values())
    dense = 2048 * 2048 * 4
    assert stored < dense / 5, f"{stored / 1e6:.1f} MB stored vs {dense / 1e6:.1f} MB dense"


def test_score_rejects_wrong_feature_width() -> None:
    with pytest.raises(ValueError, match=r"expected \(N, 4\)"):
        mahalanobis_score(torch.zeros(2, 3), torch.zeros(4), torch.zeros(0, 4), torch.zeros(0),
                          torch.ones(1))


def test_choose_levels_quantile_and_far_level() -> None:
    scores = np.arange(1, 101, dtype=float)  # median 50.5, 99th percentile 99.01
    warn, refuse = choose_levels(scores)
    assert warn == pytest.approx(99.01), f"warn should be the 99th percentile 99.01, got {warn}"
    assert refuse == pytest.approx(50.5 + 2 * (99.01 - 50.5)), f"refuse = median + 2(warn - median), got {refuse}"
    with pytest.raises(ValueError, match="at least one finite"):
        choose_levels(np.array([]))


def test_levels_and_messages() -> None:
    assert [level_of(s, 10.0, 20.0) for s in (5.0, 10.0, 15.0, 20.0, 25.0)] == [
        "ok", "ok", "warn", "warn", "refuse"
    ], "ok up to warn inclusive, warn up to refuse inclusive, refuse above"
    gate = _identity_gate(3)
    results = gate.assess(torch.tensor([[0.5, 0, 0], [1.5, 0, 0], [3.0, 0, 0]]))
    assert [r.level for r in results] == ["ok", "warn", "refuse"], f"got {results}"
    assert results[0].message == "", "an in-distribution image gets no message"
    assert "may be unreliable" in results[1].message, f"warning message: {results[1].message}"
    assert "no prediction is shown" in results[2].message and results[2].refused, results[2]


def _identity_gate(dim: int) -> OodGate:
    """``W = I``: the score is the Euclidean distance to 0."""
    return OodGate(mean=torch.zeros(dim), basis=torch.zeros(0, dim), coef=torch.zeros(0),
                   outside=torch.ones(1), warn=1.0, refuse=2.0)


def test_gate_from_parts_validates_the_checkpoint() -> None:
    assert assess_ood(torch.zeros(1, 3), {}, None) is None, "no ood entry: no gate (older checkpoint)"
    entry = {"method": "mahalanobis", "warn": 1.0, "refuse": 2.0}
    good = {"mean": torch.zeros(3), "basis": torch.eye(2, 3), "coef": torch.ones(2),
            "outside": torch.ones(1)}
    gate = OodGate.from_parts(good, entry)
    assert gate is not None and tuple(gate.outside.shape) == (1,), gate
    scalar = OodGate.from_parts({**good, "outside": torch.tensor(1.0)}, entry)
    assert scalar is not None and tuple(scalar.outside.shape) == (1,), "a scalar outside is accepted"
    with pytest.raises(OodConfigError, match="lacks tensor"):
        OodGate.from_parts({"mean": torch.zeros(3)}, entry)
    with pytest.raises(OodConfigError, match="older dense ood.whitening"):
        OodGate.from_parts({"mean": torch.zeros(3), "whitening": torch.eye(3)}, entry)
    bad = {
        "ood.mean": {"mean": torch.zeros(3, 1)},
        r"ood.basis .* expected \(k, 3\)": {"basis": torch.eye(3, 4)},
        r"ood.basis .* k <= 3": {"basis": torch.zeros(4, 3), "coef": torch.zeros(4)},
        r"ood.coef .* expected \(2,\)": {"coef": torch.ones(3)},
        r"ood.outside .* expected \(1,\)": {"outside": torch.ones(2)},
    }
    for message, change in bad.items():
        with pytest.raises(OodConfigError, match=message):
            OodGate.from_parts({**good, **change}, entry)
    with pytest.raises(OodConfigError, match="warn <= refuse"):
        OodGate.from_parts(good, {**entry, "warn": 3.0})


def test_generated_non_radiographs_decode_as_valid_images() -> None:
    images = generate_non_radiographs(len(GENERATED_KINDS), seed=0, size=96)
    assert [k for k, _ in images] == list(GENERATED_KINDS), "one image of each kind, in order"
    for kind, png in images:
        decoded = decode_image(png, name=f"{kind}.png")  # must pass the app's decoder
        assert decoded.pixels.shape == (96, 96), f"{kind}: shape {decoded.pixels.shape}"
        assert float(decoded.pixels.std()) > 0.01, f"{kind}: should not be blank"
    again = generate_non_radiographs(3, seed=0, size=96)
    assert [p for _, p in again] == [p for _, p in images[:3]], "same seed, same images"


@pytest.fixture(scope="module")
def boxed_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A random-init 64 px checkpoint, an image folder of real radiographs and split CSVs.

    The test split's only image is an EMPTY file: decoding it would fail, so the CLI
    succeeding proves it never reads the test split.
    """
    root = tmp_path_factory.mktemp("ood")
    names = sorted(p.name for p in IMAGES.glob("*.png"))[:36]
    images = root / "images"
    images.mkdir()
    for name in names:
        (images / name).symlink_to(IMAGES / name)
    (images / "99999999_000.png").write_bytes(b"")
    splits = root / "run"
    splits.mkdir()
    cols = ["Image Index", "Patient ID", "Finding Labels"]
    rows = [(n, int(n[:8]), "No Finding") for n in names]
    pd.DataFrame(rows[:24], columns=cols).to_csv(splits / "train.csv", index=False)
    pd.DataFrame(rows[24:], columns=cols).to_csv(splits / "val.csv", index=False)
    pd.DataFrame([("99999999_000.png", 99999999, "No Finding")], columns=cols).to_csv(
        splits / "test.csv", index=False
    )
    checkpoint = write_random_init(root / "ckpt", seed=0, input_size=64)
    return checkpoint, images, splits


def test_cli_writes_a_usable_gate_into_the_checkpoint(boxed_run, capsys) -> None:
    checkpoint, images, splits = boxed_run
    before = load_checkpoint(checkpoint)
    report_path = checkpoint.parent / "ood_report.json"
    code = fit_ood.main([
        "--checkpoint", str(checkpoint), "--images", str(images), "--split-dir", str(splits),
        "--n-generated", "16", "--report", str(report_path),
    ])
    assert code == 0, f"CLI failed: {capsys.readouterr().err}"
    report = json.loads(report_path.read_text())
    print(f"\nOOD AUROC (random-init 64 px, 12 val radiographs vs 16 generated): "
          f"{report['validation_auroc']:.3f}")
    after = load_checkpoint(checkpoint)
    entry = after.config.ood
    assert entry["method"] == "mahalanobis" and entry["n_train"] == 24 and entry["n_val"] == 12, entry
    assert 0.0 <= entry["validation_auroc"] <= 1.0, f"AUROC out of range: {entry}"
    assert 0 < entry["warn"] <= entry["refuse"], f"levels out of order: {entry}"
    shapes = {k: tuple(v.shape) for k, v in after.extra_tensors.items()}
    assert shapes == {"mean": (2048,), "basis": (24, 2048), "coef": (24,), "outside": (1,)}, (
        f"compact whitening stored (k = n_train = 24), no dense matrix: {shapes}"
    )
    for key, value in before.model.state_dict().items():
        assert torch.equal(value, after.model.state_dict()[key]), f"weight {key} changed"
    from safetensors import safe_open

    with safe_open(str(checkpoint / "model.safetensors"), framework="pt") as handle:
        assert handle.get_slice("fc.weight").get_dtype() == "F16", "weights keep their fp16 dtype"

    # the app-side gate on a validation radiograph reproduces the training-side scores
    gate = OodGate.from_checkpoint(after)
    val_names = pd.read_csv(splits / "val.csv")["Image Index"].tolist()
    features = extract_features(after.model, [images / n for n in val_names], after.config.preprocess)
    app_scores = gate.scores(torch.from_numpy(features)).numpy()
    assert np.median(app_scores) == pytest.approx(report["val_median_score"], rel=1e-4), (
        "the app's scores should equal those the levels were chosen on"
    )
    warned = int((app_scores > entry["warn"]).sum())
    assert warned == 1, f"warn = 99th percentile of 12 scores: only the highest exceeds it, got {warned}"


def test_cli_reports_a_bad_split_dir(tmp_path: Path, capsys) -> None:
    checkpoint = write_random_init(tmp_path / "ckpt", input_size=64)
    code = fit_ood.main(["--checkpoint", str(checkpoint), "--images", str(IMAGES),
                     "--split-dir", str(tmp_path)])
    assert code == 2, "a folder without split files is an error, exit code 2"
    assert "split file not found" in capsys.readouterr().err, "the message names the problem"


def test_refusal_is_reported_like_any_unusable_input() -> None:
    from xray_app.ood import OutOfDistributionError
    from xray_app.preprocess import ImageInputError

    gate = _identity_gate(2)
    result = gate.assess(torch.tensor([[5.0, 0.0]]))[0]
    error = OutOfDistributionError("cat.jpg", result.message)
    assert isinstance(error, ImageInputError), "the app's input-error handling applies"
    assert str(error).startswith("cat.jpg: This image does not look like a chest radiograph"), str(error)


def test_decoded_arrays_give_the_same_features_as_files(tmp_path: Path) -> None:
    # training may hold images as decoded arrays (the uint8 cache): same features as files
    checkpoint = load_checkpoint(write_random_init(tmp_path / "ckpt", input_size=64))
    path = sorted(IMAGES.glob("*.png"))[0]
    gray = np.asarray(decode_image(path).pixels)
    config = checkpoint.config.preprocess
    from_file = extract_features(checkpoint.model, [path], config)
    from_array = extract_features(checkpoint.model, [gray], config)
    assert from_file.shape == (1, 2048), from_file.shape
    assert np.allclose(from_file, from_array, rtol=1e-4, atol=1e-5), "one preprocessing path"
