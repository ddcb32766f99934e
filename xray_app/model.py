"""The network, and its checkpoint format: ``model.safetensors`` beside ``config.json``.

The network is torchvision's ResNet-50 whose 1000-class ``fc`` is replaced by one
``Linear(2048, 15)`` after global average pooling (dropout allowed before it).  Keeping
the head a single linear layer is what makes :mod:`xray_app.explain`'s all-class
Grad-CAM exact: the gradient of logit ``c`` w.r.t. the last block's activations is
``fc.weight[c] / (h * w)`` everywhere, so Grad-CAM equals the class activation map.

A checkpoint is two files.  ``model.safetensors`` holds tensors only (never a pickle);
``config.json`` holds what the numbers mean: architecture, label names in logit order,
input size, normalisation, whether scores average each image with its mirror image,
per-class thresholds and calibration (fitted on scores made the same way), the
out-of-distribution statistics' description and provenance (data, split, commit, date,
metrics).

``python -m xray_app.model --random-init DIR`` writes an untrained checkpoint for tests.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torchvision
from safetensors.torch import load_file, save_file
from torch import nn

from xray_app.architectures import ARCHITECTURE, ARCHITECTURES
from xray_app.labels import LABELS, NUM_LABELS
from xray_app.population import PopulationError, PriorShift
from xray_app.preprocess import (
    DEFAULT_INPUT_SIZE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    PreprocessConfig,
)

FEATURE_DIM = 2048
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT_VERSION = 3  # 2: mirror_average; 3: population, operating_points
OOD_TENSOR_PREFIX = "ood."  # extra (non-parameter) tensors stored in model.safetensors


class CheckpointError(RuntimeError):
    """A checkpoint is missing, inconsistent or fails its integrity check."""


class PretrainedWeightsUnavailable(RuntimeError):
    """ImageNet weights were asked for but cannot be downloaded or found."""


# --------------------------------------------------------------------------- network
class ChestXrayResNet(nn.Module):
    """A ResNet trunk + ``Dropout`` + ``Linear(features, num_classes)``; returns logits.

    ``architecture`` ``"resnet50"`` (the product): torchvision's ResNet-50 trunk, 2048
    features, parameter names as torchvision's ``resnet50`` so ImageNet state dicts load
    as is.  ``"tiny-resnet"``: the same layout (stem, ``layer1``..``layer4``, 32x
    downsampling, global average pool, one linear head) at widths 8-64, for tests of
    the training pipeline that need a network, not this network.
    """

    def __init__(self, num_classes: int = NUM_LABELS, dropout: float = 0.0,
                 architecture: str = ARCHITECTURE) -> None:
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise CheckpointError(f"unsupported architecture {architecture!r}; known: {ARCHITECTURES}")
        self.architecture = architecture
        trunk = torchvision.models.resnet50(weights=None) if architecture == ARCHITECTURE else _tiny_trunk()
        self.conv1, self.bn1, self.relu, self.maxpool = (
            trunk.conv1,
            trunk.bn1,
            trunk.relu,
            trunk.maxpool,
        )
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            trunk.layer1,
            trunk.layer2,
            trunk.layer3,
            trunk.layer4,
        )
        self.dropout = nn.Dropout(dropout)
        features = FEATURE_DIM if architecture == ARCHITECTURE else _TinyTrunk.features
        self.fc = nn.Linear(features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, S, S)`` normalised images -> ``(N, F, S/32, S/32)`` layer4 activations
        (F = 2048 for ResNet-50)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        """``(N, 2048, h, w)`` -> ``(N, 2048)`` global average (the penultimate features)."""
        return features.mean(dim=(2, 3))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """``(N, 2048, h, w)`` layer4 activations -> ``(N, num_classes)`` logits."""
        return self.fc(self.dropout(self.pool(features)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class _TinyTrunk(nn.Module):
    """Stem and four stages with ResNet-50's names and strides, at widths 8, 16, 32, 64."""

    features = 64

    def __init__(self) -> None:
        super().__init__()

        def stage(inputs: int, outputs: int, stride: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False),
                                 nn.BatchNorm2d(outputs), nn.ReLU(inplace=True))

        self.conv1 = nn.Conv2d(3, 8, 3, 2, 1, bias=False)
        self.bn1, self.relu, self.maxpool = nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
        self.layer1, self.layer2 = stage(8, 8, 1), stage(8, 16, 2)
        self.layer3, self.layer4 = stage(16, 32, 2), stage(32, 64, 2)


def _tiny_trunk() -> _TinyTrunk:
    return _TinyTrunk()


# --------------------------------------------------------------------------- mirror average
def with_mirror_images(batch: torch.Tensor) -> torch.Tensor:
    """``(N, ...)`` images -> ``(2N, ...)``: the images, then their left-right mirror images."""
    return torch.cat([batch, batch.flip(-1)])


