"""Fit the out-of-distribution gate of a checkpoint and measure how well it separates.

Steps (:func:`attach_ood_gate`):

1. penultimate features (the ``(2048,)`` global average pool, as the app computes them) of
   the **training** images -> mean and Ledoit-Wolf-shrunk covariance
   (:func:`~training.gating.feature_distance.fit_feature_stats`); stored as the whitening
   matrix ``W = S^(-1/2)`` in its exact compact form ``W = outside I + basis^T diag(coef)
   basis`` (a dense 2048 x 2048 matrix would be 16 MB), so that the app's score
   ``|| W (f - mean) ||`` is the Mahalanobis distance (:mod:`xray_app.ood`);
2. the same distance for the **validation** radiographs -> the two levels
   (:func:`~training.gating.feature_distance.choose_levels`): ``warn`` = the 99th
   percentile of validation scores (about 1 in 100 genuine radiographs gets a warning),
   ``refuse`` = ``median + 2 x (warn - median)``, i.e. twice as far above the typical
   radiograph as the warning level;
3. non-radiographs generated in code
   (:func:`~training.gating.synthetic.generate_non_radiographs`: colour fields, noise,
   gradients, checkerboards, text-like pages, "dead leaves" photograph-like scenes) go
   through the app's decoding and preprocessing; the AUROC of the distance for validation
   radiographs (negatives) against them (positives) is the separation figure stored as
   ``validation_auroc``.  The test split is never read.

The result is written back into the checkpoint: tensors ``ood.mean`` ``(D,)``,
``ood.basis`` ``(k, D)``, ``ood.coef`` ``(k,)`` and ``ood.outside`` ``(1,)`` in
``model.safetensors`` (weights keep their stored dtype; an older dense ``ood.whitening``
is dropped) and the description and levels in ``config.json``'s ``ood`` entry.  The ``model.safetensors`` sha256 changes: publish
after this step.

Command line::

    python -m training.fit_ood --checkpoint RUN/best --images DIR --split-dir RUN
        [--max-train N] [--max-val N] [--n-generated 64] [--batch-size 16] [--seed 0]
        [--report FILE.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.gating.checkpoint import rewrite_checkpoint
from training.gating.feature_distance import (
    REFUSE_FACTOR,
    WARN_QUANTILE,
    choose_levels,
    fit_feature_stats,
    ood_score,
    separation_auroc,
)
from training.gating.features import extract_features
from training.gating.items import split_images, subsample
from training.gating.synthetic import GENERATED_KINDS, generate_non_radiographs
from xray_app.model import CheckpointError, LoadedCheckpoint, load_checkpoint
from xray_app.ood import DENSE_WHITENING_KEY, METHOD, OodGate
from xray_app.preprocess import ImageInputError, Source

FEATURE_DESCRIPTION = "penultimate (global average pool of layer4, 2048-d)"


@dataclass(frozen=True)
class OodFit:
    """What :func:`fit_ood_gate` computed (nothing written yet)."""

    stats: dict[str, torch.Tensor]
    entry: dict[str, Any]  # config.json's ood entry
    val_scores: np.ndarray
    generated_scores: np.ndarray
    generated_kinds: tuple[str, ...]

    def report(self) -> dict[str, Any]:
        """Summary for people: levels, AUROC, and who gets warned/refused."""
        warn, refuse = self.entry["warn"], self.entry["refuse"]
        per_kind = {}
        kinds = np.array(self.generated_kinds)
        for kind in dict.fromkeys(self.generated_kinds):
            scores = self.generated_scores[kinds == kind]
            per_kind[kind] = {
                "n": int(scores.size),
                "median_score": float(np.median(scores)),
                "share_warned_or_refused": float(np.mean(scores > warn)),
                "share_refused": float(np.mean(scores > refuse)),
            }
        return {
            **self.entry,
            "val_median_score": float(np.median(self.val_scores)),
            "val_share_warned_or_refused": float(np.mean(self.val_scores > warn)),
            "val_share_refused": float(np.mean(self.val_scores > refuse)),
            "generated_share_warned_or_refused": float(np.mean(self.generated_scores > warn)),
            "generated_share_refused": float(np.mean(self.generated_scores > refuse)),
            "generated_per_kind": per_kind,
        }


def fit_ood_gate(
    checkpoint: LoadedCheckpoint,
    train_sources: Sequence[Source | np.ndarray],
    val_sources: Sequence[Source | np.ndarray],
    *,
    n_generated: int = 64,
    seed: int = 0,
    batch_size: int = 16,
) -> OodFit:
    """Statistics on ``train_sources``, levels and AUROC on ``val_sources`` + generated images."""
    if len(train_sources) < 2 or len(val_sources) < 1:
        raise ValueError(
            f"need >= 2 training and >= 1 validation images, got {len(train_sources)} and "
            f"{len(val_sources)}"
        )
    config = checkpoint.config.preprocess
    model = checkpoint.model
    stats = fit_feature_stats(extract_features(model, train_sources, config, batch_size=batch_size))
    val_scores = ood_score(extract_features(model, val_sources, config, batch_size=batch_size), stats)
    warn, refuse = choose_levels(val_scores)
    generated = generate_non_radiographs(n_generated, seed=seed)
    gen_features = extract_features(model, [png for _, png in generated], config, batch_size=batch_size)
    gen_scores = ood_score(gen_features, stats)
    entry = {
        "method": METHOD,
        "feature": FEATURE_DESCRIPTION,
        "covariance": "Ledoit-Wolf shrinkage; whitening W = S^(-1/2) = outside I + basis^T "
        "diag(coef) basis; tensors ood.mean (D,), ood.basis (k, D), ood.coef (k,), "
        "ood.outside (1,)",
        "warn": warn,
        "refuse": refuse,
        "levels": f"warn = {WARN_QUANTILE:.0%} quantile of validation radiographs; refuse = "
        f"median + {REFUSE_FACTOR:g} x (warn - median)",
        "n_train": len(train_sources),
        "n_val": len(val_sources),
        "n_generated": n_generated,
        "validation_auroc": separation_auroc(val_scores, gen_scores),
        "validation_auroc_meaning": "validation radiographs vs generated non-radiographs "
        f"({', '.join(GENERATED_KINDS)})",
    }
    return OodFit(stats, entry, val_scores, gen_scores, tuple(k for k, _ in generated))


def write_ood_gate(checkpoint: LoadedCheckpoint, fit: OodFit) -> Path:
    """Rewrite the checkpoint with the gate: tensors + ``config.json``'s ``ood`` entry.

    Other ``ood.*`` tensors are kept, except an older dense ``ood.whitening`` (which the
    compact tensors replace); the weights keep their stored dtype.
    """
    kept = {k: v for k, v in checkpoint.extra_tensors.items() if k != DENSE_WHITENING_KEY}
    extra = {**kept, **fit.stats}
    # read back through the app's own loader: the gate must be usable as written
    reloaded = rewrite_checkpoint(checkpoint, checkpoint.config.with_updates(ood=fit.entry), extra)
    if OodGate.from_checkpoint(reloaded) is None:
        raise RuntimeError(f"{checkpoint.directory}: the ood entry was not written")
    return checkpoint.directory


def attach_ood_gate(
    checkpoint_dir: str | Path,
    train_sources: Sequence[Source | np.ndarray],
    val_sources: Sequence[Source | np.ndarray],
    **kwargs: Any,
) -> dict[str, Any]:
    """Fit and write the gate into ``checkpoint_dir``; returns the report (for ``fit``'s end)."""
    checkpoint = load_checkpoint(checkpoint_dir)
    fit = fit_ood_gate(checkpoint, train_sources, val_sources, **kwargs)
    write_ood_gate(checkpoint, fit)
    return fit.report()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.fit_ood", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint directory")
    parser.add_argument("--images", required=True, type=Path, nargs="+", metavar="DIR",
                        help="image folders (searched recursively)")
    parser.add_argument("--split-dir", required=True, type=Path,
                        help="folder with train.csv/val.csv/test.csv (or RUN/splits/)")
    parser.add_argument("--max-train", type=int, default=None, help="subsample training images")
    parser.add_argument("--max-val", type=int, default=None, help="subsample validation images")
    parser.add_argument("--n-generated", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report", type=Path, help="also write the report as JSON here")
    args = parser.parse_args(argv)
    from training.data.metadata import MetadataError
    from training.data.splits import SplitLeakError

    try:
        train, val = split_images(args.split_dir, args.images)
        rng = np.random.default_rng(args.seed)
        train, val = subsample(train, args.max_train, rng), subsample(val, args.max_val, rng)
        report = attach_ood_gate(
            args.checkpoint, train, val,
            n_generated=args.n_generated, seed=args.seed, batch_size=args.batch_size,
        )
    except (MetadataError, SplitLeakError, ImageInputError, CheckpointError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    text = json.dumps(report, indent=2)
    print(text)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(text + "\n")
    print(
        f"OOD gate written to {args.checkpoint}: warn {report['warn']:.2f}, refuse "
        f"{report['refuse']:.2f}; AUROC validation radiographs vs {report['n_generated']} "
        f"generated non-radiographs = {report['validation_auroc']:.3f} "
        f"(n_train {report['n_train']}, n_val {report['n_val']})",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
