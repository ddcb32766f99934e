"""The training loop: parts of a run, one epoch, validation, export, and :func:`fit`.

:func:`fit` is what ``python -m training.train``, cross-validation and tuning all call.
A run directory holds ``config.yaml``, ``train.csv``/``val.csv``/``test.csv``,
``prevalence.csv``, ``metrics.csv`` (one row per epoch), ``last.ckpt`` (full training
state, rewritten atomically every epoch) and ``best/`` (the best epoch by the validation
mean AUROC over the 14 pathologies, in the app's format; with ``--ema-decay`` the weight
average is what is validated and exported).

Determinism: an epoch's sampling, augmentation and dropout depend only on
``(seed, epoch)``, and checkpoints are taken at epoch ends, so a run killed in the
middle of an epoch and resumed with ``--resume`` ends exactly as an uninterrupted one
(on the same hardware and thread count).
"""

from __future__ import annotations

import copy
import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from training.data.datasets import XrayDataset
from training.data.run_data import RunData, load_data
from training.data.sampling import RepeatFactorSampler, describe_mix
from training.data.splits import summarise, write_report
from training.fitting.auxiliary_outputs import (
    AuxiliaryLoss,
    WithAuxiliaryOutputs,
    configured_traits,
)
from training.fitting.config import TrainConfig, write_yaml
from training.fitting.losses import FocalWeightedLoss, class_weights
from training.fitting.provenance import training_provenance
from training.fitting.run_folder import (
    Progress,
    RunFolder,
    restore_rng_state,
    resume_path,
    rng_state,
    save_training_checkpoint,
    write_metrics,
)
from training.fitting.runtime import Runtime, TrainingError, autocast, make_runtime, to_device
from training.fitting.sharpness_aware import sharpness_aware_backward
from training.fitting.weight_averaging import StochasticWeightAverage, WeightAverage
from training.metrics.headline import VAL_HEADLINE, headline_auroc
from xray_app.labels import LABELS
from xray_app.model import (
    ChestXrayResNet,
    ModelConfig,
    build_model,
    save_checkpoint_atomically,
)
from xray_app.scoring import score_batch

EpochCallback = Callable[[int, dict[str, float]], None]

