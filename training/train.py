"""Train the classifier: ``python -m training.train`` (also under ``torchrun``).

    python -m training.train --metadata CSV (--images DIR | --cache DIR) --out RUN \\
        [--epochs N] [--batch-size B] [--lr LR] [--pretrained imagenet|none|PATH] \\
        [--device auto|cpu|cuda] [--limit-batches K] [--resume [CKPT]] [--seed S] [--config YAML]

A run directory holds ``config.yaml``, ``train.csv``/``val.csv``/``test.csv``,
``prevalence.csv``, ``metrics.csv`` (one row per epoch), ``last.ckpt`` (full training
state, rewritten atomically every epoch) and ``best/`` (the best epoch by the validation
mean AUROC over the 14 pathologies, in the app's format: ``python app.py --weights RUN/best``; with
``--ema-decay`` the weight average is what is validated and exported).

Determinism: an epoch's sampling, augmentation and dropout depend only on
``(seed, epoch)``, and checkpoints are taken at epoch ends, so a run killed in the
middle of an epoch and resumed with ``--resume`` ends exactly as an uninterrupted one
(on the same hardware and thread count).
"""

from __future__ import annotations

import copy
import math
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn
from torch.utils.data import DataLoader
from tqdm import tqdm

from training.augment import build_augment
from training.cache import ImageCache
from training.config import ConfigError, TrainConfig, parse_config, write_yaml
from training.data import (
    IMAGE,
    Availability,
    MetadataError,
    SplitLeakError,
    Splits,
    find_images,
    keep_available,
    labels_of,
    prepare_splits,
    read_splits,
    summarise,
    write_report,
)
from training.datasets import CachedImages, FileImages, XrayDataset
from training.distill import DistillSummary, distill_targets
from training.losses import FocalWeightedLoss, class_weights
from training.metrics import VAL_HEADLINE, headline_auroc
from training.predictions import PredictionsFileError
from training.sampling import RepeatFactorSampler, describe_mix, repeat_factors
from xray_app.labels import LABELS
from xray_app.model import (
    ChestXrayResNet,
    ModelConfig,
    PretrainedWeightsUnavailable,
    build_model,
    git_commit,
    save_checkpoint,
    utc_now,
)
from xray_app.scoring import score_batch

EpochCallback = Callable[[int, dict[str, float]], None]
CHECKPOINT_FILE = "last.ckpt"
BEST_DIR = "best"


class TrainingError(RuntimeError):
    """The run cannot start or continue (empty split, bad checkpoint...)."""


# --------------------------------------------------------------------------- setup
@dataclass(frozen=True)
class Runtime:
    """Where this process runs: device, distributed rank, precision."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def cpu_has_native(amp: str) -> bool:
    """Whether oneDNN, which runs PyTorch's CPU convolutions, has ``amp`` ("bf16" or
    "fp16") kernels for this CPU; without them autocast falls back to reference code."""
    probe = {"bf16": "_is_mkldnn_bf16_supported", "fp16": "_is_mkldnn_fp16_supported"}[amp]
    try:
        return bool(getattr(torch.ops.mkldnn, probe)())
    except (AttributeError, RuntimeError):  # a PyTorch without the probe: do not block
        return True


def make_runtime(cfg: TrainConfig) -> Runtime:
    """Device and precision from ``cfg``; joins the process group under ``torchrun``."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    want = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if want.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError(f"--device {cfg.device}: CUDA is not available on this machine")
    if want == "cuda":
        want = f"cuda:{local_rank}"
    device = torch.device(want)
    amp = cfg.amp if cfg.amp != "auto" else ("bf16" if device.type == "cuda" else "none")
    if device.type == "cpu" and amp != "none" and not cpu_has_native(amp):
        raise TrainingError(
            f"--amp {amp} on this CPU: oneDNN has no {amp} kernels for it (they need AVX-512 or AMX), "
            f"so PyTorch emulates {amp} and training is many times slower than in fp32 (bf16: 0.4 "
            "against 7.3 images/s at 128 px on a 2-core AVX2 CPU, benchmarks.bench_train); use --amp none")
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[amp]
    channels_last = cfg.channels_last if cfg.channels_last is not None else device.type == "cuda"
    return Runtime(device, rank, world_size, local_rank, amp_dtype, channels_last)


@dataclass
class RunData:
    """The datasets of one run and what they were made from."""

    train: XrayDataset
    val: XrayDataset
    train_labels: np.ndarray
    factors: np.ndarray
    splits: Splits
    availability: Availability
    source: str
    distill: DistillSummary | None = None