def average_with_mirror(outputs: torch.Tensor, *, spatial: bool = False) -> torch.Tensor:
    """``(2N, ...)`` outputs for :func:`with_mirror_images`'s batch -> ``(N, ...)`` means.

    ``spatial=True``: the last axis is image width (maps), so the mirror images' maps are
    flipped back before averaging and both halves describe the same side of the patient.
    """
    if outputs.shape[0] % 2:
        raise ValueError(f"expected an even batch (images, then mirrors), got {outputs.shape[0]}")
    plain, mirrored = outputs.chunk(2)
    return (plain + (mirrored.flip(-1) if spatial else mirrored)) / 2


def build_model(
    *, num_classes: int = NUM_LABELS, dropout: float = 0.0, pretrained: str | Path | None = None,
    architecture: str = ARCHITECTURE,
) -> ChestXrayResNet:
    """Build the network (``architecture``: see :class:`ChestXrayResNet`).

    ``pretrained``: ``None``/``"none"`` = random initialisation; ``"imagenet"`` =
    torchvision's IMAGENET1K_V2 trunk (downloaded once into torch's cache; offline
    without a cached copy raises :class:`PretrainedWeightsUnavailable`); a path = a local
    state dict (``.safetensors``, or a torchvision ``.pth`` read with ``weights_only``), or a
    training run's ``last.ckpt`` (its raw weights: to continue training under a new schedule).
    The classification head is always freshly initialised unless the file holds one of
    the right shape.
    """
    model = ChestXrayResNet(num_classes=num_classes, dropout=dropout, architecture=architecture)
    if pretrained is None or str(pretrained).lower() == "none":
        return model
    if str(pretrained).lower() == "imagenet":
        if architecture != ARCHITECTURE:
            raise PretrainedWeightsUnavailable(f"ImageNet weights exist for {ARCHITECTURE} only, "
                                               f"not {architecture}")
        state = _imagenet_state_dict()
    else:
        state = _read_state_dict(Path(pretrained))
    _load_trunk(model, state, source=str(pretrained))
    return model