# --------------------------------------------------------------------------- parts
def make_model(cfg: TrainConfig, runtime: Runtime) -> ChestXrayResNet:
    """The network, initialised from ``cfg.seed`` without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = build_model(dropout=cfg.dropout, pretrained=cfg.pretrained,
                            architecture=cfg.architecture)
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


@dataclass
class TrainingParts:
    """What one run trains with; :meth:`state_dict` is what ``last.ckpt`` saves of them."""

    model: ChestXrayResNet
    trained: nn.Module  # the model as stepped: with its view output, compiled and/or wrapped for DDP
    loss_fn: FocalWeightedLoss  # the findings' loss (validation's)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    sampler: RepeatFactorSampler
    train_loader: DataLoader
    val_loader: DataLoader
    class_weights: np.ndarray
    average: WeightAverage | None = None
    swa: StochasticWeightAverage | None = None
    swa_loader: DataLoader | None = None
    auxiliary: WithAuxiliaryOutputs | None = None  # --view/--patient-loss-weight, --folder-adversary-weight
    train_loss_fn: nn.Module | None = None  # the loss stepped: loss_fn, plus the traits' when present

    def __post_init__(self) -> None:
        if self.train_loss_fn is None:
            self.train_loss_fn = self.loss_fn

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            **({"auxiliary_outputs": {"names": list(self.auxiliary.names), **self.auxiliary.heads_state()}}
               if self.auxiliary is not None else {}),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "sampler": self.sampler.state_dict(),
            **({"average": self.average.state_dict()} if self.average is not None else {}),
            **({"swa": self.swa.state_dict()} if self.swa is not None else {}),
        }

    def load_state_dict(self, saved: dict[str, Any], source: Path) -> None:
        self.model.load_state_dict(saved["model"])
        names, heads = _saved_auxiliary(saved)
        trained = self.auxiliary.names if self.auxiliary is not None else ()
        if names != trained:
            raise TrainingError(f"--resume {source}: the run trains auxiliary outputs "
                                f"{list(trained)}, the checkpoint {list(names)} "
                                "(--view-loss-weight, --patient-loss-weight, --folder-adversary-weight)")
        if self.auxiliary is not None:
            self.auxiliary.load_heads_state(heads)
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])
        self.sampler.load_state_dict(saved["sampler"])
        if self.average is not None:
            if "average" not in saved:
                raise TrainingError(f"--resume {source}: this run had no weight average (ema_decay 0)")
            self.average.load_state_dict(saved["average"])
        if self.swa is not None:
            if "swa" not in saved:
                raise TrainingError(f"--resume {source}: this run kept no stochastic weight average")
            self.swa.load_state_dict(saved["swa"])


def build_parts(cfg: TrainConfig, data: RunData, runtime: Runtime) -> TrainingParts:
    """Model, loss, optimiser, schedule, sampler, loaders and weight averages of a run."""
    sampler, train_loader, val_loader = _loaders(cfg, data, runtime)
    model = make_model(cfg, runtime)
    traits = configured_traits(cfg)
    auxiliary = _auxiliary_outputs(tuple(traits), cfg, model, runtime)
    stepped: nn.Module = model if auxiliary is None else auxiliary
    trained: nn.Module = torch.compile(stepped) if cfg.compile else stepped
    if runtime.distributed:
        ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        trained = nn.parallel.DistributedDataParallel(trained, device_ids=ids)
    weights = class_weights(data.train_labels, data.factors, max_class_weight=cfg.max_class_weight)
    loss_fn = FocalWeightedLoss(
        alpha=cfg.focal_alpha, gamma=cfg.focal_gamma, pos_weight=torch.from_numpy(weights)
    ).to(runtime.device)
    optimizer = torch.optim.AdamW(stepped.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = len(train_loader) if cfg.limit_batches is None else min(cfg.limit_batches, len(train_loader))
    swa = StochasticWeightAverage(model) if cfg.swa_epochs > 0 else None
    return TrainingParts(
        model, trained, loss_fn, optimizer, make_schedule(optimizer, cfg, steps),
        torch.amp.GradScaler(runtime.device.type, enabled=runtime.amp_dtype == torch.float16),
        sampler, train_loader, val_loader, weights,
        average=WeightAverage(model, cfg.ema_decay) if cfg.ema_decay > 0 else None,
        swa=swa, swa_loader=_batch_norm_loader(cfg, data) if swa is not None else None,
        auxiliary=auxiliary,
        train_loss_fn=(AuxiliaryLoss(loss_fn, list(traits.values())).to(runtime.device)
                       if auxiliary is not None else None),
    )


def _auxiliary_outputs(
    names: tuple[str, ...], cfg: TrainConfig, model: ChestXrayResNet, runtime: Runtime
) -> WithAuxiliaryOutputs | None:
    """``model`` with an auxiliary output per trait of ``names`` (``--view-loss-weight``,
    ``--patient-loss-weight``, ``--folder-adversary-weight``), initialised from the seed like the network; None without."""
    if not names:
        return None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed + 1)
        return WithAuxiliaryOutputs(model, names).to(runtime.device)


def _saved_auxiliary(saved: dict[str, Any]) -> tuple[tuple[str, ...], dict[str, Any] | None]:
    """The traits a ``last.ckpt`` trained outputs for and their heads' weights
    (:meth:`WithAuxiliaryOutputs.heads_state`); checkpoints written before the patient
    traits existed keep the view alone as ``view_output``."""
    if "auxiliary_outputs" in saved:
        return tuple(saved["auxiliary_outputs"]["names"]), saved["auxiliary_outputs"]
    if "view_output" in saved:
        return ("view",), {"state": saved["view_output"]}
    return (), None


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


def plain_loader(cfg: TrainConfig, dataset: XrayDataset) -> DataLoader:
    """``dataset``'s images once each, in order, without augmentation: as the app sees them."""
    plain = copy.copy(dataset)
    plain.augment = None
    return DataLoader(plain, batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.data.num_workers)


def _batch_norm_loader(cfg: TrainConfig, data: RunData) -> DataLoader:
    """The training images once each, without augmentation: batch-norm statistics of a
    weight average are recomputed on them."""
    return plain_loader(cfg, data.train)


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
    sam_rho: float = 0.0,
) -> dict[str, float]:
    """One pass over the (balanced) training loader; returns mean loss and throughput.
    ``sam_rho`` > 0: each step's gradient is sharpness-aware (:mod:`.sharpness_aware`)."""
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
        images = to_device(images, runtime)
        targets = targets.to(runtime.device, non_blocking=True)
        loss_of_batch = functools.partial(_batch_loss, model, loss_fn, runtime, images, targets)
        if sam_rho > 0:  # fp16's loss scaling is refused with SAM (config), so no scaler here
            loss = sharpness_aware_backward(model, loss_of_batch, sam_rho)
        else:
            loss = loss_of_batch()
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