def load_data(cfg: TrainConfig) -> RunData:
    """Splits (from files or made here), restricted to the images we have, as datasets."""
    data = cfg.data
    if data.cache:
        cache = ImageCache(data.cache)
        names: set[str] = cache.available_names()
        source = f"cache {data.cache} ({cache.size}px)"
    else:
        paths = find_images(data.images)
        names = set(paths)
        source = f"images {data.images}"
    if data.splits:
        splits = read_splits(data.splits)
        parts = {}
        for name, part in splits.items():
            parts[name], _ = keep_available(part, names)
        availability = Availability(
            sum(len(p) for _, p in splits.items()), sum(len(p) for p in parts.values()), ()
        )
        splits = Splits(parts["train"], parts["val"], parts["test"], splits.method)
    else:
        splits, availability = prepare_splits(
            data.metadata,
            image_names=names,
            split_lists=data.split_lists,
            val_fraction=data.val_fraction,
            test_fraction=data.test_fraction,
            seed=cfg.seed,
        )
    checked = (("train", splits.train), ("val", splits.val)) if cfg.validate else (("train", splits.train),)
    for name, part in checked:
        if len(part) == 0:
            raise TrainingError(
                f"the {name} split is empty with the {availability.available} available images "
                f"({splits.method}); with a partial download use the patient-random split "
                "(no --split-lists), or download the images the lists name"
            )

    def dataset(part: pd.DataFrame, train: bool, labels: np.ndarray | None = None) -> XrayDataset:
        if data.cache:
            images = CachedImages(cache, part[IMAGE].tolist())
        else:
            images = FileImages([paths[n] for n in part[IMAGE]])
        return XrayDataset(
            images,
            labels_of(part) if labels is None else labels,
            input_size=data.input_size,
            augment=build_augment(cfg.augment, train=train),
        )

    train_labels = labels_of(splits.train)
    factors = repeat_factors(
        train_labels,
        no_finding_fraction=cfg.no_finding_fraction,
        repeat_threshold=cfg.repeat_threshold,
        max_repeat=cfg.max_repeat,
    )
    # the sampler and the class weights count the 0/1 labels; only the loss sees soft targets
    targets, distill = None, None
    if cfg.teacher:
        targets, distill = distill_targets(
            cfg.teacher, splits.train[IMAGE].tolist(), train_labels, cfg.distill_weight
        )
    return RunData(
        dataset(splits.train, True, targets), dataset(splits.val, False), train_labels, factors,
        splits, availability, source, distill,
    )


def make_model(cfg: TrainConfig, runtime: Runtime) -> ChestXrayResNet:
    """The network, initialised from ``cfg.seed`` without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = build_model(dropout=cfg.dropout, pretrained=cfg.pretrained)
    model.to(runtime.device)
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def swa_lr(cfg: TrainConfig) -> float:
    """The learning rate held during the weight-averaging epochs."""
    return cfg.swa_lr if cfg.swa_lr is not None else cfg.lr / 4


def make_schedule(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_epochs``, then cosine decay to ``min_lr_ratio * lr``
    over the epochs before the last ``swa_epochs``, which hold ``swa_lr`` (a warm-up that
    reaches into them ramps up to it)."""
    warmup = max(1, round(cfg.warmup_epochs * steps_per_epoch))
    decay_steps = (cfg.epochs - cfg.swa_epochs) * steps_per_epoch
    total = max(warmup + 1, decay_steps)
    swa_from = decay_steps if cfg.swa_epochs > 0 else math.inf
    swa_factor = swa_lr(cfg) / cfg.lr

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup * (swa_factor if step >= swa_from else 1.0)
        if step >= swa_from:
            return swa_factor
        progress = min(1.0, (step - warmup) / (total - warmup))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class WeightAverage:
    """Exponential moving average of a model's weights and batch-norm buffers.

    On a few hundred images the raw weights swing from one epoch to the next (and the
    validation AUROC with them); the average moves smoothly.  ``update()`` after
    each optimiser step; ``module`` is the averaged network.
    """

    def __init__(self, model: ChestXrayResNet, decay: float) -> None:
        self.source = model
        self.average = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)

    @property
    def module(self) -> ChestXrayResNet:
        return self.average.module

    def update(self) -> None:
        self.average.update_parameters(self.source)

    def state_dict(self) -> dict[str, Any]:
        return self.average.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.average.load_state_dict(state)


