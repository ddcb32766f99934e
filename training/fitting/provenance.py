"""Provenance of a trained checkpoint, written by the code that trained it.

:func:`training_provenance` fills a :class:`TrainingProvenance` from the run's
configuration, data and measured metrics; ``to_dict()`` is what ``config.json``'s
``provenance`` holds (and what the model card and the app read). Nothing here is typed
by hand, and no machine-local path is recorded: files are named by their base name,
folders by what they hold, and the data by what it is ("1,753 NIH ChestX-ray14
radiographs from 1,357 patients, a public subset").
"""

from __future__ import annotations

import hashlib
import math
import os
import platform
import shlex
import sys
from dataclasses import asdict, dataclass
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

import torch

from xray_app.model import git_commit, utc_now

if TYPE_CHECKING:
    from training.data.run_data import RunData
    from training.data.splits import Splits
    from training.fitting.config import TrainConfig
    from training.fitting.runtime import Runtime

NIH_IMAGES = 112_120  # radiographs in NIH ChestX-ray14
# recipe fields that hold a file or folder of the machine that trained: recorded by name
_PATH_FIELDS = {"metadata", "images", "source_folders", "cache", "splits", "split_lists", "teacher",
                "pretrained"}
_DROPPED_FIELDS = {"out", "resume"}  # where the run lived, not how it was made


def public_name(value: Any) -> Any:
    """A path's base name (``../shared/data/x.csv`` -> ``x.csv``); lists element-wise; other
    values as they are.  ``none``/``imagenet`` and the like stay as given."""
    if isinstance(value, list | tuple):
        return [public_name(item) for item in value]
    if isinstance(value, str) and ("/" in value or os.sep in value):
        return PurePath(value).name
    return value


STAGING_SUFFIX = ".tmp"  # a stage writes OUT.tmp beside OUT and renames it into place


def public_command(module: str, argv: Any) -> str:
    """The command line a stage ran, for records people rerun: ``python -m MODULE ARGS``,
    shell-quoted (``shlex.join``), every path reduced to its base name and a staging
    folder named as the folder it becomes (``weights.tmp`` -> ``weights``)."""
    return shlex.join(["python", "-m", module, *(public_folder(arg) for arg in argv)])


def public_folder(path: Any) -> str:
    """A path's base name, a staging folder named as the folder it becomes."""
    name = str(public_name(str(path)))
    return name[: -len(STAGING_SUFFIX)] if name.endswith(STAGING_SUFFIX) else name


def invoked_command() -> str | None:
    """The ``python -m training.X ...`` command of this process, as :func:`public_command`
    writes it; None when the process was not started that way (e.g. under pytest)."""
    argv = list(getattr(sys, "orig_argv", []))
    if "-m" not in argv[:-1] or not argv[argv.index("-m") + 1].startswith("training."):
        return None
    at = argv.index("-m")
    return public_command(argv[at + 1], argv[at + 2:])


def public_recipe(cfg: TrainConfig) -> dict[str, Any]:
    """``cfg`` as a nested mapping, paths reduced to base names, run locations dropped."""
    def clean(values: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for key, value in values.items():
            if key in _DROPPED_FIELDS:
                continue
            if isinstance(value, dict):
                out[key] = clean(value)
            else:
                out[key] = public_name(value) if key in _PATH_FIELDS else value
        return out

    return clean(cfg.to_dict())


def describe_data(images: int, patients: int) -> str:
    """What the data is, in words a clinician reads in the app's banner."""
    if images >= NIH_IMAGES:
        return f"NIH ChestX-ray14: {images:,} radiographs from {patients:,} patients"
    return f"{images:,} NIH ChestX-ray14 radiographs from {patients:,} patients, a public subset"


def split_fingerprint(splits: Splits) -> str:
    """sha256 of the sorted ``split,image`` lines: checks that a set of split files is the
    one a model was trained with, without recording where the files were."""
    lines = sorted(f"{name},{image}" for name, part in splits.items() for image in part["Image Index"])
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def describe_hardware(runtime: Runtime) -> str:
    """The device, torch version and arithmetic of the run, e.g. ``"cpu: 2 cores, x86_64,
    torch 2.14.1, bf16 autocast, 1 process"``."""
    if runtime.device.type == "cuda":
        device = f"cuda: {torch.cuda.get_device_name(runtime.device)}"
    else:
        device = f"cpu: {os.cpu_count()} cores, {platform.machine()}"
    precision = {None: "float32"}.get(runtime.amp_dtype, f"{str(runtime.amp_dtype).removeprefix('torch.')} autocast")
    layout = ", channels-last" if runtime.channels_last else ""
    return (f"{device}, torch {torch.__version__.split('+')[0]}, {precision}{layout}, "
            f"{runtime.world_size} process{'es' if runtime.world_size > 1 else ''}, "
            f"{torch.get_num_threads()} thread{'s' if torch.get_num_threads() > 1 else ''} each")


def describe_selection(cfg: TrainConfig, epoch: int) -> str:
    """Which epoch was exported, and why."""
    if not cfg.validate:
        return f"the last of {cfg.epochs} epochs, no validation (nothing chosen on any data)"
    return (f"epoch {epoch} of at most {cfg.epochs}: the highest validation mean AUROC over the "
            "14 pathologies so far")


def describe_pretrained(value: str) -> str:
    if value.lower() == "none":
        return "none: random initialisation"
    if value.lower() == "imagenet":
        return "ImageNet (torchvision ResNet50_Weights.IMAGENET1K_V2)"
    return f"the weights of {public_name(value)}"


@dataclass(frozen=True)
class TrainingProvenance:
    """What a trained checkpoint's ``config.json`` records about its making."""

    data: dict[str, Any]
    split: dict[str, Any]
    train_config: dict[str, Any]
    pretrained: str
    selection: str
    metrics: dict[str, float | None]
    hardware: str
    commit: str | None
    date: str
    distillation: dict[str, Any] | None = None
    command: str | None = None  # the training command that ran, as public_command writes it

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        for optional in ("distillation", "command"):
            if values[optional] is None:
                del values[optional]
        return values


def training_provenance(
    cfg: TrainConfig, data: RunData, metrics: dict[str, float], runtime: Runtime
) -> TrainingProvenance:
    """The provenance of the network a run exports after the epoch whose ``metrics`` are given."""
    splits = data.splits
    images = {name: len(part) for name, part in splits.items()}
    patients = {name: int(part["Patient ID"].nunique()) for name, part in splits.items()}
    all_patients = len({p for _, part in splits.items() for p in part["Patient ID"]})
    return TrainingProvenance(
        data={
            "description": describe_data(sum(images.values()), all_patients),
            "metadata": public_name(cfg.data.metadata),
            "source": data.source,
            "availability": data.availability.describe(),
            "images": images,
        },
        split={"method": splits.method, "images": images, "patients": patients,
               "sha256": split_fingerprint(splits)},
        train_config=public_recipe(cfg),
        pretrained=describe_pretrained(cfg.pretrained),
        selection=describe_selection(cfg, int(metrics.get("epoch", 0))),
        metrics={k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()},
        hardware=describe_hardware(runtime),
        commit=git_commit(),
        date=utc_now(),
        distillation=(data.distill.to_dict() | {"teacher": public_name(data.distill.teacher)})
        if data.distill else None,
        command=invoked_command(),
    )
