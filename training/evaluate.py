"""Evaluate a checkpoint on a split: metrics with patient-bootstrap intervals, plots, reports.

    python -m training.evaluate --checkpoint DIR --split val
    python -m training.evaluate --checkpoint DIR --split test \\
        --compare ../shared/data/nih/chexnet_repro_preds.csv
    python -m training.evaluate --predictions preds.csv --split test --out DIR

Steps: find the split's images and labels -> run the model (or read ``--predictions``)
-> ``predictions_<split>.csv`` (raw logits) -> metrics at the checkpoint's own thresholds
and calibration -> ``report_<split>.json``, ``report_<split>.md``, ``roc_<split>.png``,
``pr_<split>.png``, ``reliability_<split>.png``.

Evaluation only reads the checkpoint.  Thresholds and calibration are fitted by
``python -m training.calibrate`` on validation or out-of-fold predictions (the
``predictions_val.csv`` written here is one such file), which writes a new checkpoint.

Labels always come from the NIH metadata (``--metadata``), joined by ``Image Index``.
The split's image list comes from ``--split-csv``, the images from ``--images`` (one or
more folders), the labels from ``--metadata``.

A predictions CSV has ``Image Index`` and either ``logit_<Label>`` or ``prob_<Label>``
columns (any subset of the 15 labels, e.g. a 14-class reference model).
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
import pandas as pd

from training.data.images import find_images, source_of
from training.data.metadata import FINDINGS, IMAGE, PATIENT, MetadataError, labels_of, read_metadata
from training.data.predictions import (
    Predictions,
    PredictionsFileError,
    read_predictions,
    write_predictions,
)
from training.data.splits import read_split
from training.fitting.probability_scaling import (
    DEFAULT_ECE_BINS,
    apply_calibration,
    calibration_summary,
)
from training.fitting.provenance import public_command, public_folder
from training.metrics.classification import DEFAULT_THRESHOLD, compare_auroc, per_class_metrics
from training.metrics.negatives import KINDS, auroc_by_negative
from training.metrics.population_figures import (
    population_figures,
    sample_figures,
    sample_figures_by_source,
)
from training.reports.markdown import render_markdown
from training.reports.plots import plot_pr_grid, plot_reliability, plot_roc_grid
from xray_app.flags import flag_findings
from xray_app.labels import LABELS
from xray_app.model import (
    CONFIG_FILE,
    CheckpointError,
    load_checkpoint,
    read_config,
    sha256_of,
)
from xray_app.population import PriorShift
from xray_app.preprocess import ImageInputError
from xray_app.scoring import score_images

DEFAULT_METADATA = Path("../shared/data/nih/Data_Entry_2017_v2020.csv.gz")
SPLITS = ("val", "test")


class EvaluationError(ValueError):
    """Inputs to the evaluation are missing or inconsistent; the message says which."""


# --------------------------------------------------------------------------- config
@dataclass(frozen=True)
class EvalConfig:
    """One evaluation run (filled from the command line; see :func:`build_parser`)."""

    split: str
    out: Path
    checkpoint: Path | None = None
    predictions: Path | None = None
    split_csv: Path | None = None
    images: tuple[Path, ...] | None = None
    metadata: Path | None = None
    compare: Path | None = None
    compare_name: str | None = None
    n_boot: int = 1000
    seed: int = 0
    ece_bins: int = DEFAULT_ECE_BINS
    batch_size: int = 16
    limit: int | None = None
    sources: tuple[Path, ...] | None = None
    argv: tuple[str, ...] = ()


# --------------------------------------------------------------------------- data
def split_images(path: Path) -> list[str]:
    """Image names of a split CSV (``Image Index`` column, see
    :func:`training.data.splits.read_split`)."""
    try:
        return read_split(path, required=(IMAGE,))[IMAGE].tolist()
    except MetadataError as error:
        raise EvaluationError(str(error)) from None


def truth_for(images: Sequence[str], metadata: pd.DataFrame, source: Path) -> pd.DataFrame:
    """Metadata rows (``Image Index``, ``Patient ID``, ``Finding Labels``) in ``images`` order."""
    indexed = metadata.set_index(IMAGE)
    missing = [name for name in images if name not in indexed.index]
    if missing:
        raise EvaluationError(
            f"{len(missing)} image(s) have no row in the metadata {source} "
            f"(first: {missing[0]!r})"
        )
    return indexed.loc[list(images), [PATIENT, FINDINGS]].reset_index()


# --------------------------------------------------------------------------- inference
def run_model(
    checkpoint: Path, image_paths: Sequence[Path], *, batch_size: int = 16
) -> np.ndarray:
    """``(N, 15)`` float64 logits of the checkpoint's model for the images, in order,
    scored as the app scores them (:func:`xray_app.scoring.score_images`: the app's
    preprocessing and the checkpoint's test-time policy)."""

    def progress(done: int, total: int) -> None:
        if done == total or (done // batch_size) % 50 == 0:
            print(f"inference: {done}/{total} images", file=sys.stderr)

    scored = score_images(load_checkpoint(checkpoint), image_paths, batch_size=batch_size,
                          on_batch=progress)
    return scored.logits.astype(np.float64)


# --------------------------------------------------------------------------- checkpoint config
def _read_config_dict(checkpoint: Path) -> dict[str, Any]:
    return read_config(checkpoint / CONFIG_FILE).to_dict()


# --------------------------------------------------------------------------- evaluation
def _locate(cfg: EvalConfig) -> tuple[Path | None, tuple[Path, ...] | None, Path]:
    """The split CSV, image folders and metadata, from the flags (a checkpoint records no
    machine-local path, so it cannot say where its images were)."""
    return cfg.split_csv, cfg.images, cfg.metadata or DEFAULT_METADATA


def _model_predictions(
    cfg: EvalConfig, config: dict[str, Any] | None
) -> tuple[Predictions, pd.DataFrame, dict[str, Any]]:
    """Predictions and their ground truth, from a file or by running the model."""
    split_csv, images_dir, metadata_path = _locate(cfg)
    try:
        metadata = read_metadata(metadata_path)
    except MetadataError as error:
        raise EvaluationError(str(error)) from None
    # files by base name: a report records what was evaluated, not where it lay
    sources: dict[str, Any] = {"metadata": metadata_path.name,
                               "split_csv": split_csv.name if split_csv else None}
    if cfg.predictions:
        predictions = read_predictions(cfg.predictions)
        sources["predictions"] = cfg.predictions.name
        if split_csv is not None:
            wanted = set(split_images(split_csv))
            keep = np.array([name in wanted for name in predictions.images])
            sources["predictions_outside_split"] = int((~keep).sum())
            predictions = predictions.subset(np.flatnonzero(keep))
            sources["split_images_without_prediction"] = len(wanted) - int(keep.sum())
    else:
        if cfg.checkpoint is None:
            raise EvaluationError("give --checkpoint to run a model, or --predictions CSV")
        if split_csv is None or images_dir is None:
            raise EvaluationError(
                f"to run the model on the {cfg.split} split, pass --split-csv and --images "
                "(or evaluate a --predictions file)"
            )
        names = split_images(split_csv)
        if cfg.limit:
            names = names[: cfg.limit]
        found = find_images(images_dir)
        missing = [name for name in names if name not in found]
        if missing:
            raise EvaluationError(f"{len(missing)} of {len(names)} {cfg.split} images are not "
                                  f"under {', '.join(map(str, images_dir))} (first: {missing[0]!r})")
        logits = run_model(cfg.checkpoint, [found[n] for n in names], batch_size=cfg.batch_size)
        predictions = Predictions(tuple(names), LABELS, logits, apply_calibration(logits, None))
        sources["images"] = [folder.name for folder in images_dir]
    if not predictions.images:
        raise EvaluationError(f"no images to evaluate for the {cfg.split} split")
    truth = truth_for(predictions.images, metadata, metadata_path)
    return predictions, truth, sources


def _thresholds_and_calibration(
    cfg: EvalConfig,
    config: dict[str, Any] | None,
    predictions: Predictions,
    y_true: np.ndarray,
) -> tuple[np.ndarray, dict[str, Any] | None, dict[str, Any], list[str]]:
    """The checkpoint's thresholds and calibration (``config.json``), for the evaluated
    labels; returns ``(thresholds (C,), calibration or None, description, notes)``."""
    labels = list(predictions.labels)
    index = [LABELS.index(name) for name in labels]
    notes: list[str] = []
    if config is None:
        return (np.full(len(labels), DEFAULT_THRESHOLD), None,
                {"source": f"fixed {DEFAULT_THRESHOLD}: no checkpoint, nothing chosen on validation"},
                notes)
    fitted = config.get("provenance", {}).get("validation_fit")
    thresholds = np.asarray(config["thresholds"], dtype=np.float64)[index]
    calibration = config.get("calibration")
    if calibration is not None:
        calibration = {**calibration,
                       "scale": [calibration["scale"][i] for i in index],
                       "bias": [calibration["bias"][i] for i in index]}
        if predictions.logits is None:
            notes.append("config.json holds a calibration but the predictions are "
                         "probabilities; they are used as given")
            calibration = None
    source = (f"config.json, fitted on held-out predictions of the {fitted.get('split')} split "
              f"({fitted.get('n_images')} images, method {fitted.get('threshold_method')}) by "
              "training.calibrate" if fitted
              else "config.json (never fitted on held-out predictions by training.calibrate)")
    described: dict[str, Any] = {"source": source, "validation_fit": fitted}
    if fitted and (fitted.get("split") == cfg.split or _same_predictions(fitted, cfg.predictions)):
        described["optimistic"] = ("thresholds and calibration were fitted on these very "
                                   "images; figures at the threshold are optimistic here, "
                                   "see the test report")
    return thresholds, calibration, described, notes


def _same_predictions(fitted: dict[str, Any], predictions: Path | None) -> bool:
    """Whether ``predictions`` is the very file the thresholds were fitted on."""
    record = fitted.get("predictions")
    return (predictions is not None and isinstance(record, dict)
            and record.get("sha256") == sha256_of(predictions))


def _comparison(
    cfg: EvalConfig,
    predictions: Predictions,
    probs: np.ndarray,
    thresholds: np.ndarray,
    y_true: np.ndarray,
    patients: np.ndarray,
) -> tuple[dict[str, Any], dict[str, np.ndarray], np.ndarray, list[str]] | None:
    """Both models on the images and labels they share: metrics side by side."""
    if not cfg.compare:
        return None
    other = read_predictions(cfg.compare)
    other_rows = {name: i for i, name in enumerate(other.images)}
    common_rows = np.array([i for i, name in enumerate(predictions.images) if name in other_rows],
                           dtype=int)
    labels = [name for name in predictions.labels if name in other.labels]
    if common_rows.size == 0 or not labels:
        raise EvaluationError(f"{cfg.compare} shares no images or no labels with the evaluated "
                              "predictions")
    mine = [predictions.labels.index(n) for n in labels]
    theirs = [other.labels.index(n) for n in labels]
    y = y_true[np.ix_(common_rows, mine)]
    groups = patients[common_rows]
    probs_a = probs[np.ix_(common_rows, mine)]
    probs_b = other.probs[np.ix_([other_rows[predictions.images[i]] for i in common_rows], theirs)]
    name_b = cfg.compare_name or Path(cfg.compare).stem
    # the same seed gives both models the same patient resamples: a paired comparison
    results = {
        "other_name": name_b,
        "other_file": cfg.compare.name,
        "n_images": int(common_rows.size),
        "n_patients": int(np.unique(groups).size),
        "images_only_in_this_model": int(len(predictions.images) - common_rows.size),
        "images_only_in_other": int(len(other.images) - common_rows.size),
        "labels": labels,
        "other_threshold": DEFAULT_THRESHOLD,
        "other_threshold_note": "the other model has no validation thresholds here; its "
        f"precision/recall/F1 use {DEFAULT_THRESHOLD}",
        "this_model": per_class_metrics(
            y, probs_a, thresholds[mine], groups, labels=labels,
            n_boot=cfg.n_boot, rng=np.random.default_rng(cfg.seed)),
        "other_model": per_class_metrics(
            y, probs_b, np.full(len(labels), DEFAULT_THRESHOLD), groups, labels=labels,
            n_boot=cfg.n_boot, rng=np.random.default_rng(cfg.seed)),
        "paired": compare_auroc(y, probs_a, probs_b, groups, labels=labels,
                                n_boot=cfg.n_boot, rng=np.random.default_rng(cfg.seed)),
    }
    return results, {"this model": probs_a, name_b: probs_b}, y, labels


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Run the whole evaluation described in the module docstring; returns the report."""
    config = _read_config_dict(cfg.checkpoint) if cfg.checkpoint else None
    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)

    predictions, truth, sources = _model_predictions(cfg, config)
    if not cfg.predictions:
        sources["predictions"] = write_predictions(
            predictions, truth[PATIENT].tolist(), out / f"predictions_{cfg.split}.csv").name
    labels = list(predictions.labels)
    index = [LABELS.index(name) for name in labels]
    y_true = labels_of(truth)[:, index].astype(np.int64)
    patients = truth[PATIENT].to_numpy()

    thresholds, calibration, threshold_info, notes = _thresholds_and_calibration(
        cfg, config, predictions, y_true)
    offsets = _population_offsets(config, index)
    probs = (apply_calibration(predictions.logits, calibration, offsets)
             if predictions.logits is not None and (calibration or offsets is not None)
             else predictions.probs)
    calibration_info = _calibration_info(calibration, y_true, predictions.probs, probs, labels,
                                         cfg.ece_bins)
    metrics = per_class_metrics(y_true, probs, thresholds, patients, labels=labels,
                                n_boot=cfg.n_boot, rng=np.random.default_rng(cfg.seed))
    report: dict[str, Any] = {
        "split": cfg.split,
        "command": public_command("training.evaluate", cfg.argv),
        "model": _model_info(cfg.checkpoint, config),
        "data": {**sources, "n_images": metrics["n_images"], "n_patients": metrics["n_patients"],
                 "labels_from": "NIH metadata 'Finding Labels', joined by 'Image Index'"},
        "thresholds": {**threshold_info, "values": dict(zip(labels, map(float, thresholds),
                                                          strict=True))},
        "calibration": calibration_info,
        "metrics": metrics,
        "notes": notes,
        "figures": {},
    }
    negatives = auroc_by_negative(y_true, probs, labels)
    if negatives is not None:
        report["negatives"] = negatives
    film_sources = _sources_of(cfg, predictions.images)
    by_source = per_source_headlines(cfg, film_sources, y_true, probs, thresholds, patients, labels)
    if by_source:
        report["by_source"] = by_source
    if offsets is not None and labels == list(LABELS):
        report["flags"] = flag_figures(cfg, config, predictions, calibration, probs,
                                       thresholds, y_true, patients, film_sources)
    comparison = _comparison(cfg, predictions, probs, thresholds, y_true, patients)
    curves, y_curves, curve_labels = {"this model": probs}, y_true, labels
    if comparison is not None:  # ROC/PR curves of both models on the shared images
        report["comparison"], curves, y_curves, curve_labels = comparison
    reliability = ({"before calibration": predictions.probs, "after calibration": probs}
                   if calibration else {"model": probs})
    report["figures"] = _write_figures(cfg, y_curves, curves, curve_labels,
                                       y_true, reliability, labels)
    (out / f"report_{cfg.split}.json").write_text(
        json.dumps(report, indent=2, allow_nan=False) + "\n")
    (out / f"report_{cfg.split}.md").write_text(render_markdown(report))
    return report


def _sources_of(cfg: EvalConfig, images: Sequence[str]) -> np.ndarray | None:
    """The source folder (base name) of each image, None for one in none of them; None
    when no folders are reported apart (``--sources``, or several ``--images`` folders)."""
    folders = cfg.sources or (cfg.images if cfg.images and len(cfg.images) > 1 else None)
    return np.array(source_of(images, folders), dtype=object) if folders else None


def per_source_headlines(cfg: EvalConfig, sources: np.ndarray | None, y_true: np.ndarray,
                         probs: np.ndarray, thresholds: np.ndarray, patients: np.ndarray,
                         labels: list[str]) -> dict[str, Any] | None:
    """The headline (with its patient-bootstrap interval) of the images of each source
    folder, and what its pathologies are told apart from (:mod:`training.metrics.negatives`):
    sources that were picked differently are reported apart as well as pooled."""
    if sources is None:
        return None
    out = {}
    for name in sorted({name for name in sources.tolist() if name is not None}):
        rows = np.flatnonzero(sources == name)
        metrics = per_class_metrics(y_true[rows], probs[rows], thresholds, patients[rows],
                                    labels=labels, n_boot=cfg.n_boot,
                                    rng=np.random.default_rng(cfg.seed))
        out[name] = {"n_images": metrics["n_images"], "n_patients": metrics["n_patients"],
                     "headline": metrics["headline"]}
        negatives = auroc_by_negative(y_true[rows], probs[rows], labels)
        if negatives is not None:
            out[name]["negatives"] = {kind: negatives[kind] for kind in KINDS}
    return out


def _population_offsets(config: dict[str, Any] | None, index: list[int]) -> np.ndarray | None:
    """The log-odds that move the checkpoint's calibrated probabilities to its population
    (``config.json``'s ``population``), for the evaluated labels; None without one."""
    record = (config or {}).get("population")
    if record is None:
        return None
    return PriorShift.from_dict(record).offsets()[index]


def flag_figures(cfg: EvalConfig, config: dict[str, Any], predictions: Predictions,
                 calibration: dict[str, Any] | None, probs: np.ndarray, thresholds: np.ndarray,
                 y_true: np.ndarray, patients: np.ndarray,
                 sources: np.ndarray | None = None) -> dict[str, Any]:
    """What the app's flags (:func:`xray_app.flags.flag_findings` at the checkpoint's
    operating points) do on these films, as they are and weighted to the population, and
    with each film's source folder (``sources``) on each folder's films as they are."""
    flags = flag_findings(probs, thresholds)
    sample_probs = apply_calibration(predictions.logits, calibration)
    population = PriorShift.from_dict(config["population"]).population
    rng_seed = cfg.seed
    figures = {
        "rule": (config.get("operating_points") or {}).get("description", "config.json thresholds"),
        "sample": sample_figures(y_true, sample_probs, flags, patients, n_boot=cfg.n_boot,
                                 seed=rng_seed),
        "population": population_figures(y_true, probs, flags, patients, population,
                                         n_boot=cfg.n_boot, seed=rng_seed),
    }
    if sources is not None:
        figures["by_source"] = sample_figures_by_source(
            sources, y_true, sample_probs, flags, patients, n_boot=cfg.n_boot, seed=rng_seed)
    return figures


def _calibration_info(
    calibration: dict[str, Any] | None,
    y_true: np.ndarray,
    raw_probs: np.ndarray,
    probs: np.ndarray,
    labels: list[str],
    n_bins: int,
) -> dict[str, Any]:
    """Method, per-class map and ECE before (plain sigmoid) and after calibration."""
    info: dict[str, Any] = {
        "method": calibration["method"] if calibration else None,
        "order": "calibration is fitted on validation logits first; thresholds are then "
        "chosen on the calibrated validation probabilities",
        "ece": calibration_summary(y_true, raw_probs, probs if calibration else None,
                                   labels=labels, n_bins=n_bins),
    }
    if calibration:
        info["scale"] = dict(zip(labels, calibration["scale"], strict=True))
        info["bias"] = dict(zip(labels, calibration["bias"], strict=True))
    return info


def _write_figures(
    cfg: EvalConfig,
    y_curves: np.ndarray,
    curves: dict[str, np.ndarray],
    curve_labels: list[str],
    y_true: np.ndarray,
    reliability: dict[str, np.ndarray],
    labels: list[str],
) -> dict[str, str]:
    """``roc_<split>.png``, ``pr_<split>.png``, ``reliability_<split>.png``; their names."""
    split, out = cfg.split, cfg.out
    roc = plot_roc_grid(y_curves, curves, curve_labels, out / f"roc_{split}.png",
                        f"ROC curves, {split} split")
    pr = plot_pr_grid(y_curves, curves, curve_labels, out / f"pr_{split}.png",
                      f"Precision-recall curves, {split} split")
    diagram = plot_reliability(y_true, reliability, labels, out / f"reliability_{split}.png",
                               f"Reliability, {split} split", n_bins=cfg.ece_bins)
    return {"roc": roc.name, "pr": pr.name, "reliability": diagram.name}


def _model_info(checkpoint: Path | None, config: dict[str, Any] | None) -> dict[str, Any]:
    if config is None:
        return {"checkpoint": None, "note": "predictions file only; no checkpoint"}
    return {
        "checkpoint": public_folder(checkpoint) if checkpoint else None,
        "name": config.get("name"),
        "architecture": config.get("architecture"),
        "trained": config.get("trained"),
        "input_size": config.get("input_size"),
        "provenance": config.get("provenance", {}),
    }


# --------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.evaluate",
        description="Evaluate a checkpoint (or a predictions CSV) on the val or test split.")
    parser.add_argument("--checkpoint", type=Path, help="checkpoint directory (config.json + "
                        "model.safetensors)")
    parser.add_argument("--split", choices=SPLITS, required=True)
    parser.add_argument("--predictions", type=Path,
                        help="evaluate this predictions CSV instead of running the model")
    parser.add_argument("--split-csv", type=Path, help="the split's CSV (Image Index column)")
    parser.add_argument("--images", type=Path, nargs="+", metavar="DIR",
                        help="folders searched recursively for the images")
    parser.add_argument("--metadata", type=Path,
                        help=f"NIH Data_Entry CSV with the labels (default {DEFAULT_METADATA})")
    parser.add_argument("--compare", type=Path,
                        help="another model's predictions CSV (prob_<Label> columns) to score "
                        "side by side on the shared images")
    parser.add_argument("--compare-name", help="name of that model in the report")
    parser.add_argument("--out", type=Path,
                        help="output folder (default: CHECKPOINT/eval)")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    parser.add_argument("--ece-bins", type=int, default=DEFAULT_ECE_BINS)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--limit", type=int, help="only the first N images (smoke runs)")
    parser.add_argument("--sources", type=Path, nargs="+", metavar="DIR",
                        help="image folders that are separate sources: the headline is also "
                        "reported per folder (default: the --images folders, when several)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.checkpoint is None and args.predictions is None:
        parser.error("give --checkpoint, --predictions, or both")
    if args.out is None:
        if args.checkpoint is None:
            parser.error("--out is required without --checkpoint")
        args.out = args.checkpoint / "eval"
    cfg = EvalConfig(**vars(args), argv=tuple(argv))
    try:
        report = evaluate(cfg)
    except (EvaluationError, PredictionsFileError, MetadataError, CheckpointError, ImageInputError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    headline = report["metrics"]["headline"]
    print(_headline_text(headline, report["metrics"]["n_images"], report["metrics"]["n_patients"]))
    if "comparison" in report:
        comp = report["comparison"]
        print(f"{comp['other_name']}: "
              + _headline_text(comp["other_model"]["headline"], comp["n_images"],
                               comp["n_patients"]))
    print(f"wrote {cfg.out / f'report_{cfg.split}.md'} and .json", file=sys.stderr)
    return 0


def _headline_text(headline: dict[str, Any], n_images: int, n_patients: int) -> str:
    if headline["value"] is None:
        return f"{headline['name']}: undefined ({headline['reason']})"
    return (f"{headline['name']}: {headline['value']:.3f} (95% CI {headline['ci_low']:.3f}-"
            f"{headline['ci_high']:.3f}, bootstrap by patient, {n_images} images, "
            f"{n_patients} patients)")


if __name__ == "__main__":
    raise SystemExit(main())
