"""The network and its checkpoint format (model.safetensors + config.json)."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from tests.paths import REPO_ROOT
from xray_app.labels import LABELS
from xray_app.model import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    ChestXrayResNet,
    ModelConfig,
    PretrainedWeightsUnavailable,
    build_model,
    load_checkpoint,
    save_checkpoint,
    sha256_of,
    write_random_init,
)

SEED = 3


def seeded_model(seed: int = SEED) -> ChestXrayResNet:
    """The model ``write_random_init(seed=seed)`` writes, rebuilt in memory."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model()


def small_batch(n: int = 2, size: int = 64) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def cli_checkpoint(tmp_path_factory) -> Path:
    """A random-init checkpoint written by the real entry point."""
    out = tmp_path_factory.mktemp("random_init") / "ckpt"
    result = subprocess.run(
        [sys.executable, "-m", "xray_app.model", "--random-init", str(out), "--seed", str(SEED)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert result.returncode == 0, f"expected exit 0, got {result.returncode}: {result.stderr}"
    assert "UNTRAINED" in result.stderr, f"expected the CLI to say the weights are untrained: {result.stderr}"
    return out


@pytest.fixture(scope="module")
def model() -> ChestXrayResNet:
    """One randomly initialised network (with dropout, in eval mode) shared by read-only tests."""
    return build_model(dropout=0.2).eval()


def copy_checkpoint(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


# --------------------------------------------------------------------------- network
def test_head_is_a_single_linear_after_global_average_pooling(model):
    children = [name for name, _ in model.named_children()]
    assert children[-3:] == ["layer4", "dropout", "fc"], f"expected layer4 -> dropout -> fc, got {children}"
    assert isinstance(model.fc, nn.Linear) and (model.fc.in_features, model.fc.out_features) == (2048, 15), (
        f"expected Linear(2048, 15), got {model.fc}"
    )
    x = small_batch()
    with torch.no_grad():
        features = model.forward_features(x)
        by_hand = features.mean(dim=(2, 3)) @ model.fc.weight.T + model.fc.bias
        logits = model(x)
    assert torch.allclose(logits, by_hand, atol=1e-5), "expected logits = fc(global average of layer4)"


def test_output_is_n_by_15_logits(model):
    with torch.no_grad():
        logits = model(small_batch(n=3))
    assert logits.shape == (3, 15) and logits.dtype == torch.float32, (
        f"expected (3, 15) float32, got {tuple(logits.shape)} {logits.dtype}"
    )


def test_parameter_names_match_torchvision_resnet50(model):
    ours = set(model.state_dict())
    theirs = set(torchvision.models.resnet50(weights=None).state_dict())
    assert ours == theirs, f"expected torchvision's names; differ: {sorted(ours ^ theirs)[:5]}"


def test_local_torchvision_state_dict_loads_as_the_trunk(tmp_path):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        source = torchvision.models.resnet50(weights=None)
    path = tmp_path / "resnet50_imagenet.pth"
    torch.save(source.state_dict(), path)
    model = build_model(pretrained=path)
    mismatched = [
        key for key, value in source.state_dict().items()
        if not key.startswith("fc.") and not torch.equal(value, model.state_dict()[key])
    ]  # fmt: skip
    assert not mismatched, f"expected every trunk tensor loaded, differ: {mismatched[:3]}"
    assert model.fc.weight.shape == (15, 2048), "expected a fresh 15-output head, not the 1000-class fc"


def test_local_file_that_is_not_a_resnet50_is_refused(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"conv1.weight": torch.zeros(1)}, str(path))
    with pytest.raises(PretrainedWeightsUnavailable, match="not a ResNet-50"):
        build_model(pretrained=path)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a pickle at all")
    with pytest.raises(PretrainedWeightsUnavailable, match="garbage.pth"):
        build_model(pretrained=garbage)


@pytest.fixture
def empty_torch_hub(tmp_path, monkeypatch) -> Path:
    """torch.hub's cache redirected to an empty folder, and every download failing."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return tmp_path


def test_imagenet_offline_names_the_three_alternatives(empty_torch_hub):
    with pytest.raises(PretrainedWeightsUnavailable) as caught:
        build_model(pretrained="imagenet")
    message = str(caught.value)
    for hint in ("checkpoints", "--pretrained PATH", "--pretrained none"):
        assert hint in message, f"expected the message to suggest {hint!r}: {message}"


class _Payload:
    """Unpickling this creates a directory: proof that arbitrary code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_cached_imagenet_file_is_read_without_running_pickled_code(empty_torch_hub, tmp_path):
    url = torchvision.models.ResNet50_Weights.IMAGENET1K_V2.url
    cached = empty_torch_hub / "checkpoints" / url.rsplit("/", 1)[-1]
    cached.parent.mkdir()
    marker = tmp_path / "code_ran"
    torch.save({"conv1.weight": _Payload(marker)}, cached)
    with pytest.raises(PretrainedWeightsUnavailable):
        build_model(pretrained="imagenet")
    assert not marker.exists(), "expected the downloaded file read with weights_only=True (no code run)"


# --------------------------------------------------------------------------- checkpoints
def test_random_init_cli_writes_an_untrained_checkpoint(cli_checkpoint):
    config = json.loads((cli_checkpoint / CONFIG_FILE).read_text())
    assert config["trained"] is False, f"expected trained=false, got {config['trained']}"
    assert config["labels"] == list(LABELS), "expected the 15 labels in logit order"
    assert "NOT TRAINED" in config["provenance"]["data"], f"expected provenance to say so: {config['provenance']}"
    for key in ("architecture", "input_size", "mean", "std", "thresholds"):
        assert key in config, f"expected {key!r} in config.json"


def test_weights_are_stored_in_fp16_safetensors(cli_checkpoint):
    with safe_open(str(cli_checkpoint / WEIGHTS_FILE), framework="pt") as handle:
        dtype = handle.get_tensor("fc.weight").dtype
        count = handle.get_tensor("bn1.num_batches_tracked").dtype
    assert dtype == torch.float16, f"expected fp16 weights, got {dtype}"
    assert count == torch.int64, f"expected integer buffers kept as int64, got {count}"


def test_round_trip_gives_the_same_logits_within_fp16_tolerance(cli_checkpoint):
    original = seeded_model().eval()
    loaded = load_checkpoint(cli_checkpoint)
    x = small_batch()
    with torch.no_grad():
        before, after = original(x), loaded.model(x)
    error = float((before - after).abs().max())
    scale = float(before.abs().max())
    assert error <= 1e-2 * max(scale, 1.0), f"expected logits equal within fp16 rounding, error {error} at scale {scale}"
    assert not loaded.model.training, "expected the model returned in eval mode"
    assert loaded.config.trained is False, "expected the config read back"


def test_loading_never_unpickles(cli_checkpoint, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("expected no unpickling while loading a checkpoint")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    loaded = load_checkpoint(cli_checkpoint)
    assert loaded.model.fc.out_features == 15, "expected a 15-output model loaded from safetensors"


def test_matching_sha256_loads_and_a_wrong_one_is_refused(cli_checkpoint):
    sha = sha256_of(cli_checkpoint / WEIGHTS_FILE)
    assert load_checkpoint(cli_checkpoint, expected_sha256=sha.upper()).sha256 == sha, (
        "expected the pinned sha256 to be accepted (case-insensitive)"
    )
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(cli_checkpoint, expected_sha256="0" * 64)


def test_label_order_mismatch_is_refused(cli_checkpoint, tmp_path):
    ckpt = copy_checkpoint(cli_checkpoint, tmp_path / "swapped")
    config = json.loads((ckpt / CONFIG_FILE).read_text())
    config["labels"][2], config["labels"][3] = config["labels"][3], config["labels"][2]
    (ckpt / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="labels"):
        load_checkpoint(ckpt)


def test_config_with_14_labels_is_refused(cli_checkpoint, tmp_path):
    ckpt = copy_checkpoint(cli_checkpoint, tmp_path / "fourteen")
    config = json.loads((ckpt / CONFIG_FILE).read_text())
    config["labels"], config["thresholds"] = config["labels"][:14], config["thresholds"][:14]
    (ckpt / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="labels"):
        load_checkpoint(ckpt)


def test_head_with_14_outputs_is_refused(cli_checkpoint, tmp_path):
    ckpt = copy_checkpoint(cli_checkpoint, tmp_path / "small_head")
    tensors = load_file(str(ckpt / WEIGHTS_FILE))
    tensors["fc.weight"], tensors["fc.bias"] = tensors["fc.weight"][:14].clone(), tensors["fc.bias"][:14].clone()
    save_file(tensors, str(ckpt / WEIGHTS_FILE))
    with pytest.raises(CheckpointError, match="head has 14 outputs"):
        load_checkpoint(ckpt)


def test_saving_a_head_that_does_not_match_the_labels_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="14 outputs"):
        save_checkpoint(build_model(num_classes=14), ModelConfig(), tmp_path)


def test_corrupt_safetensors_is_a_checkpoint_error(cli_checkpoint, tmp_path):
    ckpt = copy_checkpoint(cli_checkpoint, tmp_path / "corrupt")
    (ckpt / WEIGHTS_FILE).write_bytes((ckpt / WEIGHTS_FILE).read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=WEIGHTS_FILE):
        load_checkpoint(ckpt)


def test_weight_beyond_fp16_range_is_refused_instead_of_saved_as_inf(model, tmp_path):
    kept = model.fc.bias[0].item()
    try:
        with torch.no_grad():
            model.fc.bias[0] = 1e6  # fp16's largest finite value is 65504
        with pytest.raises(CheckpointError, match="not finite"):
            save_checkpoint(model, ModelConfig(), tmp_path)
    finally:
        with torch.no_grad():
            model.fc.bias[0] = kept
    assert not (tmp_path / WEIGHTS_FILE).exists(), "expected nothing written for a refused save"


def test_config_round_trips_thresholds_calibration_and_provenance(tmp_path):
    config = ModelConfig(
        thresholds=tuple(0.1 + 0.05 * i for i in range(15)),
        calibration={"method": "platt", "scale": [1.5] * 15, "bias": [-0.2] * 15},
        trained=True,
        provenance={"data": "NIH ChestX-ray14", "commit": "abc"},
    )
    from xray_app.model import read_config, write_config

    write_config(config, tmp_path / CONFIG_FILE)
    assert read_config(tmp_path / CONFIG_FILE) == config, "expected config.json to round-trip exactly"


@pytest.mark.parametrize(
    "text, problem",
    [("[1, 2]", "JSON object"), ('{"labels": null}', "not a valid model config"),
     ('{"format_version": 99}', "newer"), ("{", "not valid JSON")],
)  # fmt: skip
def test_bad_config_json_is_a_checkpoint_error(tmp_path, text, problem):
    from xray_app.model import read_config

    (tmp_path / CONFIG_FILE).write_text(text)
    with pytest.raises(CheckpointError, match=problem):
        read_config(tmp_path / CONFIG_FILE)


def test_the_tiny_network_is_chosen_by_name_and_round_trips_through_the_checkpoint_format(tmp_path):
    """Pipeline tests train the same layout at a fraction of the cost: the architecture is
    named in config.json and rebuilt from it on load."""
    from xray_app.architectures import TINY_ARCHITECTURE

    directory = write_random_init(tmp_path / "tiny", input_size=64, architecture=TINY_ARCHITECTURE)
    loaded = load_checkpoint(directory)
    assert loaded.config.architecture == TINY_ARCHITECTURE, "expected the architecture named in config.json"
    assert loaded.model.fc.in_features == 64, f"expected 64 features, got {loaded.model.fc.in_features}"
    params = sum(p.numel() for p in loaded.model.parameters())
    assert params < 100_000, f"expected a tiny network, got {params} parameters"
    with torch.inference_mode():
        features = loaded.model.forward_features(torch.zeros(1, 3, 64, 64))
    assert features.shape == (1, 64, 2, 2), f"expected ResNet-50's 32x downsampling, got {features.shape}"


def test_an_unknown_architecture_is_refused_on_load(tmp_path):
    directory = write_random_init(tmp_path / "ckpt", input_size=64, architecture="tiny-resnet")
    config = json.loads((directory / "config.json").read_text())
    config["architecture"] = "vgg16"
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="unsupported architecture 'vgg16'"):
        load_checkpoint(directory)
