"""K-fold cross-validation of one training recipe, by patient: ``python -m training.crossval``.

On a small sample a single validation split is too noisy to choose between recipes
(on the 500 shared radiographs, 100 validation patients put about ±0.06 around a mean
AUROC).  This pools the train and validation splits of the run (the test split is left
out: no fold trains or validates on it), deals their *patients* into K folds, and trains the same
configuration K times with :func:`training.fitting.loop.fit`, each time validating on one fold
and training on the others.  Every image is then validated on exactly once, by a model
that never saw its patient.

Each fold runs all its epochs (early stopping is turned off) so that the folds' curves
line up epoch by epoch.  The report gives, per epoch, the mean and spread over folds of
the validation AUROC averaged over the 14 pathologies (No Finding left out, as in
:mod:`training.evaluate`), and two summaries:

* ``final``: the last epoch; nothing was chosen on the folds, so it is unbiased;
* ``best``: the epoch with the highest fold mean; chosen on the same folds it reports,
  so slightly optimistic, and labelled so.

With ``--no-validate`` (a recipe file from a refit says so) the folds skip that
per-epoch validation, about a quarter of a fold's time on a CPU: there is then no curve,
and the figure is the out-of-fold one, so ``--out-of-fold`` (or ``--refit``) is required.

Start every fold from weights that never saw these images (``--pretrained none`` or
ImageNet): a checkpoint trained on the same sample would have seen each held-out fold.
A second stage of training (say ``--swa-epochs`` after a finished recipe) is
cross-validated with ``--continue-from CV_DIR``: fold K starts from the last epoch of
fold K of that earlier run, whose held-out patients are the same, and the refit from
its refit.  A ``--teacher`` is used on each fold's training images only.

Folds live in ``OUT/fold_K`` (each a normal training run with its own ``best/``,
``metrics.csv`` and split files), and the command resumes: a fold that finished is not
trained again and one that crashed continues from its ``last.ckpt``.  Results go to
``OUT/crossval.json`` and ``OUT/crossval_curve.csv``.

With ``--out-of-fold`` (or ``--refit``) each fold is scored on its held-out patients as
soon as it is trained (``fold_K/oof_predictions.csv``, with ``fold_K/oof_scores.json``
saying which epoch and how), ``--fold K --out-of-fold`` included, so a fold or the refit
trained on another machine needs only its folder copied back, without its ``last.ckpt``
(about 280 MB for ResNet-50 with AdamW's state): the report call finds it finished from
its ``metrics.csv`` and ``best/``, and uses the predictions in its folder.

Command line (every ``training.train`` option is accepted and applies to every fold)::

    python -m training.crossval --folds 5 [--fold-seed S] [--fold K] --config RECIPE.yaml --out runs/cv

``--fold K`` trains that fold alone, so that several GPUs or processes can each take
one (``CUDA_VISIBLE_DEVICES=K-1 ... --fold K``); once all have finished, the same
command without ``--fold`` writes the report.

``--ensemble-predictions`` writes ``OUT/ensemble_predictions.csv``: every pooled image
scored by the last epoch of every fold model, as the app scores images, the folds'
probabilities averaged (written as the logits of that mean). It is a teacher for
distillation (``--teacher``): the fold models as an ensemble, distilled into one network.
To score such a student out of fold, its teacher must not have seen the student's held-out
patients: ``--pool train`` cross-validates within the training images of a split folder
alone (its validation images join the untouched test images), so that with
``--splits OUT/fold_K --pool train`` the teacher of fold K is an ensemble trained on fold
K's training images only (docs/training.md, "A distilled ensemble").

``--refit`` then turns the recipe into a model: it trains it once more on all the
pooled train + validation images (no validation, every epoch, the last exported to
``OUT/refit/best``) and calibrates it (:mod:`training.calibrate`, into
``OUT/refit/calibrated``: thresholds and calibration fitted on the *out-of-fold*
predictions, ``OUT/oof_predictions.csv``): each pooled image scored by the
last epoch of the fold model that never saw its patient.  Those are predictions of
models of the same recipe on 1/K less data, not of the refitted model itself, so its
thresholds and calibration are estimates borrowed from its siblings; the test split is
still untouched and is what ``training.evaluate --split test`` should then measure.
With ``--mirror-average`` the out-of-fold logits average each image with its mirror
image, the refit's ``config.json`` says so (the thresholds only hold for images scored
that way), and the report's ``out_of_fold`` entry gives each fold's AUROC on those
logits and on the images as given.  ``--out-of-fold`` writes that entry without a
refit.  The weights do not depend on it (the folds run every epoch, the refit does
not validate), so finished folds can be scored either way.

The refit does not depend on the folds' results, so ``--fold refit`` trains it alone,
beside the folds on another GPU or process; the later ``--refit`` call then finds it
finished and only scores the folds out of fold and fits the thresholds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from training.calibrate import FOLD_COLUMN, CalibrationError, calibrate
from training.data.metadata import IMAGE, PATIENT, MetadataError
from training.data.predictions import Predictions, write_predictions
from training.data.run_data import RunData, load_data
from training.data.splits import SplitLeakError, Splits, check_patient_disjoint, write_splits
from training.evaluate import EvalConfig, EvaluationError, evaluate
from training.fitting.config import ConfigError, TrainConfig, parse_config
from training.fitting.loop import fit, plain_loader, predict
from training.fitting.probability_scaling import apply_calibration
from training.fitting.run_folder import RunFolder
from training.fitting.runtime import Runtime, TrainingError, make_runtime
from training.metrics.headline import auroc_by_label, mean_pathology_auroc
from xray_app.labels import LABELS, PATHOLOGIES
from xray_app.model import (
    PretrainedWeightsUnavailable,
)

REPORT_FILE = "crossval.json"
CURVE_FILE = "crossval_curve.csv"
OOF_FILE = "oof_predictions.csv"
ENSEMBLE_FILE = "ensemble_predictions.csv"  # --ensemble-predictions: the fold models' mean probability
POOLS = ("train+val", "train")  # --pool: which rows of the splits are dealt into folds
FOLD_SCORES_FILE = "oof_scores.json"  # beside a fold's own OOF_FILE: how and when it was scored
REFIT_DIR = "refit"
CALIBRATED_DIR = "calibrated"  # RUN/refit/calibrated: the refit with out-of-fold thresholds
FitFunction = Callable[[TrainConfig], Path]
Part = int | Literal["refit"]  # what --fold trains alone: fold K (from 1), or the refit


def fold_of_patients(patients: np.ndarray, folds: int, seed: int) -> dict[int, int]:
    """Deal the distinct ``patients`` into ``folds`` groups of near-equal size, in a
    seeded random order: ``{patient: fold}`` with folds numbered from 0."""
    unique = np.unique(patients)
    if not 2 <= folds <= len(unique):
        raise ConfigError(f"--folds {folds}: need 2 to {len(unique)} folds for {len(unique)} patients")
    order = np.random.default_rng(seed).permutation(len(unique))
    return {int(unique[index]): position % folds for position, index in enumerate(order)}


def pooled_rows(splits: Splits, pool: str) -> Splits:
    """``splits`` as :func:`fold_splits` should pool them: as given (``"train+val"``), or
    with ``"train"`` the training rows alone, the validation rows moved beside the test
    rows, where no fold trains or validates on them."""
    if pool not in POOLS:
        raise ConfigError(f"--pool {pool!r}: expected one of {POOLS}")
    if pool == "train+val":
        return splits
    return Splits(train=splits.train, val=splits.val.iloc[:0],
                  test=pd.concat([splits.val, splits.test], ignore_index=True),
                  method=f"{splits.method}; its training images alone cross-validated")


def fold_splits(splits: Splits, folds: int, seed: int) -> list[Splits]:
    """``folds`` splits of the pooled train + validation rows, each validating on one fold
    of patients; the test rows are carried along unchanged and never mixed in."""
    pool = pd.concat([splits.train, splits.val], ignore_index=True)
    assignment = fold_of_patients(pool[PATIENT].to_numpy(), folds, seed)
    fold = pool[PATIENT].map(assignment).to_numpy()
    result = []
    for k in range(folds):
        held_out = fold == k
        part = Splits(
            train=pool[~held_out].reset_index(drop=True),
            val=pool[held_out].reset_index(drop=True),
            test=splits.test,
            method=f"{splits.method}; train+val dealt into {folds} folds by patient "
                   f"(seed {seed}), fold {k + 1} validates",
        )
        check_patient_disjoint(part)
        result.append(part)
    return result


def fold_config(cfg: TrainConfig, run: Path) -> TrainConfig:
    """The recipe for one fold: its own folder, holding its split files; every epoch run;
    resumable."""
    return dataclasses.replace(
        cfg,
        out=str(run),
        data=dataclasses.replace(cfg.data, splits=str(run)),
        patience=cfg.epochs,
        resume="auto",
    )


def continued_from(cfg: TrainConfig, earlier: Path, part: Splits) -> TrainConfig:
    """``cfg`` starting from the last epoch of the same part (fold or refit) of an earlier
    cross-validation, ``earlier`` (its ``fold_K`` or ``refit`` folder).

    A second training stage is then cross-validated as honestly as the first: fold K's
    starting weights never saw fold K's held-out patients.  Refused when the earlier run
    trained on any image this part validates or tests on (other folds, say)."""
    checkpoint = RunFolder(earlier).checkpoint
    listing = earlier / "train.csv"
    if not checkpoint.is_file() or not listing.is_file():
        raise ConfigError(f"--continue-from: {earlier} holds no finished run ({RunFolder.CHECKPOINT} "
                          "and train.csv)")
    seen = set(pd.read_csv(listing)[IMAGE])
    leaked = seen & (set(part.val[IMAGE]) | set(part.test[IMAGE]))
    if leaked:
        raise ConfigError(
            f"--continue-from: {earlier} trained on {len(leaked)} image(s) that {earlier.name} "
            f"validates or tests on here (first: {sorted(leaked)[0]}); were its folds dealt "
            "with the same --folds, --fold-seed and splits?")
    return dataclasses.replace(cfg, pretrained=str(checkpoint))


def pathology_auroc(metrics: pd.DataFrame) -> pd.Series:
    """Per epoch: mean validation AUROC over the 14 pathologies that could be scored
    (a class with no positive in a fold has a NaN AUROC and is left out of the mean)."""
    columns = [f"val_auroc_{name}" for name in PATHOLOGIES]
    return metrics[columns].mean(axis=1, skipna=True).set_axis(metrics["epoch"].astype(int))


def validated(fold_runs: Sequence[Path]) -> bool:
    """Whether the folds validated every epoch (all of them: a mix is refused)."""
    column = f"val_auroc_{PATHOLOGIES[0]}"
    found = {column in RunFolder(run).metrics().columns for run in fold_runs}
    if len(found) > 1:
        raise TrainingError("some folds validated every epoch and some did not: train them "
                            "all with the same --validate / --no-validate")
    return found.pop()


def curve(fold_runs: Sequence[Path]) -> pd.DataFrame:
    """Epoch x fold table of pathology AUROC, with ``mean`` and ``sd`` (over folds) columns."""
    table = pd.concat(
        {f"fold_{k + 1}": pathology_auroc(RunFolder(run).metrics())
         for k, run in enumerate(fold_runs)},
        axis=1,
    )
    table.index.name = "epoch"
    folds = table.columns
    table["mean"] = table[folds].mean(axis=1)
    table["sd"] = table[folds].std(axis=1, ddof=1)
    return table


def _at(table: pd.DataFrame, epoch: int) -> dict[str, Any]:
    row = table.loc[epoch]
    folds = [c for c in table.columns if c.startswith("fold_")]
    return {"epoch": int(epoch), "mean": float(row["mean"]), "sd": float(row["sd"]),
            "folds": [round(float(row[c]), 4) for c in folds]}


def summarise(table: pd.DataFrame | None, splits: Sequence[Splits]) -> dict[str, Any]:
    """The report: sizes, the unbiased final-epoch figure and the best-epoch figure
    (neither when the folds trained without validation, ``table`` None)."""
    pooled = pd.concat([s.val for s in splits], ignore_index=True)
    report = {
        "metric": "validation AUROC, mean over the 14 pathologies, per fold",
        "folds": len(splits),
        "images": int(len(pooled)),
        "patients": int(pooled[PATIENT].nunique()),
        "fold_images": [int(len(s.val)) for s in splits],
        "test_images_left_out": int(len(splits[0].test)),
    }
    if table is None:
        return {**report, "per_epoch": "not made: the folds trained without validation; "
                                       "the figure is out_of_fold"}
    return {
        **report,
        "final": _at(table, int(table.index.max())),
        "best": {**_at(table, int(table["mean"].idxmax())),
                 "note": "epoch chosen on these same folds: slightly optimistic"},
    }


def describe(report: dict[str, Any]) -> str:
    heading = (
        f"{report['folds']}-fold cross-validation by patient on {report['images']} images / "
        f"{report['patients']} patients (train + val; {report['test_images_left_out']} test "
        "images left out)"
    )
    if "final" not in report:
        return heading + "\n  no per-epoch validation" + _describe_out_of_fold(report.get("out_of_fold"))
    final, best = report["final"], report["best"]
    return (
        heading + "\n"
        f"  validation AUROC, mean over 14 pathologies, mean ± sd over folds:\n"
        f"  final epoch {final['epoch']}: {final['mean']:.3f} ± {final['sd']:.3f}  "
        f"(folds {final['folds']})\n"
        f"  best epoch {best['epoch']} of the fold mean: {best['mean']:.3f} ± {best['sd']:.3f}  "
        "(chosen on these folds: optimistic)"
    ) + _describe_out_of_fold(report.get("out_of_fold"))


def _describe_out_of_fold(oof: dict[str, Any] | None) -> str:
    if oof is None:
        return ""
    lines = ["", "  out-of-fold predictions, last epoch (float32 on the CPU, as the app):"]
    for key, how in (("as_given", "images as given"),
                     ("mirror_average", "each image averaged with its mirror image")):
        if key in oof:
            lines.append(f"    {how}: {oof[key]['mean']:.3f} ± {oof[key]['sd']:.3f}  "
                         f"(folds {oof[key]['folds']})")
    return "\n".join(lines)


def cross_validate(
    cfg: TrainConfig, *, folds: int, seed: int, only: Part | None = None, refit: bool = False,
    score_out_of_fold: bool = False, continue_from: Path | None = None, fit_fn: FitFunction = fit,
    pool: str = "train+val", ensemble: bool = False,
) -> dict[str, Any] | None:
    """Train ``cfg`` on each fold under ``cfg.out`` and write the report there.

    ``only=K`` trains fold K (from 1) alone and returns None, so that separate processes
    or GPUs can take one fold each; ``only="refit"`` likewise trains the refit alone.  A
    later call without it trains whatever is left (nothing, once every part finished)
    and writes the report.  ``continue_from``: each part starts from the last epoch of
    the same part of that earlier cross-validation (:func:`continued_from`).
    ``score_out_of_fold`` adds the out-of-fold predictions and
    their per-fold AUROC to it; ``refit`` does too, then trains the recipe on all pooled
    images and fits its thresholds out of fold (module docstring).
    """
    if isinstance(only, int) and not 1 <= only <= folds:
        raise ConfigError(f"--fold {only}: folds are numbered 1 to {folds}")
    if not cfg.validate and not (score_out_of_fold or refit or ensemble):
        raise ConfigError("folds trained without validation (--no-validate) are only scored out of "
                          "fold: add --out-of-fold")
    if only is not None and refit:
        raise ConfigError("--refit needs every fold: give it without --fold")
    root = Path(cfg.out)
    splits = pooled_rows(load_data(cfg).splits, pool)
    if only == "refit":
        refit_recipe(cfg, splits, root, fit_fn, continue_from)
        return None
    parts = fold_splits(splits, folds, seed)
    runs = [root / f"fold_{k + 1}" for k in range(folds)]
    for k, (part, run) in enumerate(zip(parts, runs, strict=True)):
        if only is not None and k + 1 != only:
            continue
        write_splits(part, run)  # the fold's train.csv/val.csv/test.csv, read back by fit
        if not RunFolder(run).finished(cfg.epochs):
            print(f"fold {k + 1}/{folds}: train {len(part.train)} images, validate {len(part.val)}",
                  flush=True)
            fold_cfg = fold_config(cfg, run)
            if continue_from is not None:
                fold_cfg = continued_from(fold_cfg, continue_from / run.name, part)
            fit_fn(fold_cfg)
        if score_out_of_fold or refit:  # at once, so the folder is complete without last.ckpt
            fold_out_of_fold(cfg, run)
    if only is not None:
        return None
    table = curve(runs) if validated(runs) else None
    report = summarise(table, parts)
    report["train_config"] = cfg.to_dict()
    if table is not None:
        table.to_csv(root / CURVE_FILE, float_format="%.4f")
    if refit or score_out_of_fold:
        oof, scores = out_of_fold_predictions(cfg, runs, root / OOF_FILE)
        report["out_of_fold"] = out_of_fold_summary(scores, cfg.mirror_average)
    if ensemble:
        report["ensemble"] = {"predictions": str(ensemble_predictions(cfg, runs, root / ENSEMBLE_FILE)),
                              "models": len(runs), "images": len(splits.train) + len(splits.val),
                              "scored": _written(cfg), "averaged": "probabilities"}
    if refit:
        best = refit_recipe(cfg, splits, root, fit_fn, continue_from)
        calibrated, oof_report = fit_thresholds_out_of_fold(cfg, best, oof, folds)
        report["refit"] = {
            "checkpoint": str(calibrated),
            "trained": str(best),
            "trained_on": f"all {len(splits.train) + len(splits.val)} train + val images, "
                          f"last of {cfg.epochs} epochs",
            "thresholds_and_calibration": f"fitted on the out-of-fold predictions {oof}",
            "out_of_fold_report": str(oof_report),
        }
    (root / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return report


# --------------------------------------------------------------------------- parts
def out_of_fold_summary(scores: dict[str, list[float]], mirror_average: bool) -> dict[str, Any]:
    """The report's ``out_of_fold`` entry: mean, sd and per-fold AUROC of each scoring."""
    def spread(values: list[float]) -> dict[str, Any]:
        return {"mean": float(np.mean(values)),
                "sd": float(np.std(values, ddof=1)) if len(values) > 1 else float("nan"),
                "folds": [round(value, 4) for value in values]}

    return {
        "metric": "AUROC over the 14 pathologies of each fold's last epoch on its own held-out "
                  "patients, from the out-of-fold predictions: on the CPU in float32 as the app "
                  "scores images, not in the training arithmetic of 'final'",
        "written_predictions": "mirror_average" if mirror_average else "as_given",
        **{name: spread(values) for name, values in scores.items()},
    }


