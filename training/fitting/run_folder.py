"""A training run's folder, as :func:`training.fitting.loop.fit` writes it, and its resume state.

``RUN/`` holds ``config.yaml`` (the resolved recipe, valid ``--config`` input),
``train.csv``/``val.csv``/``test.csv`` and ``prevalence.csv`` (the split), ``metrics.csv``
(one row per finished epoch), ``last.ckpt`` (the full training state, rewritten
atomically at every epoch end: what ``--resume`` continues from) and ``best/`` (the
exported checkpoint in the app's format).  :class:`RunFolder` names these files once;
cross-validation, tuning and localisation read runs through it.
"""

from __future__ import annotations

import math
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from training.fitting.config import TrainConfig, parse_config
from training.fitting.runtime import TrainingError
from training.fitting.weight_averaging import WeightAverage
from xray_app.model import CONFIG_FILE, ChestXrayResNet, build_model


@dataclass(frozen=True)
class RunFolder:
    """The files of one run folder (nothing is read until asked)."""

    path: Path

    CONFIG = "config.yaml"
    METRICS = "metrics.csv"
    CHECKPOINT = "last.ckpt"
    BEST = "best"

    @property
    def config_file(self) -> Path:
        return self.path / self.CONFIG

    @property
    def metrics_file(self) -> Path:
        return self.path / self.METRICS

    @property
    def checkpoint(self) -> Path:
        """``last.ckpt``: the training state after the last finished epoch."""
        return self.path / self.CHECKPOINT

    @property
    def best(self) -> Path:
        """``best/``: the exported checkpoint (the app's format)."""
        return self.path / self.BEST

    def split_file(self, name: str) -> Path:
        """``train.csv``, ``val.csv`` or ``test.csv``."""
        return self.path / f"{name}.csv"

    def recipe(self) -> TrainConfig:
        """The run's resolved configuration (``config.yaml``)."""
        return parse_config(["--config", str(self.config_file)])

    def metrics(self) -> pd.DataFrame:
        """``metrics.csv``: one row per finished epoch (empty before the first)."""
        if not self.metrics_file.is_file():
            return pd.DataFrame({"epoch": pd.Series(dtype=int)})
        return pd.read_csv(self.metrics_file)

    def last_epoch(self) -> int:
        """The last epoch ``metrics.csv`` records (0 before the first)."""
        metrics = self.metrics()
        return int(metrics["epoch"].max()) if len(metrics) else 0

    def finished(self, epochs: int) -> bool:
        """Whether the run trained all its ``epochs``, here or on another machine: its
        ``metrics.csv`` and exported ``best/`` say so, with or without ``last.ckpt``."""
        return (self.best / CONFIG_FILE).is_file() and self.last_epoch() >= epochs

    def best_value(self, column: str) -> float:
        """The highest value of ``column`` over the recorded epochs (NaN epochs skipped)."""
        if not self.metrics_file.is_file():
            raise TrainingError(f"{self.metrics_file} not found: the run wrote no epoch")
        value = float(self.metrics()[column].max())
        if math.isnan(value):
            raise TrainingError(f"{self.metrics_file}: no epoch produced a defined {column}")
        return value

    def last_epoch_model(self, cfg: TrainConfig) -> ChestXrayResNet:
        """The network of the last finished epoch, from ``last.ckpt``: its weight average
        when the run kept one (exponential, or stochastic with batch-norm recomputed)."""
        if not self.checkpoint.is_file():
            raise TrainingError(f"{self.checkpoint}: not found; train the run first")
        saved = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
        model = build_model(dropout=cfg.dropout, pretrained="none", architecture=cfg.architecture)
        if "swa_model" in saved:
            model.load_state_dict(saved["swa_model"])
            return model
        model.load_state_dict(saved["model"])
        if "average" in saved:
            average = WeightAverage(model, cfg.ema_decay)
            average.load_state_dict(saved["average"])
            return average.module
        return model

    def tidy(self, *, keep_best: bool) -> None:
        """Remove the resume state (and, unless ``keep_best``, the export) of a run that
        will not continue: a finished or pruned trial."""
        self.checkpoint.unlink(missing_ok=True)
        if not keep_best:
            shutil.rmtree(self.best, ignore_errors=True)


# --------------------------------------------------------------------------- resume state
@dataclass
class Progress:
    """Training progress that must survive a restart."""

    epoch: int = 0  # epochs completed
    best: float = -math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    stopped: bool = False
    history: list[dict[str, float]] = field(default_factory=list)


def save_training_checkpoint(path: Path, **state: Any) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resume_path(cfg: TrainConfig) -> Path | None:
    """The checkpoint to continue from, or None for a fresh start."""
    if cfg.resume is None:
        return None
    if cfg.resume == "auto":
        path = RunFolder(Path(cfg.out)).checkpoint
        if not path.is_file():
            print(f"--resume: no checkpoint at {path} yet; starting from epoch 1", flush=True)
            return None
        return path
    path = Path(cfg.resume)
    if not path.is_file():
        raise TrainingError(f"--resume {path}: checkpoint not found")
    return path


def write_metrics(history: list[dict[str, float]], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    pd.DataFrame(history).to_csv(tmp, index=False)
    os.replace(tmp, path)
