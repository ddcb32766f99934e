"""Training throughput of the real training step on synthetic batches.

``python -m benchmarks.bench_train [--device cuda] [--batch-size 256] [--steps 50] [--compile]``

Runs :func:`training.fitting.loop.train_one_epoch` (AdamW, focal loss, gradient clipping,
warm-up/cosine schedule) on one synthetic ``(B, 3, S, S)`` batch kept on the device, so
the figure is the model's training speed without data loading: bf16 autocast and
``channels_last`` on CUDA by default, ``--compile`` for ``torch.compile``.  ``--warmup``
steps run first (and the compilation, with ``--compile``) and are not timed.  Target on
one H100 at 224 px: >= 2,500 images/s.  The last line is a JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence

import torch

from training.fitting.config import DataConfig, TrainConfig
from training.fitting.loop import make_schedule, train_one_epoch
from training.fitting.losses import FocalWeightedLoss
from training.fitting.runtime import Runtime
from xray_app.model import build_model


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_train", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--amp", choices=("bf16", "fp16", "none"), help="default: bf16 on CUDA, none on CPU")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                        help="default: on for CUDA")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    amp = args.amp or ("bf16" if cuda else "none")
    runtime = Runtime(
        device=device,
        amp_dtype={"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[amp],
        channels_last=cuda if args.channels_last is None else args.channels_last,
    )
    if cuda:
        torch.backends.cudnn.benchmark = True  # fixed input shape: let cuDNN pick its kernels
    generator = torch.Generator().manual_seed(args.seed)
    images = torch.randn(args.batch_size, 3, args.input_size, args.input_size, generator=generator)
    targets = (torch.rand(args.batch_size, 15, generator=generator) < 0.1).float()
    batch = (images.to(device), targets.to(device))

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        model = build_model().to(device)
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    trained = torch.compile(model) if args.compile else model
    loss_fn = FocalWeightedLoss(alpha=0.5, gamma=2.0).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    cfg = TrainConfig(data=DataConfig(images="synthetic"), epochs=1, warmup_epochs=0.1)
    scheduler = make_schedule(optimizer, cfg, args.warmup + args.steps)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")

    def run(steps: int) -> dict[str, float]:
        return train_one_epoch(
            trained, [batch] * steps, loss_fn, optimizer, scheduler, scaler, runtime,
            epoch=0, grad_clip=1.0, limit_batches=None, log_every=0, progress=False,
        )

    start = time.perf_counter()
    run(args.warmup)
    if cuda:
        torch.cuda.synchronize(device)
    warmup_s = time.perf_counter() - start
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    timed = run(args.steps)  # ends with .item() on the loss: the GPU has finished
    figures = {
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "batch_size": args.batch_size,
        "input_size": args.input_size,
        "amp": amp,
        "channels_last": runtime.channels_last,
        "compile": args.compile,
        "steps": args.steps,
        "images_per_s": round(timed["train_images_per_s"], 1),
        "warmup_s": round(warmup_s, 1),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if cuda else None,
        "target_images_per_s": 2500,
        "torch": torch.__version__,
    }
    print(f"{figures['device']}: {figures['images_per_s']} images/s training at {args.input_size} px, "
          f"batch {args.batch_size}, amp {amp}, channels_last {runtime.channels_last}, "
          f"compile {args.compile} ({args.steps} timed steps after {args.warmup} warm-up)")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
