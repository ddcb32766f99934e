"""Input gate: flag rates per kind on the held-out images, and its cost per image.

``python -m benchmarks.bench_gate [--weights weights] [--images DIR ...] [--ood-dir DIR]``

1. Rebuilds the held-out split that :mod:`training.fit_gate` recorded in the checkpoint
   (same images, groups, fraction and seed), runs every held-out image through
   :meth:`~xray_app.predictor.Predictor.predict_batch` exactly as the app and the command
   line do, and counts per kind the images the gate flagged (warned or refused) and
   refused.  These must equal the figures stored in ``config.json``'s ``gate.held_out``
   (printed side by side).
2. Times, in one run on a batch of shared radiographs at the model's input size, the
   predictor's forward pass (:meth:`~xray_app.predictor.Predictor.infer`, which includes
   the gate) against the gate's own work on the same batch (image statistics, view head,
   feature distance, verdicts), interleaved; ``gate_vs_forward`` is the median of the
   per-pair ratios (target: a small fraction, < 0.05).

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch

from training.data.images import find_images
from training.gating.items import KINDS, held_out_items, nih_items, ood_items
from xray_app.compute import run_on_compute_thread
from xray_app.model import load_checkpoint
from xray_app.predictor import Predictor
from xray_app.preprocess import ImageInputError, preprocess

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TARGET_RATIO = 0.05


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_gate",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--weights", type=Path, default=Path("weights"))
    parser.add_argument("--images", type=Path, nargs="+",
                        default=[SHARED_DATA / "nih" / "images", SHARED_DATA / "nih" / "images_extra"])
    parser.add_argument("--metadata", type=Path,
                        default=SHARED_DATA / "nih" / "Data_Entry_2017_v2020.csv.gz")
    parser.add_argument("--ood-dir", type=Path, default=SHARED_DATA / "ood")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--max-nih", type=int, default=None,
                        help="score only the first N held-out NIH films (quicker runs)")
    return parser


def held_out_rates(predictor: Predictor, gate_entry: dict, args: argparse.Namespace) -> dict:
    """Per kind: n, flagged and refused by the app's own predict_batch."""
    fit = gate_entry["fit_config"]
    items = nih_items(args.images, args.metadata) + ood_items(args.ood_dir)
    held = held_out_items(items, float(fit["held_out_fraction"]), int(fit["seed"]),
                          fit.get("max_nih_held_out"))
    if args.max_nih is not None:
        nih = [i for i in held if i.kind == "nih_frontal"][: args.max_nih]
        held = nih + [i for i in held if i.kind != "nih_frontal"]
    counts: dict[str, Counter] = {kind: Counter() for kind in KINDS}
    outcomes = predictor.predict_batch([i.path for i in held], batch_size=args.batch_size)
    for item, outcome in zip(held, outcomes, strict=True):
        tally = counts[item.kind]
        tally["n"] += 1
        gate = getattr(outcome, "gate", None)
        if isinstance(outcome, ImageInputError):
            tally["flagged"] += 1
            tally["refused"] += int(gate is not None)
        elif outcome.gate is not None and outcome.gate.level != "ok":
            tally["flagged"] += 1
    return {
        kind: {"n": c["n"], "flagged": c["flagged"], "refused": c["refused"],
               "flagged_share": c["flagged"] / c["n"] if c["n"] else None}
        for kind, c in counts.items() if c["n"]
    }


def gate_cost(predictor: Predictor, paths: Sequence[Path], repeats: int) -> dict[str, float]:
    """Median seconds of the forward pass and of the gate's work on one batch, interleaved."""
    config = predictor.config.preprocess
    batch = torch.stack([preprocess(p, config)[0] for p in paths])
    model = predictor._model
    with torch.inference_mode():
        pooled = model.pool(model.forward_features(batch.to(predictor.device))).float()

    def forward() -> None:
        predictor.infer(batch)

    def gate() -> None:
        run_on_compute_thread(predictor._gate, batch, pooled)

    forward()
    gate()
    forward_times, gate_times, ratios = [], [], []
    for index in range(repeats):
        pair = []
        for fn in ((forward, gate) if index % 2 == 0 else (gate, forward)):
            start = time.perf_counter()
            fn()
            pair.append((fn, time.perf_counter() - start))
        times = dict((fn.__name__, t) for fn, t in pair)
        forward_times.append(times["forward"])
        gate_times.append(times["gate"])
        ratios.append(times["gate"] / times["forward"])
    n = len(paths)
    return {
        "batch": n,
        "forward_ms_per_image": 1000 * statistics.median(forward_times) / n,
        "gate_ms_per_image": 1000 * statistics.median(gate_times) / n,
        "gate_vs_forward": statistics.median(ratios),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    checkpoint = load_checkpoint(args.weights)
    entry = checkpoint.config.gate
    if not entry:
        print(f"error: {args.weights} has no gate entry; run python -m training.fit_gate first",
              file=sys.stderr)
        return 2
    predictor = Predictor(checkpoint, device="cpu")
    rates = held_out_rates(predictor, entry, args)
    for kind, figures in rates.items():
        stored = entry["held_out"].get(kind, {})
        print(f"{kind:<14} n={figures['n']:>4}  flagged {figures['flagged']:>4} "
              f"({figures['flagged_share']:.1%}), refused {figures['refused']:>4}; "
              f"config.json: flagged {stored.get('gate_flagged')} of {stored.get('n')}")
    nih_dir = args.images[0]
    found = find_images(nih_dir)
    sample = [found[name] for name in sorted(found)][: args.batch_size]
    cost = gate_cost(predictor, sample, args.repeats)
    print(f"gate {cost['gate_ms_per_image']:.2f} ms/image vs forward "
          f"{cost['forward_ms_per_image']:.1f} ms/image: ratio {cost['gate_vs_forward']:.4f} "
          f"(target < {TARGET_RATIO})")
    print(json.dumps({"held_out": rates, **cost, "target_ratio": TARGET_RATIO,
                      "weights_sha256": checkpoint.sha256}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