class StochasticWeightAverage:
    """Equal-weight average of a model's weights taken at epoch ends (SWA, Izmailov et
    al. 2018).  Batch-norm statistics are not averaged: :meth:`network` recomputes them
    for the averaged weights with one pass over ``loader`` (the training images), since
    statistics gathered under other weights do not fit it.
    """

    def __init__(self, model: ChestXrayResNet) -> None:
        self.source = model
        self.average = AveragedModel(model)

    @property
    def count(self) -> int:
        return int(self.average.n_averaged.item())

    def update(self) -> None:
        self.average.update_parameters(self.source)

    def network(self, loader: DataLoader, runtime: Runtime) -> ChestXrayResNet:
        """A copy of the averaged network with its batch-norm statistics recomputed."""
        network = copy.deepcopy(self.average.module)
        with torch.no_grad(), _autocast(runtime):
            update_bn((_to_device(images, runtime) for images, _ in loader), network)
        network.eval()
        return network

    def state_dict(self) -> dict[str, Any]:
        return self.average.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.average.load_state_dict(state)


def mix_batch(
    images: torch.Tensor, targets: torch.Tensor, alpha: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup: ``w * batch + (1 - w) * shuffled batch`` for images and targets alike.

    ``w ~ Beta(alpha, alpha)``, one per batch, drawn from torch's global generator (so an
    epoch's mixing depends on ``(seed, epoch)`` like the rest of its randomness).
    """
    weight = float(torch.distributions.Beta(alpha, alpha).sample())
    order = torch.randperm(len(images))
    return (
        weight * images + (1 - weight) * images[order],
        weight * targets + (1 - weight) * targets[order],
    )


# --------------------------------------------------------------------------- loops
def _autocast(runtime: Runtime):
    if runtime.amp_dtype is None:
        return nullcontext()
    return torch.autocast(device_type=runtime.device.type, dtype=runtime.amp_dtype)


def _to_device(images: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    images = images.to(runtime.device, non_blocking=True)
    if runtime.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    runtime: Runtime,
    *,
    epoch: int,
    grad_clip: float,
    limit_batches: int | None,
    log_every: int,
    progress: bool,
    average: WeightAverage | None = None,
    mixup_alpha: float = 0.0,
) -> dict[str, float]:
    """One pass over the (balanced) training loader; returns mean loss and throughput."""
    model.train()
    total_loss = torch.zeros((), device=runtime.device)
    seen = 0
    steps = len(loader) if limit_batches is None else min(limit_batches, len(loader))
    start = time.perf_counter()
    bar = tqdm(total=steps, desc=f"epoch {epoch + 1}", disable=not (progress and runtime.is_main),
               leave=False, unit="batch")
    for step, (images, targets) in enumerate(loader):
        if step >= steps:
            break
        if mixup_alpha > 0:
            images, targets = mix_batch(images, targets, mixup_alpha)
        images = _to_device(images, runtime)
        targets = targets.to(runtime.device, non_blocking=True)
        with _autocast(runtime):
            logits = model(images)
        loss = loss_fn(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if grad_clip > 0:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        if average is not None:
            average.update()
        total_loss += loss.detach() * len(images)
        seen += len(images)
        bar.update()
        if runtime.is_main and log_every and (step + 1) % log_every == 0:
            print(f"epoch {epoch + 1} step {step + 1}/{steps} loss {loss.item():.4f}", flush=True)
    bar.close()
    if runtime.distributed:
        packed = torch.stack([total_loss, torch.tensor(float(seen), device=runtime.device)])
        dist.all_reduce(packed)
        total_loss, seen = packed[0], int(packed[1].item())
    seconds = time.perf_counter() - start
    return {
        "train_loss": float(total_loss.item()) / max(seen, 1),
        "train_images": float(seen),
        "train_images_per_s": seen / max(seconds, 1e-9),
    }


class Predicted(NamedTuple):
    """:func:`predict`'s result, in the loader's order, on the CPU: ``logits`` ``(N, 15)``
    as the checkpoint defines them, ``targets`` ``(N, 15)``, and ``view_logits``
    ``(N, V, 15)``, each view's own logits (V = 2 with mirror averaging: the image, then
    its mirror image)."""

    logits: torch.Tensor
    targets: torch.Tensor
    view_logits: torch.Tensor


@torch.no_grad()
def predict(
    model: ChestXrayResNet,
    loader: DataLoader,
    runtime: Runtime,
    *,
    mirror_average: bool = False,
    limit_batches: int | None = None,
) -> Predicted:
    """``model`` over ``loader``, scored by :func:`xray_app.scoring.score_batch` as the app
    scores (``mirror_average``: each logit averages the image and its mirror image, as a
    checkpoint whose config asks for it does)."""
    model.eval()
    logits, targets, view_logits = [], [], []
    for step, (images, labels) in enumerate(loader):
        if limit_batches is not None and step >= limit_batches:
            break
        scores = score_batch(model, images.to(runtime.device, non_blocking=True),
                             mirror_average=mirror_average, autocast_dtype=runtime.amp_dtype,
                             channels_last=runtime.channels_last)
        logits.append(scores.logits.cpu())
        view_logits.append(scores.view_logits.cpu())
        targets.append(labels)
    return Predicted(torch.cat(logits), torch.cat(targets), torch.cat(view_logits))


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: nn.Module,
    runtime: Runtime,
    *,
    mirror_average: bool = False,
    limit_batches: int | None = None,
) -> dict[str, float]:
    """Validation loss, the headline (``val_mean_auroc``: mean AUROC over the 14
    pathologies, see :mod:`training.metrics`) and per-class AUROC (``val_auroc_<label>``,
    "No Finding" included), on logits made as the exported checkpoint will make them
    (``mirror_average``).  The mean leaves out pathologies without both a positive and a
    negative image in the evaluated set (NaN when none has both).
    """
    logits, targets, _ = predict(model, loader, runtime, mirror_average=mirror_average,
                                 limit_batches=limit_batches)
    mean, _, per_class = headline_auroc(targets.numpy(), logits.numpy())
    metrics = {"val_loss": float(loss_fn(logits, targets)), VAL_HEADLINE: mean}
    metrics.update({f"val_auroc_{name}": value for name, value in per_class.items()})
    return metrics


# --------------------------------------------------------------------------- state
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
        path = Path(cfg.out) / CHECKPOINT_FILE
        if not path.is_file():
            print(f"--resume: no checkpoint at {path} yet; starting from epoch 1", flush=True)
            return None
        return path
    path = Path(cfg.resume)
    if not path.is_file():
        raise TrainingError(f"--resume {path}: checkpoint not found")
    return path


def export_best(
    model: ChestXrayResNet, cfg: TrainConfig, data: RunData, metrics: dict[str, float], run: Path
) -> Path:
    """Write the app's checkpoint format into ``RUN/best`` (via a temporary folder)."""
    provenance = {
        "data": {
            "metadata": cfg.data.metadata,
            "source": data.source,
            "availability": data.availability.describe(),
            "images": {name: len(part) for name, part in data.splits.items()},
        },
        **({"distillation": data.distill.to_dict()} if data.distill else {}),
        "split": {"method": data.splits.method, "files": str(run.resolve())},
        "commit": git_commit(),
        "date": utc_now(),
        "metrics": {k: (None if isinstance(v, float) and math.isnan(v) else v)
                    for k, v in metrics.items()},
        "train_config": cfg.to_dict(),
    }
    config = ModelConfig(
        input_size=cfg.data.input_size,
        dropout=cfg.dropout,
        mirror_average=cfg.mirror_average,
        trained=True,
        provenance=provenance,
    )
    final = run / BEST_DIR
    staging = run / (BEST_DIR + ".tmp")
    save_checkpoint(model, config, staging)
    old = run / (BEST_DIR + ".old")
    if final.exists():
        os.replace(final, old)
    os.replace(staging, final)
    if old.exists():
        for item in old.iterdir():
            item.unlink()
        old.rmdir()
    return final