def _imagenet_state_dict() -> dict[str, torch.Tensor]:
    weights = torchvision.models.ResNet50_Weights.IMAGENET1K_V2
    try:
        # weights_only: the file comes over the network, so only the restricted unpickler
        # (tensors and plain containers) may read it; torch.hub's default is False
        return weights.get_state_dict(progress=False, check_hash=True, weights_only=True)
    except (OSError, RuntimeError, pickle.UnpicklingError) as error:  # URLError is an OSError
        raise PretrainedWeightsUnavailable(
            f"cannot download ImageNet weights ({weights.url}): {error}. Offline, either put "
            f"the file in torch's cache ({torch.hub.get_dir()}/checkpoints/), pass a local "
            "state dict with --pretrained PATH, or train from random initialisation with "
            "--pretrained none"
        ) from None


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise PretrainedWeightsUnavailable(f"pretrained weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # safetensors, pickle and zip errors have no common base
        raise PretrainedWeightsUnavailable(
            f"{path} cannot be read as a state dict ({type(error).__name__}: {error})"
        ) from None
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    if isinstance(state, Mapping) and "model" in state and "optimizer" in state:
        state = state["model"]  # a training run's last.ckpt: its (raw) weights
    if not isinstance(state, Mapping):
        raise PretrainedWeightsUnavailable(f"{path} does not hold a state dict")
    return dict(state)


def _load_trunk(model: ChestXrayResNet, state: Mapping[str, torch.Tensor], source: str) -> None:
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    trunk_keys = [k for k in own if not k.startswith("fc.")]
    missing = [k for k in trunk_keys if k not in usable]
    if missing:
        raise PretrainedWeightsUnavailable(
            f"{source} is not a ResNet-50 state dict: {len(missing)} trunk tensors missing "
            f"or of the wrong shape (first: {missing[0]})"
        )
    model.load_state_dict(usable, strict=False)


# --------------------------------------------------------------------------- config
@dataclass(frozen=True)
class ModelConfig:
    """What a checkpoint's numbers mean; serialised as ``config.json``.

    ``thresholds[c]`` is the decision threshold of class ``c`` on the (calibrated)
    probability.  ``calibration`` is ``None`` or ``{"method": "platt"|"temperature",
    "scale": [C], "bias": [C]}`` meaning ``p = sigmoid(scale * logit + bias)``.
    ``trained`` is False for random-init checkpoints: every output made with one says so.
    ``mirror_average``: a logit is the mean of the logits of the image and of its
    left-right mirror image (:func:`xray_app.scoring.score_batch`); thresholds and calibration are fitted on
    logits made this way.
    """

    architecture: str = ARCHITECTURE
    labels: tuple[str, ...] = LABELS
    input_size: int = DEFAULT_INPUT_SIZE
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    dropout: float = 0.0
    mirror_average: bool = False
    thresholds: tuple[float, ...] = (0.5,) * NUM_LABELS
    calibration: dict[str, Any] | None = None
    trained: bool = False
    name: str = "chest-xray-resnet50"
    provenance: dict[str, Any] = field(default_factory=dict)
    ood: dict[str, Any] | None = None
    gate: dict[str, Any] | None = None  # the input gate's view head (xray_app.gate)
    # The population the probabilities refer to, and the sample they were calibrated on
    # (xray_app.population); thresholds are on that population's probability scale.
    population: dict[str, Any] | None = None
    # How the thresholds were chosen and what they did out of fold (training.calibrate).
    operating_points: dict[str, Any] | None = None
    hub: dict[str, Any] | None = None
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise CheckpointError(f"unsupported architecture {self.architecture!r}; known: {ARCHITECTURES}")
        if self.format_version > FORMAT_VERSION:
            raise CheckpointError(
                f"checkpoint format version {self.format_version} is newer than this code "
                f"understands ({FORMAT_VERSION}); update the app"
            )
        if not isinstance(self.mirror_average, bool):
            raise CheckpointError(f"mirror_average must be true or false, got {self.mirror_average!r}")
        if len(self.thresholds) != len(self.labels):
            raise CheckpointError(
                f"{len(self.thresholds)} thresholds for {len(self.labels)} labels"
            )
        if not all(0.0 < t < 1.0 for t in self.thresholds):
            raise CheckpointError(f"thresholds must lie in (0, 1), got {self.thresholds}")
        if self.calibration is not None:
            for key in ("scale", "bias"):
                values = self.calibration.get(key)
                if values is None or len(values) != len(self.labels):
                    raise CheckpointError(f"calibration[{key!r}] must have {len(self.labels)} values")
        if self.population is not None:
            try:
                PriorShift.from_dict(self.population, self.labels)
            except PopulationError as error:
                raise CheckpointError(f"config.json 'population': {error}") from None

    @property
    def preprocess(self) -> PreprocessConfig:
        return PreprocessConfig(input_size=self.input_size, mean=self.mean, std=self.std)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("labels", "mean", "std", "thresholds"):
            data[key] = list(data[key])
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise CheckpointError(f"config.json has unknown keys: {sorted(unknown)}")
        values = dict(data)
        for key in ("labels", "mean", "std", "thresholds"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)

    def with_updates(self, **changes: Any) -> ModelConfig:
        return replace(self, **changes)


def read_config(path: Path) -> ModelConfig:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object, not {type(data).__name__}")
    try:
        return ModelConfig.from_dict(data)
    except (TypeError, ValueError) as error:  # wrong value types, e.g. "labels": null
        raise CheckpointError(f"{path} is not a valid model config: {error}") from None


def write_config(config: ModelConfig, path: Path) -> None:
    """Write ``config.json`` atomically (write a temporary file, then rename), in this
    code's format version whatever version the config was read from."""
    current = config.with_updates(format_version=FORMAT_VERSION)
    _atomic_write_text(Path(path), json.dumps(current.to_dict(), indent=2) + "\n")


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as tmp:
        tmp.write(text)
    os.replace(tmp.name, path)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- save/load
def save_checkpoint(
    model: ChestXrayResNet,
    config: ModelConfig,
    directory: str | Path,
    *,
    dtype: torch.dtype = torch.float16,
    extra_tensors: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``model.safetensors`` (floating tensors cast to ``dtype``) and ``config.json``.

    ``extra_tensors`` (e.g. out-of-distribution statistics) are stored under the
    ``ood.`` prefix in float32.  Returns the directory.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if model.fc.out_features != len(config.labels):
        raise CheckpointError(
            f"head has {model.fc.out_features} outputs but config lists {len(config.labels)} labels"
        )
    tensors = {
        key: (value.to(dtype) if value.is_floating_point() else value).detach().cpu().contiguous()
        for key, value in model.state_dict().items()
    }
    overflowed = [key for key, value in tensors.items() if value.is_floating_point()
                  and not torch.isfinite(value).all()]
    if overflowed:  # e.g. a weight beyond fp16's 65504: the file would silently hold inf
        raise CheckpointError(
            f"{len(overflowed)} tensors are not finite in {dtype} (first: {overflowed[0]}); "
            "save in float32 or fix the model"
        )
    for key, value in (extra_tensors or {}).items():
        tensors[f"{OOD_TENSOR_PREFIX}{key}"] = value.detach().cpu().float().contiguous()
    weights_path = directory / WEIGHTS_FILE
    tmp = weights_path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt", "labels": ",".join(config.labels)})
    os.replace(tmp, weights_path)
    write_config(config, directory / CONFIG_FILE)
    return directory


def save_checkpoint_atomically(model: ChestXrayResNet, config: ModelConfig, directory: str | Path) -> Path:
    """:func:`save_checkpoint` into a staging folder beside ``directory``, then swapped in
    with renames, so ``directory`` always holds one whole checkpoint (a run killed while
    exporting leaves the previous one).  Returns ``directory``."""
    final = Path(directory)
    staging, old = final.with_name(final.name + ".tmp"), final.with_name(final.name + ".old")
    save_checkpoint(model, config, staging)
    if final.exists():
        os.replace(final, old)
    os.replace(staging, final)
    if old.exists():
        for item in old.iterdir():
            item.unlink()
        old.rmdir()
    return final


@dataclass
class LoadedCheckpoint:
    model: ChestXrayResNet
    config: ModelConfig
    sha256: str
    extra_tensors: dict[str, torch.Tensor]
    directory: Path


def load_checkpoint(
    directory: str | Path,
    *,
    expected_sha256: str | None = None,
    device: str | torch.device = "cpu",
    weights_path: str | Path | None = None,
) -> LoadedCheckpoint:
    """Load a checkpoint directory (or ``weights_path`` + the ``config.json`` in ``directory``).

    Checks the sha256 of ``model.safetensors`` when ``expected_sha256`` is given, that the
    labels are this project's 15 in logit order, and that the head matches them.
    The model is returned in eval mode, float32, on ``device``.
    """
    directory = Path(directory)
    config = read_config(directory / CONFIG_FILE)
    weights_path = Path(weights_path) if weights_path else directory / WEIGHTS_FILE
    if not weights_path.is_file():
        raise CheckpointError(f"{weights_path} not found")
    sha = sha256_of(weights_path)
    if expected_sha256 and sha != expected_sha256.lower():
        raise CheckpointError(
            f"{weights_path} has sha256 {sha}, expected {expected_sha256}: refusing to load "
            "weights that differ from the pinned ones"
        )
    if tuple(config.labels) != LABELS:
        raise CheckpointError(
            f"{directory / CONFIG_FILE} lists labels {list(config.labels)}; this app expects "
            f"{list(LABELS)} in that order"
        )
    try:
        tensors = load_file(str(weights_path))  # safetensors: tensors only, never a pickle
    except Exception as error:  # SafetensorError (corrupt header, truncated file) and OSError
        raise CheckpointError(
            f"{weights_path} is not a readable safetensors file ({type(error).__name__}: {error})"
        ) from None
    extra = {
        key[len(OOD_TENSOR_PREFIX) :]: value
        for key, value in tensors.items()
        if key.startswith(OOD_TENSOR_PREFIX)
    }
    state = {k: v for k, v in tensors.items() if not k.startswith(OOD_TENSOR_PREFIX)}
    head = state.get("fc.weight")
    if head is None or head.shape[0] != len(config.labels):
        rows = None if head is None else head.shape[0]
        raise CheckpointError(
            f"{weights_path}: head has {rows} outputs but config.json lists "
            f"{len(config.labels)} labels"
        )
    model = ChestXrayResNet(num_classes=len(config.labels), dropout=config.dropout,
                            architecture=config.architecture)
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{weights_path} does not match the architecture: {error}") from None
    model.eval().to(device)
    return LoadedCheckpoint(model, config, sha, extra, directory)


def git_commit(repo: Path | None = None) -> str | None:
    """Current git commit of the code (for provenance), or None outside a checkout."""
    import subprocess

    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=repo or Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_random_init(directory: str | Path, *, seed: int = 0, input_size: int = 224,
                      architecture: str = ARCHITECTURE) -> Path:
    """Write an UNTRAINED checkpoint in the real format (for tests and development)."""
    with torch.random.fork_rng(devices=[]):  # seed locally, leave the caller's RNG alone
        torch.manual_seed(seed)
        model = build_model(architecture=architecture)
    config = ModelConfig(
        architecture=architecture,
        trained=False,
        input_size=input_size,
        name="untrained-random-init",
        provenance={
            "data": "none: random initialisation, NOT TRAINED; outputs are meaningless",
            "seed": seed,
            "commit": git_commit(),
            "date": utc_now(),
        },
    )
    return save_checkpoint(model, config, directory)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xray_app.model", description=__doc__.split("\n")[0])
    parser.add_argument("--random-init", metavar="DIR", required=True, type=Path,
                        help="write an untrained, randomly initialised checkpoint to DIR")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--input-size", type=int, default=224)
    args = parser.parse_args(argv)
    out = write_random_init(args.random_init, seed=args.seed, input_size=args.input_size)
    print(f"wrote an UNTRAINED random-init checkpoint to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