def pathology_mean_auroc(targets: np.ndarray, logits: np.ndarray) -> float:
    """The headline (:mod:`training.metrics.headline`): AUROC averaged over the 14 pathologies
    that have both a positive and a negative."""
    return mean_pathology_auroc(auroc_by_label(targets, logits))


def held_out_scoring(cfg: TrainConfig, run: Path) -> tuple[torch.nn.Module, RunData, Runtime]:
    """A fold's last epoch (:meth:`RunFolder.last_epoch_model`) with its data (the held-out images
    are ``data.val``) and a CPU float32 runtime: the parts to score held-out images as the
    app scores images."""
    fold = fold_config(cfg, run)
    runtime = make_runtime(dataclasses.replace(fold, device="cpu", amp="none", channels_last=False))
    return RunFolder(run).last_epoch_model(fold), load_data(fold), runtime


def score_fold_out_of_fold(cfg: TrainConfig, run: Path) -> dict[str, Any]:
    """Score a fold's held-out images with its last epoch (:func:`held_out_scoring`), as
    the refitted checkpoint will score images (``cfg.mirror_average``).  Writes the logits
    to ``RUN/oof_predictions.csv`` and returns the record also written to
    ``RUN/oof_scores.json``: the epoch scored, which logits were written, and the fold's
    AUROC over the 14 pathologies for the images as given (and, with mirror averaging,
    for the written averaged logits)."""
    model, data, runtime = held_out_scoring(cfg, run)
    loader = DataLoader(data.val, batch_size=cfg.batch_size, shuffle=False,
                        num_workers=cfg.data.num_workers)
    logits, targets, views = predict(model, loader, runtime, mirror_average=cfg.mirror_average)
    auroc = {"as_given": pathology_mean_auroc(targets.numpy(), views[:, 0].numpy())}
    if cfg.mirror_average:
        auroc["mirror_average"] = pathology_mean_auroc(targets.numpy(), logits.numpy())
    values = logits.double().numpy()
    write_predictions(Predictions(tuple(data.splits.val[IMAGE].tolist()), LABELS, values,
                                  apply_calibration(values, None)),
                      data.splits.val[PATIENT].tolist(), run / OOF_FILE)
    record = {"epoch": RunFolder(run).last_epoch(), "written": _written(cfg), "auroc": auroc}
    (run / FOLD_SCORES_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record


def _written(cfg: TrainConfig) -> str:
    return "mirror_average" if cfg.mirror_average else "as_given"


def fold_out_of_fold(cfg: TrainConfig, run: Path) -> dict[str, Any]:
    """A fold's out-of-fold record: the one in its folder when it scored the fold's last
    epoch the way ``cfg`` asks and no ``last.ckpt`` is newer, else a new scoring from
    ``last.ckpt``.  A fold trained on another machine thus needs only its small files
    copied back, not its ``last.ckpt``."""
    record_file, predictions = run / FOLD_SCORES_FILE, run / OOF_FILE
    checkpoint = RunFolder(run).checkpoint
    if record_file.is_file() and predictions.is_file():
        record = json.loads(record_file.read_text())
        newer = checkpoint.is_file() and checkpoint.stat().st_mtime > predictions.stat().st_mtime
        if record["epoch"] == RunFolder(run).last_epoch() and record["written"] == _written(cfg) and not newer:
            return record
    if not checkpoint.is_file():
        raise TrainingError(
            f"{run}: no out-of-fold predictions of its last epoch scored with "
            f"mirror_average={cfg.mirror_average} ({FOLD_SCORES_FILE}), and no {RunFolder.CHECKPOINT} "
            "to score it again: copy the fold's folder with its last.ckpt, or give the flags "
            "it was trained with")
    return score_fold_out_of_fold(cfg, run)


def out_of_fold_predictions(
    cfg: TrainConfig, runs: Sequence[Path], path: Path
) -> tuple[Path, dict[str, list[float]]]:
    """Every pooled image scored by the last epoch of the fold that validated on it
    (:func:`fold_out_of_fold`), the folds' logits written one after another to ``path``
    (a predictions CSV, as :mod:`training.evaluate` reads, with a ``fold`` column that
    :mod:`training.calibrate` cross-fits its operating points over).

    Returns the path and each fold's AUROC over the 14 pathologies: ``{"as_given": [...]}``,
    plus ``"mirror_average"`` (the written logits) when ``cfg.mirror_average``."""
    records = [fold_out_of_fold(cfg, run) for run in runs]
    frames = [pd.read_csv(run / OOF_FILE, dtype={IMAGE: str}).assign(**{FOLD_COLUMN: k + 1})
              for k, run in enumerate(runs)]
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.concat(frames, ignore_index=True).to_csv(path, index=False, float_format="%.6g")
    return path, {key: [record["auroc"][key] for record in records] for key in records[0]["auroc"]}


def ensemble_predictions(cfg: TrainConfig, runs: Sequence[Path], path: Path) -> Path:
    """Every image the folds pooled, scored by the last epoch of each fold model in ``runs``
    as the app scores it (``cfg.mirror_average``, no augmentation), the models'
    probabilities averaged; written to ``path`` as a predictions CSV whose logits are those
    of the mean probability (a ``--teacher`` file)."""
    totals: dict[str, np.ndarray] = {}
    patients: dict[str, Any] = {}
    for run in runs:
        model, data, runtime = held_out_scoring(cfg, run)
        for dataset, rows in ((data.train, data.splits.train), (data.val, data.splits.val)):
            logits = predict(model, plain_loader(cfg, dataset), runtime,
                             mirror_average=cfg.mirror_average).logits
            for name, patient, probs in zip(rows[IMAGE], rows[PATIENT],
                                            torch.sigmoid(logits.double()).numpy(), strict=True):
                totals[name] = totals.get(name, 0.0) + probs
                patients[name] = patient
    names = sorted(totals)
    mean = np.clip(np.stack([totals[name] for name in names]) / len(runs), 1e-7, 1 - 1e-7)
    return write_predictions(Predictions(tuple(names), LABELS, np.log(mean / (1 - mean)), mean),
                             [patients[name] for name in names], path)


def refit_recipe(cfg: TrainConfig, splits: Splits, root: Path, fit_fn: FitFunction = fit,
                 continue_from: Path | None = None) -> Path:
    """Train the recipe on all pooled train + validation images (no validation; the last
    epoch is exported) in ``ROOT/refit``; the test split is carried along untouched.
    ``continue_from``: start from the last epoch of that cross-validation's refit."""
    pool = pd.concat([splits.train, splits.val], ignore_index=True)
    part = Splits(train=pool, val=pool.iloc[:0], test=splits.test,
                  method=f"{splits.method}; refit on train+val")
    check_patient_disjoint(part)
    run = root / REFIT_DIR
    write_splits(part, run)
    if RunFolder(run).finished(cfg.epochs):  # here, or on another machine and copied back
        return RunFolder(run).best
    print(f"refit: train {len(pool)} images (train + val), no validation", flush=True)
    refit_cfg = dataclasses.replace(fold_config(cfg, run), validate=False)
    if continue_from is not None:
        refit_cfg = continued_from(refit_cfg, continue_from / REFIT_DIR, part)
    return fit_fn(refit_cfg)


def fit_thresholds_out_of_fold(cfg: TrainConfig, best: Path, oof: Path, folds: int,
                               calibration: str = "platt") -> tuple[Path, Path]:
    """The refitted model ``best`` with thresholds (max F1) and calibration fitted on the
    out-of-fold predictions: a new checkpoint ``RUN/calibrated`` written by
    :func:`training.calibrate.calibrate` (its record marked ``out_of_fold``), and that
    checkpoint's evaluation on the same predictions (``RUN/oof_fit/report_val.json``).
    Returns both paths."""
    calibrated, _ = calibrate(best, oof, best.parent / CALIBRATED_DIR,
                              metadata=Path(cfg.data.metadata), method=calibration,
                              split="out-of-fold", out_of_fold=folds)
    out = best.parent / "oof_fit"
    evaluate(EvalConfig(
        split="val", out=out, checkpoint=calibrated, predictions=oof, split_csv=oof,
        metadata=Path(cfg.data.metadata),
        argv=("--checkpoint", str(calibrated), "--predictions", str(oof), "--split-csv", str(oof),
              "--split", "val"),
    ))
    return calibrated, out / "report_val.json"


def fold_argument(text: str) -> Part:
    """``--fold``: a fold number, or ``refit``."""
    if text == "refit":
        return "refit"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fold number or 'refit', got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.crossval",
        description="K-fold cross-validation by patient of one training recipe "
                    "(all training.train options are accepted).",
        allow_abbrev=False,  # training.train's --out must not be read as --out-of-fold
    )
    parser.add_argument("--folds", type=int, default=5, help="number of folds (default 5)")
    parser.add_argument("--fold", type=fold_argument, default=None, metavar="K|refit",
                        help="train fold K only, or the refit only (one process or GPU each); "
                             "a call without --fold then writes the report")
    parser.add_argument("--fold-seed", type=int, default=0,
                        help="seed of the dealing of patients into folds (default 0)")
    parser.add_argument("--out-of-fold", action="store_true",
                        help="score each fold's last epoch on its held-out patients: write "
                             f"{OOF_FILE} and each fold's AUROC into the report, images as "
                             "given and, with --mirror-average, averaged with their mirror "
                             "images too (--refit does this as well); with --fold K, score "
                             "that fold as soon as it is trained, so that its folder is "
                             "complete without its last.ckpt")
    parser.add_argument("--continue-from", type=Path, default=None, metavar="CV_DIR",
                        help="a second training stage: start each fold (and the refit) from "
                             "the last epoch of the same fold of the earlier cross-validation "
                             "CV_DIR (same --folds, --fold-seed and splits), e.g. with "
                             "--swa-epochs; --pretrained is then ignored")
    parser.add_argument("--pool", choices=POOLS, default="train+val",
                        help="the rows of --splits dealt into folds: train+val (default), or "
                             "train alone, the validation rows kept out with the test rows "
                             "(cross-validation within one fold's training images: a teacher "
                             "that never saw that fold's held-out patients)")
    parser.add_argument("--ensemble-predictions", action="store_true",
                        help=f"write OUT/{ENSEMBLE_FILE}: every pooled image scored by every "
                             "fold model's last epoch, their probabilities averaged (a "
                             "--teacher file for distilling the ensemble into one network)")
    parser.add_argument("--refit", action="store_true",
                        help="after the report, train the recipe on all train + val images and "
                             "fit its thresholds and calibration on the out-of-fold predictions")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args, train_argv = build_parser().parse_known_args(argv)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        print("error: training.crossval trains its folds one after another in one process; "
              "run it without torchrun", file=sys.stderr)
        return 2
    try:
        cfg = parse_config(train_argv)
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        report = cross_validate(cfg, folds=args.folds, seed=args.fold_seed, only=args.fold,
                                refit=args.refit, score_out_of_fold=args.out_of_fold,
                                continue_from=args.continue_from, pool=args.pool,
                                ensemble=args.ensemble_predictions)
    except (ConfigError, TrainingError, MetadataError, SplitLeakError,
            PretrainedWeightsUnavailable, EvaluationError, CalibrationError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if report is None:
        done = "the refit" if args.fold == "refit" else f"fold {args.fold} of {args.folds}"
        print(f"{done} done; run again without --fold for the report")
        return 0
    print(describe(report))
    if "refit" in report:
        print(f"refit on {report['refit']['trained_on']}: {report['refit']['checkpoint']} "
              "(thresholds and calibration fitted out of fold); measure it with "
              "python -m training.evaluate --split test")
    if "ensemble" in report:
        print(f"ensemble of the {report['ensemble']['models']} fold models on "
              f"{report['ensemble']['images']} images: {report['ensemble']['predictions']}")
    print(f"report: {Path(cfg.out) / REPORT_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