def _batch_loss(model: nn.Module, loss_fn: nn.Module, runtime: Runtime,
                images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The loss of one batch: the forward pass in the run's precision, the loss after it."""
    with autocast(runtime):
        logits = model(images)
    return loss_fn(logits, targets)


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
    pathologies, see :mod:`training.metrics.headline`) and per-class AUROC (``val_auroc_<label>``,
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


# --------------------------------------------------------------------------- export
def export_best(
    model: ChestXrayResNet, cfg: TrainConfig, data: RunData, metrics: dict[str, float], run: Path,
    runtime: Runtime,
) -> Path:
    """Write the app's checkpoint format into ``RUN/best``, with the run's provenance."""
    config = ModelConfig(
        architecture=cfg.architecture,
        input_size=cfg.data.input_size,
        dropout=cfg.dropout,
        mirror_average=cfg.mirror_average,
        trained=True,
        provenance=training_provenance(cfg, data, metrics, runtime).to_dict(),
    )
    return save_checkpoint_atomically(model, config, RunFolder(run).best)


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
            write_yaml(cfg, RunFolder(run).config_file)
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


def _fit(
    cfg: TrainConfig, data: RunData, runtime: Runtime, run: Path, on_epoch_end: EpochCallback | None
) -> Path:
    parts = build_parts(cfg, data, runtime)
    state = _resume(cfg, parts, runtime)
    folder = RunFolder(run)
    writer = _tensorboard(run) if runtime.is_main else None
    while state.epoch < cfg.epochs and not state.stopped:
        epoch = state.epoch
        metrics = _train_epoch(cfg, parts, runtime, epoch)
        selected, averaged = _network_of_epoch(cfg, parts, runtime, epoch, metrics)
        if cfg.validate:
            metrics.update(_validate(selected, parts.val_loader, parts.loss_fn, runtime, cfg))
            export = _keep_best(state, metrics[VAL_HEADLINE], epoch, cfg.patience)
        else:  # no validation: the last epoch is the result
            export = epoch + 1 == cfg.epochs
        if export and runtime.is_main:
            export_best(selected, cfg, data, metrics, run, runtime)
        state.history.append(metrics)
        state.epoch = epoch + 1
        if runtime.is_main:
            save_training_checkpoint(
                folder.checkpoint, **parts.state_dict(), rng=rng_state(), progress=state.__dict__,
                config=cfg.to_dict(),
                **({"swa_model": averaged.state_dict()} if averaged is not None else {}))
            write_metrics(state.history, folder.metrics_file)
            _log_epoch(metrics, state, writer)
            if on_epoch_end is not None:
                on_epoch_end(epoch, metrics)
        if runtime.distributed:
            dist.barrier()
    if writer is not None:
        writer.close()
    return folder.best


def _resume(cfg: TrainConfig, parts: TrainingParts, runtime: Runtime) -> Progress:
    """The progress to continue from: a fresh start, or ``--resume``'s checkpoint loaded
    into ``parts`` (and the random generators restored)."""
    state = Progress()
    checkpoint = resume_path(cfg)
    if checkpoint is not None:
        saved = torch.load(checkpoint, map_location=runtime.device, weights_only=True)
        parts.load_state_dict(saved, checkpoint)
        restore_rng_state(saved["rng"])
        state = Progress(**saved["progress"])
        if runtime.is_main:
            print(f"resumed from {checkpoint} after epoch {state.epoch}", flush=True)
    if runtime.is_main:
        print(f"class weights (max {cfg.max_class_weight}): " + ", ".join(
            f"{n} {w:.2f}" for n, w in zip(LABELS, parts.class_weights, strict=True)), flush=True)
    return state


def _train_epoch(cfg: TrainConfig, parts: TrainingParts, runtime: Runtime, epoch: int) -> dict[str, float]:
    """One training epoch whose randomness (sampling, augmentation, dropout, mixup)
    depends on ``(seed, epoch)`` only, so a resumed run repeats it exactly."""
    parts.sampler.set_epoch(epoch)
    devices = [runtime.device] if runtime.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(cfg.seed * 1_000_003 + epoch)
        metrics = train_one_epoch(
            parts.trained, parts.train_loader, parts.train_loss_fn, parts.optimizer, parts.scheduler,
            parts.scaler, runtime, epoch=epoch, grad_clip=cfg.grad_clip,
            limit_batches=cfg.limit_batches, log_every=cfg.log_every, progress=cfg.progress,
            average=parts.average, mixup_alpha=cfg.mixup_alpha, sam_rho=cfg.sam_rho,
        )
    return {"epoch": epoch + 1, "lr": parts.scheduler.get_last_lr()[0], **metrics}


def _network_of_epoch(
    cfg: TrainConfig, parts: TrainingParts, runtime: Runtime, epoch: int, metrics: dict[str, float]
) -> tuple[ChestXrayResNet, ChestXrayResNet | None]:
    """``(selected, averaged)``: the network this epoch validates and exports (the raw
    weights, their moving average, or from the first stochastic-averaging epoch on the
    stochastic average), and that stochastic average when it was made usable this epoch
    (batch-norm recomputed: ``last.ckpt`` saves it)."""
    selected = parts.average.module if parts.average is not None else parts.model
    if parts.swa is None or epoch < cfg.epochs - cfg.swa_epochs:
        return selected, None
    parts.swa.update()
    metrics["swa_models"] = parts.swa.count
    # without validation only the last epoch's average is exported: one batch-norm pass
    if cfg.validate or epoch + 1 == cfg.epochs:
        averaged = parts.swa.network(parts.swa_loader, runtime)
        return averaged, averaged
    return selected, None


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
