"""Typed training configuration: frozen dataclasses filled from YAML + command line.

Precedence: dataclass defaults < ``--config FILE.yaml`` < explicit command-line flags.
The resolved configuration is written as ``config.yaml`` in the run directory and is
valid input for ``--config``.  YAML layout mirrors the dataclasses::

    epochs: 20
    lr: 0.0003
    data: {metadata: ../shared/data/nih/Data_Entry_2017_v2020.csv.gz, cache: cache/256}
    augment: {strength: 1.0, shift_scale: true}
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from training.data.augment import AugmentConfig
from xray_app.architectures import ARCHITECTURES

DEFAULT_METADATA = "../shared/data/nih/Data_Entry_2017_v2020.csv.gz"


class ConfigError(ValueError):
    """A configuration file or value is invalid."""


SAMPLING_RULES = ("repeat", "raked", "folders")


@dataclass(frozen=True)
class DataConfig:
    """Where the images and labels come from and how they are split.

    Exactly one of ``images`` (one or more folders, searched recursively; an image name
    found twice is refused) and ``cache`` (built by ``python -m training.cache``).  ``splits`` reuses ``train.csv``/``val.csv``/
    ``test.csv`` written by ``python -m training.split``; otherwise splits come from
    ``split_lists`` (list files) or a patient-random split with the given fractions.
    ``source_folders``: the folders the images were picked from, for ``--sampling
    folders`` (each folder drawn equally often) and ``--folder-adversary-weight`` (two).
    """

    metadata: str = DEFAULT_METADATA
    images: tuple[str, ...] | None = None
    cache: str | None = None
    splits: str | None = None
    split_lists: str | None = None
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    input_size: int = 224
    num_workers: int = 4
    source_folders: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("images", "source_folders"):
            value = getattr(self, name)
            if isinstance(value, str | Path):  # one folder, as older config files give it
                object.__setattr__(self, name, (str(value),))
            elif value is not None:
                object.__setattr__(self, name, tuple(str(folder) for folder in value))
        if (self.images is None) == (self.cache is None):
            raise ConfigError("give exactly one of --images DIR and --cache DIR")
        if self.input_size < 32:
            raise ConfigError(f"input_size must be >= 32, got {self.input_size}")


@dataclass(frozen=True)
class TrainConfig:
    """One training run.  The tuner maps trials onto these fields with ``dataclasses.replace``.

    Balancing (``no_finding_fraction``, ``repeat_threshold``, ``max_repeat``): see
    :mod:`training.data.sampling`.  Loss (``focal_alpha``, ``focal_gamma``,
    ``max_class_weight``): see :mod:`training.fitting.losses`.  ``amp``: ``auto`` = bf16 on CUDA,
    none on CPU.  ``limit_batches`` caps train and validation batches per epoch (smoke
    runs).  ``teacher``/``distill_weight``: soft targets from another model's predictions
    on the training images (:mod:`training.data.soft_targets`).  ``ema_decay``: keep an exponential
    moving average of the weights (updated after every optimiser step, batch-norm buffers
    included); when above 0 the average, not the raw weights, is validated, selected and
    exported.  ``swa_epochs``: stochastic weight averaging (Izmailov et al. 2018): the last
    ``swa_epochs`` of the ``epochs`` hold the learning rate at ``swa_lr`` (default a quarter
    of ``lr``; the cosine decay runs over the epochs before them) and the weights are
    averaged at the end of each; the average, its batch-norm statistics recomputed on the
    training images, is what is validated, selected and exported from the first of them on.
    ``mixup_alpha``: mixup (Zhang et al. 2018) with a Beta(alpha, alpha) mixing
    weight per batch, 0 = off.  ``view_loss_weight``: an auxiliary AP/PA output trained
    beside the findings, its loss weighted so; ``patient_loss_weight``: auxiliary outputs for
    the patient's sex, age and follow-up number, each weighted so; ``folder_adversary_weight``:
    an output behind a gradient reversal that tells which of the two ``source_folders`` a
    No-Finding film came from, so that the features are pushed, so weighted, to hide it;
    ``folder_adversary_within_view``: one such output among normal PA films and one among
    normal AP films, so that view position is not hidden with the folder
    (:mod:`training.fitting.auxiliary_outputs`; 0 = off).  ``sam_rho``: sharpness-aware
    minimisation with this radius (:mod:`training.fitting.sharpness_aware`; 0 = off).  ``resume``: a checkpoint path, or ``auto`` = ``OUT/last.ckpt`` when present.
    ``mirror_average``: the exported checkpoint averages each image's logits with its
    mirror image's (:func:`xray_app.scoring.score_batch`), and validation scores it so.
    ``validate``: False = no validation (a refit of a recipe chosen by cross-validation on
    all its images): the validation split is not used, every epoch runs and the last one
    is exported to ``OUT/best``.
    """

    data: DataConfig
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    out: str = "runs/latest"
    epochs: int = 10
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01
    grad_clip: float = 1.0
    focal_alpha: float = 0.5
    focal_gamma: float = 2.0
    max_class_weight: float = 10.0
    no_finding_fraction: float = 0.5
    repeat_threshold: float = 0.1
    max_repeat: float = 4.0
    sampling: str = "repeat"
    teacher: str | None = None
    distill_weight: float = 0.5
    ema_decay: float = 0.0
    swa_epochs: int = 0
    swa_lr: float | None = None
    mixup_alpha: float = 0.0
    view_loss_weight: float = 0.0
    patient_loss_weight: float = 0.0
    folder_adversary_weight: float = 0.0
    folder_adversary_within_view: bool = False
    sam_rho: float = 0.0
    dropout: float = 0.0
    mirror_average: bool = False
    architecture: str = "resnet50"
    pretrained: str = "imagenet"
    limit_batches: int | None = None
    patience: int = 5
    validate: bool = True
    device: str = "auto"
    amp: str = "auto"
    channels_last: bool | None = None
    compile: bool = False
    seed: int = 0
    resume: str | None = None
    log_every: int = 50
    progress: bool = True

    def __post_init__(self) -> None:
        checks = {
            "epochs": self.epochs >= 1,
            "batch_size": self.batch_size >= 1,
            "lr": self.lr > 0,
            "focal_alpha": 0 < self.focal_alpha < 1,
            "focal_gamma": self.focal_gamma >= 0,
            "max_class_weight": self.max_class_weight > 0,
            "no_finding_fraction": 0 < self.no_finding_fraction <= 1,
            "max_repeat": self.max_repeat >= 1,
            "sampling": self.sampling in SAMPLING_RULES,
            "distill_weight": 0 <= self.distill_weight <= 1,
            "ema_decay": 0 <= self.ema_decay < 1,
            "swa_epochs": 0 <= self.swa_epochs <= self.epochs,
            "swa_lr": self.swa_lr is None or self.swa_lr > 0,
            "mixup_alpha": self.mixup_alpha >= 0,
            "view_loss_weight": self.view_loss_weight >= 0,
            "patient_loss_weight": self.patient_loss_weight >= 0,
            "folder_adversary_weight": self.folder_adversary_weight >= 0,
            "sam_rho": self.sam_rho >= 0,
            "amp": self.amp in ("auto", "bf16", "fp16", "none"),
            "architecture": self.architecture in ARCHITECTURES,
            "limit_batches": self.limit_batches is None or self.limit_batches >= 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"invalid {bad[0]}: {getattr(self, bad[0])!r}")
        if self.sampling == "folders" and not self.data.source_folders:
            raise ConfigError("--sampling folders needs --source-folders DIR [DIR ...]: the folders "
                              "whose images are to be drawn equally often")
        if self.folder_adversary_weight > 0 and len(self.data.source_folders or ()) != 2:
            raise ConfigError("--folder-adversary-weight needs --source-folders DIR DIR: the two folders "
                              "whose No-Finding films the network is to make alike")
        if self.folder_adversary_within_view and self.folder_adversary_weight <= 0:
            raise ConfigError("--folder-adversary-within-view splits the hidden folder output by view: "
                              "give --folder-adversary-weight too")
        if self.sam_rho > 0 and self.amp == "fp16":
            raise ConfigError("--sam-rho with --amp fp16: the two passes of a sharpness-aware step "
                              "are not loss-scaled; use --amp bf16 or none")
        if self.ema_decay > 0 and self.swa_epochs > 0:
            raise ConfigError("--ema-decay and --swa-epochs are two ways of averaging weights: give one")

    def to_dict(self) -> dict[str, Any]:
        """A plain nested mapping (lists, not tuples), as YAML and JSON write it."""
        values = dataclasses.asdict(self)
        for name in ("images", "source_folders"):
            if values["data"][name] is not None:
                values["data"][name] = list(values["data"][name])
        return values


_SECTIONS = {"data": DataConfig, "augment": AugmentConfig}


def from_dict(values: Mapping[str, Any]) -> TrainConfig:
    """Build a config from a nested mapping (YAML); unknown keys are an error."""
    values = dict(values)
    sections = {}
    for name, cls in _SECTIONS.items():
        section = dict(values.pop(name, None) or {})
        _check_keys(cls, section, name)
        sections[name] = section
    _check_keys(TrainConfig, values, "top level")
    try:
        return TrainConfig(
            data=DataConfig(**sections["data"]),
            augment=AugmentConfig(**sections["augment"]),
            **values,
        )
    except TypeError as error:
        raise ConfigError(str(error)) from None


def _check_keys(cls: type, values: Mapping[str, Any], where: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)} - set(_SECTIONS)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown} in {where}; known: {sorted(known)}")


def load_yaml(path: str | Path) -> dict[str, Any]:
    try:
        values = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"{path}: cannot read config ({error})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return values


def write_yaml(config: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


# --------------------------------------------------------------------------- argparse
_TYPES = {"int": int, "float": float, "str": str}
_HELP = {
    "metadata": "NIH Data_Entry_2017*.csv[.gz]",
    "images": "image folders, searched recursively (or --cache)",
    "cache": "cache directory from python -m training.cache (or --images)",
    "splits": "directory with train.csv/val.csv/test.csv from python -m training.split",
    "split_lists": "directory of NIH or CheXNet split lists (default: patient-random split)",
    "out": "run directory",
    "pretrained": "imagenet, none, or a local state dict PATH (a training run's last.ckpt: "
                  "its weights, to continue from them under a new schedule)",
    "device": "auto, cpu, cuda or cuda:N",
    "architecture": "the network: resnet50 (the product) or tiny-resnet (a few thousand "
                    "parameters, for quick tests of the pipeline)",
    "amp": "auto (bf16 on CUDA), bf16, fp16 or none",
    "limit_batches": "at most this many train and validation batches per epoch",
    "no_finding_fraction": "share of 'No Finding'-only training images drawn per epoch",
    "sampling": "repeat (repeat factors: No Finding thinned, rare pathologies repeated) or "
                "raked (each image drawn in proportion to its weight raked to the metadata's "
                "label mix and AP/PA share within normal and abnormal films) or folders "
                "(repeat factors rescaled so that each of --source-folders is drawn equally "
                "often)",
    "source_folders": "the folders the training images were picked from, for --sampling "
                      "folders (an image in none of them is an error) and "
                      "--folder-adversary-weight (two folders)",
    "max_class_weight": "cap of the per-class positive weight (negatives/positives)",
    "patience": "early stopping: epochs without a better validation macro-AUROC",
    "input_size": "model input side in pixels",
    "teacher": "predictions CSV of a teacher model (prob_<Label> or logit_<Label> columns): "
               "soft targets for the training images it lists",
    "distill_weight": "share of the teacher's probability in a soft target, 0..1",
    "ema_decay": "weight of the running average per optimiser step, e.g. 0.99 "
                 "(0 = off): validate and export the moving average of the weights",
    "swa_epochs": "stochastic weight averaging over the last SWA_EPOCHS of the epochs, at a "
                  "constant --swa-lr: validate and export the average (batch-norm statistics "
                  "recomputed on the training images)",
    "swa_lr": "learning rate held during the --swa-epochs (default a quarter of --lr)",
    "mixup_alpha": "mixup: blend each batch with a shuffled copy of itself, images and "
                   "targets alike, by a Beta(alpha, alpha) weight (0 = off; 0.2-0.4 is usual)",
    "view_loss_weight": "train an auxiliary AP/PA output (from the metadata's View Position) "
                        "beside the findings, its binary cross-entropy weighted so; the exported "
                        "model keeps the 15 outputs (0 = off)",
    "patient_loss_weight": "train auxiliary outputs for the patient's sex, age and follow-up "
                           "number (from the metadata) beside the findings, each binary "
                           "cross-entropy weighted so; the exported model keeps the 15 outputs "
                           "(0 = off)",
    "folder_adversary_weight": "train an output behind a gradient reversal that tells which of the "
                               "two --source-folders a No-Finding film came from, so that the "
                               "features are pushed, so weighted, to hide where a normal film was "
                               "copied from (training.source_audit); the exported model keeps the "
                               "15 outputs (0 = off)",
    "folder_adversary_within_view": "split the --folder-adversary-weight output by view position: "
                                    "one among normal PA films, one among normal AP films, so that "
                                    "the features need not hide the view with the folder",
    "sam_rho": "sharpness-aware minimisation (Foret et al. 2021): take each step's gradient "
               "at the weights moved SAM_RHO along the normalised gradient (0 = off; 0.05 is "
               "usual); each step costs two passes",
    "strength": "augmentation strength (0 = none)",
    "blur": "blur half of the training films by a Gaussian of sigma up to BLUR pixels of the "
            "cached image, so that sharpness says little about where a film was copied from "
            "(training.source_audit; 0 = off; not scaled by --augment-strength)",
    "gamma": "give half of the training films a tone curve x ** gamma, gamma drawn from "
             "[exp(-GAMMA), exp(GAMMA)], so that brightness says little about where a film was "
             "copied from (training.source_audit; 0 = off; not scaled by --augment-strength)",
    "mirror_average": "the exported model averages each image's logits with its mirror "
                      "image's (thresholds, calibration and validation use the same)",
    "validate": "--no-validate: no validation split; run every epoch and export the last "
                "(refit of a cross-validated recipe, see training.crossval --refit)",
}


def _add_fields(parser: argparse.ArgumentParser, cls: type, section: str | None) -> None:
    prefix = "augment-" if section == "augment" else ""
    skip = set(_SECTIONS) | {"resume"}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + prefix + f.name.replace("_", "-")
        dest = f"{section}.{f.name}" if section else f.name
        kind = str(f.type).split(" | ")[0]
        if kind == "bool":
            parser.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None,
                                help=_HELP.get(f.name))
        elif kind.startswith("tuple["):
            parser.add_argument(flag, dest=dest, nargs="+", default=None, metavar="DIR",
                                help=_HELP.get(f.name))
        else:
            default = "" if f.default is dataclasses.MISSING else f" (default {f.default})"
            parser.add_argument(flag, dest=dest, type=_TYPES[kind], default=None,
                                metavar=f.name.upper(), help=_HELP.get(f.name, "") + default)


def build_parser(prog: str = "python -m training.train") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Train the chest X-ray classifier.")
    parser.add_argument("--config", type=Path, help="YAML file (flags override it)")
    parser.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CKPT",
                        help="continue from CKPT, or from OUT/last.ckpt when no path is given")
    _add_fields(parser, TrainConfig, None)
    _add_fields(parser, DataConfig, "data")
    _add_fields(parser, AugmentConfig, "augment")
    return parser


def parse_config(argv: Sequence[str] | None = None) -> TrainConfig:
    """Defaults < ``--config`` YAML < explicit flags."""
    args = build_parser().parse_args(argv)
    values = load_yaml(args.config) if args.config else {}
    for dest, value in vars(args).items():
        if value is None or dest == "config":
            continue
        if "." in dest:
            section, name = dest.split(".", 1)
            values.setdefault(section, {})[name] = value
        else:
            values[dest] = value
    data = values.get("data", {})
    # a flag for one image source replaces the other one from the YAML file
    if getattr(args, "data.images") is not None:
        data["cache"] = None
    if getattr(args, "data.cache") is not None:
        data["images"] = None
    return from_dict(values)
