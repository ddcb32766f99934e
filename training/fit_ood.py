"""Fit the out-of-distribution gate of a checkpoint and measure how well it separates.

Steps (:func:`attach_ood_gate`):

1. penultimate features (the ``(2048,)`` global average pool, as the app computes them) of
   the **training** images -> mean and Ledoit-Wolf-shrunk covariance
   (:func:`fit_feature_stats`); stored as the whitening matrix ``W = S^(-1/2)`` in its
   exact compact form ``W = outside I + basis^T diag(coef) basis`` (a dense 2048 x 2048
   matrix would be 16 MB), so that the app's score ``|| W (f - mean) ||`` is the
   Mahalanobis distance (:mod:`xray_app.ood`);
2. the same distance for the **validation** radiographs -> the two levels
   (:func:`choose_levels`): ``warn`` = the 99th percentile of validation scores (about 1 in
   100 genuine radiographs gets a warning), ``refuse`` = ``median + 2 x (warn - median)``,
   i.e. twice as far above the typical radiograph as the warning level;
3. non-radiographs generated in code (:func:`generate_non_radiographs`: colour fields,
   noise, gradients, checkerboards, text-like pages, "dead leaves" photograph-like
   scenes) go through the app's decoding and preprocessing; the AUROC of the distance
   for validation radiographs (negatives) against them (positives) is the separation
   figure stored as ``validation_auroc``.  The test split is never read.

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
import io
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from safetensors import safe_open

from training.metrics.auroc import auroc
from xray_app.model import (
    WEIGHTS_FILE,
    CheckpointError,
    ChestXrayResNet,
    LoadedCheckpoint,
    load_checkpoint,
    save_checkpoint,
)
from xray_app.ood import (
    BASIS_KEY,
    COEF_KEY,
    DENSE_WHITENING_KEY,
    MEAN_KEY,
    METHOD,
    OUTSIDE_KEY,
    OodGate,
    mahalanobis_score,
)
from xray_app.preprocess import (
    ImageInputError,
    PreprocessConfig,
    Source,
)
from xray_app.scoring import score_sources

FEATURE_DESCRIPTION = "penultimate (global average pool of layer4, 2048-d)"
WARN_QUANTILE = 0.99
REFUSE_FACTOR = 2.0
GENERATED_KINDS = (
    "colour_field",
    "uniform_noise",
    "gaussian_noise",
    "linear_gradient",
    "radial_gradient",
    "checkerboard",
    "text_page",
    "dead_leaves",
)
_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}


# --------------------------------------------------------------------------- features
def extract_features(
    model: ChestXrayResNet,
    sources: Sequence[Source | np.ndarray],
    config: PreprocessConfig,
    *,
    batch_size: int = 16,
) -> np.ndarray:
    """``(N, 2048)`` float32 pooled penultimate features of N images as given, scored by
    :func:`xray_app.scoring.score_images` (the app's preprocessing and forward pass).

    A source is a file (path, bytes) or an already decoded ``(H, W)`` grey array (uint8
    from the training cache, or float in [0, 1]).
    """
    # features describe the images as given, so no mirror pass is needed for them
    return score_sources(model, sources, config, mirror_average=False, batch_size=batch_size,
                         features=True).features


# --------------------------------------------------------------------------- statistics
def fit_feature_stats(features: np.ndarray) -> dict[str, torch.Tensor]:
    """Mean and compact whitening matrix of ``(N, D)`` training features (N >= 2).

    The covariance is Ledoit-Wolf-shrunk towards a scaled identity,
    ``S = (1 - delta) C + delta mu I`` (``C`` the empirical covariance, ``mu = tr(C) / D``,
    ``delta`` from :func:`sklearn.covariance.ledoit_wolf_shrinkage`), which keeps it
    invertible when N < D (2048) and stabilises the small eigenvalues.

    ``W = S^(-1/2)`` (symmetric, ``W W^T = S^-1``) is returned in its exact compact form
    ``W = outside I + basis^T diag(coef) basis``: float32 tensors ``{"mean": (D,),
    "basis": (k, D), "coef": (k,), "outside": (1,)}`` with ``k = min(N, D)``.  ``basis``
    holds ``S``'s eigenvectors (orthonormal rows) with shrunk eigenvalues ``s``, ``coef =
    1 / sqrt(s) - outside``, and ``outside = 1 / sqrt(delta mu)`` is ``W`` on the
    complement of the data's span.  When N < D only a thin SVD of the N x D data is
    needed; when N >= D the basis is all D eigenvectors (the complement is empty).  The
    arithmetic is float64; only the result is rounded.
    """
    from sklearn.covariance import ledoit_wolf_shrinkage

    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"need (N >= 2, D) features, got shape {features.shape}")
    n, d = features.shape
    mean = features.mean(axis=0)
    centred = features - mean
    delta = float(ledoit_wolf_shrinkage(centred, assume_centered=True))
    if n < d:
        _, singular, basis = np.linalg.svd(centred, full_matrices=False)  # basis (N, D)
        eigenvalues = singular**2 / n
    else:
        eigenvalues, vectors = np.linalg.eigh(centred.T @ centred / n)
        basis = vectors.T
    floor_value = delta * float((centred**2).sum()) / (n * d)  # delta * mu
    shrunk = (1.0 - delta) * eigenvalues + floor_value
    if floor_value <= 0 and (basis.shape[0] < d or shrunk.min() <= 0):
        raise ValueError("the feature covariance is singular (constant features?)")
    shrunk = np.maximum(shrunk, shrunk.max() * 1e-12)
    outside = 1.0 / np.sqrt(floor_value) if floor_value > 0 else 0.0
    coef = 1.0 / np.sqrt(shrunk) - outside
    return {
        MEAN_KEY: torch.from_numpy(mean.astype(np.float32)),
        BASIS_KEY: torch.from_numpy(np.ascontiguousarray(basis, dtype=np.float32)),
        COEF_KEY: torch.from_numpy(coef.astype(np.float32)),
        OUTSIDE_KEY: torch.tensor([outside], dtype=torch.float32),
    }


def ood_score(features: np.ndarray, stats: dict[str, torch.Tensor]) -> np.ndarray:
    """``(N, D)`` features -> ``(N,)`` Mahalanobis distances (the app's function)."""
    scores = mahalanobis_score(
        torch.as_tensor(np.asarray(features, dtype=np.float32)),
        stats[MEAN_KEY], stats[BASIS_KEY], stats[COEF_KEY], stats[OUTSIDE_KEY],
    )
    return scores.numpy()


def choose_levels(
    val_scores: np.ndarray,
    *,
    warn_quantile: float = WARN_QUANTILE,
    refuse_factor: float = REFUSE_FACTOR,
) -> tuple[float, float]:
    """``(warn, refuse)`` from the scores of held-out (validation) radiographs.

    ``warn`` = the ``warn_quantile`` quantile (1 % of genuine radiographs warned);
    ``refuse`` = ``median + refuse_factor * (warn - median)``: far beyond anything seen
    among genuine radiographs, so a refusal is very unlikely to hit a real chest film.
    """
    scores = np.asarray(val_scores, dtype=np.float64).ravel()
    if scores.size == 0 or not np.isfinite(scores).all():
        raise ValueError("need at least one finite validation score to choose levels")
    if refuse_factor < 1:
        raise ValueError(f"refuse_factor must be >= 1, got {refuse_factor}")
    median = float(np.median(scores))
    warn = float(np.quantile(scores, warn_quantile))
    return warn, median + refuse_factor * (warn - median)


def separation_auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """AUROC of the score for out-of-distribution (positive) vs radiographs (negative)."""
    y = np.r_[np.zeros(len(in_scores)), np.ones(len(out_scores))]
    return auroc(y, np.r_[in_scores, out_scores])


def _smooth_field(rng: np.random.Generator, size: int, channels: int, cells: int) -> np.ndarray:
    """Low-frequency random field in [0, 1], ``(size, size, channels)``."""
    coarse = rng.random((cells, cells, channels)).astype(np.float32)
    image = Image.fromarray((coarse * 255).astype(np.uint8).squeeze())
    return np.asarray(image.resize((size, size), Image.Resampling.BICUBIC), np.float32) / 255.0


def _generate_one(kind: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """One ``(size, size, 3)`` uint8 RGB image of the given kind."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if kind == "colour_field":
        rgb = _smooth_field(rng, size, 3, int(rng.integers(3, 12)))
    elif kind == "uniform_noise":
        rgb = rng.random((size, size, 3))
    elif kind == "gaussian_noise":
        grey = np.clip(rng.normal(0.5, 0.2, (size, size, 1)), 0, 1)
        rgb = np.repeat(grey, 3, axis=2)
    elif kind == "linear_gradient":
        angle = rng.uniform(0, 2 * np.pi)
        ramp = (np.cos(angle) * xx + np.sin(angle) * yy)
        ramp = (ramp - ramp.min()) / (np.ptp(ramp) + 1e-6)
        low, high = rng.random(3), rng.random(3)
        rgb = low + ramp[..., None] * (high - low)
    elif kind == "radial_gradient":
        cy, cx = rng.uniform(0.2, 0.8, 2)
        radius = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
        ramp = radius / radius.max()
        low, high = rng.random(3), rng.random(3)
        rgb = low + ramp[..., None] * (high - low)
    elif kind == "checkerboard":
        cells = int(rng.integers(2, 17))
        board = ((np.floor(xx * cells) + np.floor(yy * cells)) % 2)[..., None]
        a, b = rng.random(3), rng.random(3)
        rgb = a + board * (b - a)
    elif kind == "text_page":
        page = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(200, 256, 3)))
        draw = ImageDraw.Draw(page)
        letters = "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789.,"
        for line_y in range(4, size - 10, int(rng.integers(10, 18))):
            text = "".join(rng.choice(list(letters), int(rng.integers(10, size // 6))))
            draw.text((int(rng.integers(2, 12)), line_y), text, fill=(0, 0, 0))
        return np.asarray(page, dtype=np.uint8)
    elif kind == "dead_leaves":  # occluding coloured discs: natural-image-like statistics
        scene = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(scene)
        for _ in range(int(rng.integers(40, 120))):
            r = float(size * rng.uniform(0.02, 0.25) ** 1.5 * 3)
            cx, cy = rng.uniform(0, size, 2)
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
        return np.asarray(scene, dtype=np.uint8)
    else:
        raise ValueError(f"unknown kind {kind!r}; expected one of {GENERATED_KINDS}")
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def generate_non_radiographs(
    n: int, *, seed: int, size: int = 256
) -> list[tuple[str, bytes]]:
    """``n`` PNG-encoded non-radiographs ``(kind, png_bytes)``, cycling through the kinds.

    PNG bytes go through the app's own decoding (colour -> grey, range scaling), so the
    gate is evaluated on what the app would actually see.
    """
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        kind = GENERATED_KINDS[i % len(GENERATED_KINDS)]
        buffer = io.BytesIO()
        Image.fromarray(_generate_one(kind, rng, size)).save(buffer, format="PNG")
        images.append((kind, buffer.getvalue()))
    return images


# --------------------------------------------------------------------------- checkpoint
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


def stored_weight_dtype(weights_path: Path) -> torch.dtype:
    """dtype of the classification head in ``model.safetensors`` (to re-save unchanged)."""
    with safe_open(str(weights_path), framework="pt") as handle:
        return _DTYPES.get(handle.get_slice("fc.weight").get_dtype(), torch.float32)


def write_ood_gate(checkpoint: LoadedCheckpoint, fit: OodFit) -> Path:
    """Rewrite the checkpoint with the gate: tensors + ``config.json``'s ``ood`` entry.

    Other ``ood.*`` tensors are kept, except an older dense ``ood.whitening`` (which the
    compact tensors replace); the weights keep their stored dtype.
    """
    directory = checkpoint.directory
    dtype = stored_weight_dtype(directory / WEIGHTS_FILE)
    kept = {k: v for k, v in checkpoint.extra_tensors.items() if k != DENSE_WHITENING_KEY}
    extra = {**kept, **fit.stats}
    config = checkpoint.config.with_updates(ood=fit.entry)
    save_checkpoint(checkpoint.model, config, directory, dtype=dtype, extra_tensors=extra)
    # read back through the app's own loader: the gate must be usable as written
    reloaded = load_checkpoint(directory)
    if OodGate.from_checkpoint(reloaded) is None:
        raise RuntimeError(f"{directory}: the ood entry was not written")
    return directory


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


# --------------------------------------------------------------------------- command line
def _split_images(split_dir: Path, images: Sequence[Path]) -> tuple[list[Path], list[Path]]:
    from training.data.images import find_images
    from training.data.metadata import IMAGE
    from training.data.splits import read_splits

    directory = split_dir if (split_dir / "train.csv").is_file() else split_dir / "splits"
    splits = read_splits(directory)  # checks patient-disjointness; test names are not used
    found = find_images(images)
    train = [found[n] for n in splits.train[IMAGE] if n in found]
    val = [found[n] for n in splits.val[IMAGE] if n in found]
    return train, val


def _subsample(paths: list[Path], limit: int | None, rng: np.random.Generator) -> list[Path]:
    if limit is None or len(paths) <= limit:
        return paths
    return [paths[i] for i in sorted(rng.choice(len(paths), limit, replace=False))]


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
        train, val = _split_images(args.split_dir, args.images)
        rng = np.random.default_rng(args.seed)
        train, val = _subsample(train, args.max_train, rng), _subsample(val, args.max_val, rng)
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
