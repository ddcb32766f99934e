"""Six-view test-time augmentation scored out of fold (session 13, ``training/EXPERIMENTS.md``).

Each fold model of a finished :mod:`training.crossval` run scores its own held-out
patients six ways: the image and its mirror image, each rotated by -5, 0 and +5 degrees
about the centre (the training transform's interpolation and black fill), logits averaged.
Prints each fold's AUROC over the 14 pathologies with two views (the image and its mirror,
as the app scores) and with six, and writes the six-view predictions as a CSV that
``training.evaluate --predictions`` reads (``--compare`` the run's ``oof_predictions.csv``
for the paired difference)::

    python -m training.experiments.rotation_tta OUT.csv -- <the crossval flags, --out CV>

Needs each fold's ``last.ckpt``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import torch

from training.calibration import apply_calibration
from training.config import TrainConfig, parse_config
from training.crossval import (
    build_parser,
    held_out_scoring,
    mirror_pair_logits,
    pathology_mean_auroc,
)
from training.data import IMAGE, PATIENT
from training.predictions import Predictions, write_predictions
from xray_app.labels import LABELS
from xray_app.model import average_with_mirror

ANGLES = (-5.0, 0.0, 5.0)


def rotation(angle: float) -> A.Compose | None:
    """A fixed rotation with the training transform's interpolation and fill."""
    if angle == 0:
        return None
    return A.Compose(
        [
            A.Affine(
                rotate=(angle, angle),
                interpolation=cv2.INTER_LINEAR,
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                p=1.0,
            )
        ]
    )


def score_fold(
    cfg: TrainConfig, run: Path
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str], list]:
    """Two-view and six-view logits of a fold's held-out images, their targets, images, patients."""
    model, data, runtime = held_out_scoring(cfg, run)
    averaged = {}
    for angle in ANGLES:
        data.val.augment = rotation(angle)
        as_given, mirrored, targets = mirror_pair_logits(model, data.val, runtime, cfg)
        averaged[angle] = average_with_mirror(torch.cat([as_given, mirrored])).double().numpy()
    six = np.mean(list(averaged.values()), axis=0)
    return (
        averaged[0.0],
        six,
        targets.numpy(),
        data.splits.val[IMAGE].tolist(),
        data.splits.val[PATIENT].tolist(),
    )


def main(argv: list[str]) -> int:
    out_csv = Path(argv[0])
    args, train_argv = build_parser().parse_known_args(argv[2:])
    cfg = parse_config(train_argv)
    images, patients, logits = [], [], []
    figures: dict[str, list[float]] = {"two_view": [], "six_view": []}
    for k in range(1, args.folds + 1):
        two, six, targets, fold_images, fold_patients = score_fold(cfg, Path(cfg.out) / f"fold_{k}")
        figures["two_view"].append(pathology_mean_auroc(targets, two))
        figures["six_view"].append(pathology_mean_auroc(targets, six))
        print(
            f"fold {k}: two views {figures['two_view'][-1]:.4f}, six views {figures['six_view'][-1]:.4f}",
            flush=True,
        )
        images += fold_images
        patients += fold_patients
        logits.append(six)
    stacked = np.concatenate(logits)
    write_predictions(
        Predictions(tuple(images), LABELS, stacked, apply_calibration(stacked, None)),
        patients,
        out_csv,
    )
    summary = {
        key: {"mean": float(np.mean(v)), "sd": float(np.std(v, ddof=1)), "folds": v}
        for key, v in figures.items()
    }
    out_csv.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    for key, value in summary.items():
        print(f"{key}: {value['mean']:.3f} ± {value['sd']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
