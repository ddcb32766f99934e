"""Where training runs: device, distributed rank and precision, and the two helpers
every loop uses to put a batch there (:func:`to_device`) and run under its precision
(:func:`autocast`)."""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist

from training.fitting.config import TrainConfig


class TrainingError(RuntimeError):
    """The run cannot start or continue (empty split, bad checkpoint...)."""


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


def autocast(runtime: Runtime) -> AbstractContextManager:
    """The run's mixed precision (none on the CPU unless asked for)."""
    if runtime.amp_dtype is None:
        return nullcontext()
    return torch.autocast(device_type=runtime.device.type, dtype=runtime.amp_dtype)


def to_device(images: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    """A batch of images on the run's device, in its memory layout."""
    images = images.to(runtime.device, non_blocking=True)
    if runtime.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images