def write_metrics(history: list[dict[str, float]], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    pd.DataFrame(history).to_csv(tmp, index=False)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- fit
def fit(cfg: TrainConfig, *, on_epoch_end: EpochCallback | None = None) -> Path:
    """Train per ``cfg``; returns the best export directory ``OUT/best`` (the last epoch
    when ``cfg.validate`` is False).

    ``on_epoch_end(epoch, metrics)`` is called on the main process after each epoch's
    checkpoint is written, with ``epoch`` counted from 0 and ``metrics`` holding
    ``val_mean_auroc`` (the headline), ``val_loss``, ``train_loss``, per-class
    ``val_auroc_<label>``...
    It may raise (e.g. ``optuna.TrialPruned``) to stop the run; the exception propagates.
    """
    runtime = make_runtime(cfg)
    run = Path(cfg.out)
    try:
        data = load_data(cfg)
        if runtime.is_main:
            run.mkdir(parents=True, exist_ok=True)
            write_yaml(cfg, run / "config.yaml")
            write_report(data.splits, data.availability, run)
            print(summarise(data.splits, data.availability), flush=True)
            print(describe_mix(data.train_labels, data.factors), flush=True)
            if data.distill:
                print(data.distill.describe(), flush=True)
            if not cfg.validate:
                print(f"no validation: all {cfg.epochs} epochs run and the last is exported"
                      + (f"; the {len(data.splits.val)} validation-split images are not used"
                         if len(data.splits.val) else ""), flush=True)
        return _fit(cfg, data, runtime, run, on_epoch_end)
    finally:
        if runtime.distributed and dist.is_initialized():
            dist.destroy_process_group()


def _loaders(cfg: TrainConfig, data: RunData, runtime: Runtime) -> tuple[RepeatFactorSampler, DataLoader, DataLoader]:
    sampler = RepeatFactorSampler(
        data.factors, seed=cfg.seed, rank=runtime.rank, world_size=runtime.world_size
    )
    common = {
        "num_workers": cfg.data.num_workers,
        "pin_memory": runtime.device.type == "cuda",
        "persistent_workers": cfg.data.num_workers > 0,
    }
    train_loader = DataLoader(
        data.train, batch_size=cfg.batch_size, sampler=sampler,
        drop_last=len(sampler) > cfg.batch_size, **common,
    )
    val_loader = DataLoader(data.val, batch_size=cfg.batch_size, shuffle=False, **common)
    return sampler, train_loader, val_loader


def _fit(
    cfg: TrainConfig, data: RunData, runtime: Runtime, run: Path, on_epoch_end: EpochCallback | None
) -> Path:
    sampler, train_loader, val_loader = _loaders(cfg, data, runtime)
    model = make_model(cfg, runtime)
    trained: nn.Module = torch.compile(model) if cfg.compile else model
    if runtime.distributed:
        ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        trained = nn.parallel.DistributedDataParallel(trained, device_ids=ids)
    weights = class_weights(data.train_labels, data.factors, max_class_weight=cfg.max_class_weight)
    loss_fn = FocalWeightedLoss(
        alpha=cfg.focal_alpha, gamma=cfg.focal_gamma, pos_weight=torch.from_numpy(weights)
    ).to(runtime.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = len(train_loader) if cfg.limit_batches is None else min(cfg.limit_batches, len(train_loader))
    scheduler = make_schedule(optimizer, cfg, steps)
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.amp_dtype == torch.float16)
    average = WeightAverage(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    swa = StochasticWeightAverage(model) if cfg.swa_epochs > 0 else None
    swa_loader = _batch_norm_loader(cfg, data) if swa is not None else None
    # the network that is validated, selected and exported
    selected: ChestXrayResNet = average.module if average is not None else model
    state = Progress()
    checkpoint = resume_path(cfg)
    if checkpoint is not None:
        saved = torch.load(checkpoint, map_location=runtime.device, weights_only=True)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        scaler.load_state_dict(saved["scaler"])
        sampler.load_state_dict(saved["sampler"])
        if average is not None:
            if "average" not in saved:
                raise TrainingError(f"--resume {checkpoint}: this run had no weight average (ema_decay 0)")
            average.load_state_dict(saved["average"])
        if swa is not None:
            if "swa" not in saved:
                raise TrainingError(f"--resume {checkpoint}: this run kept no stochastic weight average")
            swa.load_state_dict(saved["swa"])
        restore_rng_state(saved["rng"])
        state = Progress(**saved["progress"])
        if runtime.is_main:
            print(f"resumed from {checkpoint} after epoch {state.epoch}", flush=True)
    if runtime.is_main:
        print(f"class weights (max {cfg.max_class_weight}): "
              + ", ".join(f"{n} {w:.2f}" for n, w in zip(LABELS, weights, strict=True)), flush=True)
    writer = _tensorboard(run) if runtime.is_main else None
    while state.epoch < cfg.epochs and not state.stopped:
        epoch = state.epoch
        sampler.set_epoch(epoch)
        # dropout and any other torch randomness of this epoch depend on (seed, epoch) only
        devices = [runtime.device] if runtime.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(cfg.seed * 1_000_003 + epoch)
            metrics = train_one_epoch(
                trained, train_loader, loss_fn, optimizer, scheduler, scaler, runtime,
                epoch=epoch, grad_clip=cfg.grad_clip, limit_batches=cfg.limit_batches,
                log_every=cfg.log_every, progress=cfg.progress, average=average,
                mixup_alpha=cfg.mixup_alpha,
            )
        metrics = {"epoch": epoch + 1, "lr": scheduler.get_last_lr()[0], **metrics}
        averaged = None  # the weight average made usable (batch-norm recomputed), when needed
        if swa is not None and epoch >= cfg.epochs - cfg.swa_epochs:
            swa.update()
            metrics["swa_models"] = swa.count
            # without validation only the last epoch's average is exported: one batch-norm pass
            if cfg.validate or epoch + 1 == cfg.epochs:
                averaged = selected = swa.network(swa_loader, runtime)
        if cfg.validate:
            metrics.update(_validate(selected, val_loader, loss_fn, runtime, cfg))
            export = _keep_best(state, metrics[VAL_HEADLINE], epoch, cfg.patience)
        else:  # no validation: the last epoch is the result
            export = epoch + 1 == cfg.epochs
        if export and runtime.is_main:
            export_best(selected, cfg, data, metrics, run)
        state.history.append(metrics)
        state.epoch = epoch + 1
        if runtime.is_main:
            save_training_checkpoint(
                run / CHECKPOINT_FILE,
                model=model.state_dict(), optimizer=optimizer.state_dict(),
                scheduler=scheduler.state_dict(), scaler=scaler.state_dict(),
                sampler=sampler.state_dict(), rng=rng_state(),
                progress=state.__dict__, config=cfg.to_dict(),
                **({"average": average.state_dict()} if average is not None else {}),
                **({"swa": swa.state_dict()} if swa is not None else {}),
                **({"swa_model": averaged.state_dict()} if averaged is not None else {}),
            )
            write_metrics(state.history, run / "metrics.csv")
            _log_epoch(metrics, state, writer)
            if on_epoch_end is not None:
                on_epoch_end(epoch, metrics)
        if runtime.distributed:
            dist.barrier()
    if writer is not None:
        writer.close()
    return run / BEST_DIR


def _batch_norm_loader(cfg: TrainConfig, data: RunData) -> DataLoader:
    """The training images once each, without augmentation: batch-norm statistics of a
    weight average are recomputed on them."""
    plain = copy.copy(data.train)
    plain.augment = None
    return DataLoader(plain, batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.data.num_workers)


def _keep_best(state: Progress, score: float, epoch: int, patience: int) -> bool:
    """Record this epoch's validation ``score``; True when it is the best so far (export
    it), otherwise count it towards early stopping."""
    if state.best_epoch < 0 or score > state.best:
        state.best, state.best_epoch, state.bad_epochs = score, epoch + 1, 0
        return True
    state.bad_epochs += 1
    state.stopped = state.bad_epochs >= patience
    return False


def _validate(
    model: ChestXrayResNet, loader: DataLoader, loss_fn: nn.Module, runtime: Runtime, cfg: TrainConfig
) -> dict[str, float]:
    """Validation on the main process; under torchrun the result is broadcast to all ranks."""
    metrics = {}
    if runtime.is_main:
        metrics = evaluate(model, loader, loss_fn, runtime,
                           mirror_average=cfg.mirror_average, limit_batches=cfg.limit_batches)
    if runtime.distributed:
        box = [metrics]
        dist.broadcast_object_list(box, src=0)
        metrics = box[0]
    return metrics


def _tensorboard(run: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(log_dir=str(run / "tensorboard"))


def _log_epoch(metrics: dict[str, float], state: Progress, writer) -> None:
    validation = (
        f"val_loss {metrics['val_loss']:.4f} {VAL_HEADLINE} {metrics[VAL_HEADLINE]:.4f} "
        if VAL_HEADLINE in metrics else "no validation "
    )
    best = f"; best {state.best:.4f} at epoch {state.best_epoch}" if state.best_epoch > 0 else ""
    print(
        f"epoch {metrics['epoch']}: train_loss {metrics['train_loss']:.4f} {validation}"
        f"({metrics['train_images_per_s']:.1f} img/s{best})",
        flush=True,
    )
    if writer is not None:
        for key, value in metrics.items():
            if key != "epoch":
                writer.add_scalar(key, value, int(metrics["epoch"]))


def main(argv: Sequence[str] | None = None) -> int:
    try:
        cfg = parse_config(argv)
        # fixed input shapes: let cuDNN pick the fastest kernels (entry point only)
        torch.backends.cudnn.benchmark = True
        best = fit(cfg)
    except (ConfigError, TrainingError, MetadataError, SplitLeakError, PretrainedWeightsUnavailable,
            PredictionsFileError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"best checkpoint: {best}  (python app.py --weights {best})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
