"""Heatmap localisation against NIH's radiologist boxes (``BBox_List_2017.csv``).

    python -m training.localize (--checkpoint DIR | --folds CV_DIR) --images DIR --bboxes CSV
        --out DIR [--threshold 0.5] [--random-draws 100] [--seed 0] [--box-space 1024]

For every box whose image is in ``--images``, the heatmap of the box's class (the
Predictor's Grad-CAM, :attr:`xray_app.predictor.Prediction.cams`, computed at the model's
input size over the whole image) is resized bilinearly to the box coordinate space:
NIH's boxes are in the 1024 x 1024 pixels of the released PNGs, whatever the image
files here measure (the shared copies are 512 px; the metadata's ``OriginalImage``
size is the pre-release DICOM size, *not* the box space).  Images are mapped onto that
space by a plain resize, as the app stretches inputs to its square input.

Metrics, per box:

* **pointing game**: the heatmap's maximum (the first in row-major order) falls inside
  the box (pixel centres inside ``[x, x + w] x [y, y + h]``);
* **IoBB** (intersection over the detected box, Wang et al. 2017): the map is
  thresholded at ``threshold`` x its maximum (0.5 by default) and
  ``IoBB = |box n highlighted| / |highlighted|``; a box is a *hit* at IoBB >= 0.1 and
  at IoBB >= 0.5.

A map without any positive value (Grad-CAM with no evidence for the class) points
nowhere: a pointing miss and IoBB 0.

Baselines on the same boxes: **centre** = an isotropic Gaussian centred on the image
(sigma = a quarter of the side), and **random** = uniform noise drawn at the heatmap's
native resolution (input size / 32, e.g. 7 x 7) and resized the same way; its figures
are means over ``--random-draws`` seeded draws.

**Out of fold** (``--folds CV_DIR``, a :mod:`training.crossval` folder): each boxed image
is scored by the last epoch of the one fold that held its patient out (as that
cross-validation's out-of-fold predictions were made), so no heatmap comes from a
network that trained on its image.  A checkpoint refitted on every image has seen all the
boxed ones, so its own maps would be scored on its training images; its localisation
figures come from its recipe's folds instead.

Writes ``loc.json`` (run description and counts at the top level, ``per_class`` with
flat ``<metric>_<method>`` entries, ``per_box``) and ``loc.md``; every figure is reported with its box and image
counts, measured from the images actually present (with the 500 shared radiographs:
9 boxes on 9 images).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from training.fitting.provenance import public_folder, public_name
from xray_app.labels import LABEL_INDEX
from xray_app.model import LoadedCheckpoint
from xray_app.predictor import Predictor

BOX_COLUMNS = ("Image Index", "Finding Label", "Bbox [x", "y", "w", "h]")
BOX_LABEL_NAMES = {"Infiltrate": "Infiltration"}  # BBox_List spelling -> our label
BOX_SPACE = 1024
IOBB_HITS = (0.1, 0.5)
METHODS = ("gradcam", "centre", "random")


class BoxFileError(ValueError):
    """The box list is missing, malformed or names an unknown finding."""


@dataclass(frozen=True)
class Box:
    """One radiologist box in box-space pixels (origin top-left, x to the right)."""

    image: str
    label: str  # one of xray_app.labels.LABELS
    x: float
    y: float
    w: float
    h: float


def read_boxes(path: str | Path) -> list[Box]:
    """Read ``BBox_List_2017.csv``; box labels are mapped onto the model's label names."""
    path = Path(path)
    try:
        frame = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise BoxFileError(f"{path}: cannot read the box list ({error})") from None
    missing = [c for c in BOX_COLUMNS if c not in frame.columns]
    if missing:
        raise BoxFileError(f"{path}: missing column(s) {missing}; found {list(frame.columns)[:8]}")
    boxes = []
    for row, values in enumerate(frame[list(BOX_COLUMNS)].itertuples(index=False), start=2):
        image, finding, x, y, w, h = values
        label = BOX_LABEL_NAMES.get(str(finding).strip(), str(finding).strip())
        if label not in LABEL_INDEX:
            raise BoxFileError(f"{path} line {row}: unknown finding {finding!r}")
        if not (np.isfinite([x, y, w, h]).all() and w > 0 and h > 0):
            raise BoxFileError(f"{path} line {row}: bad box {x}, {y}, {w}, {h}")
        boxes.append(Box(str(image).strip(), label, float(x), float(y), float(w), float(h)))
    return boxes


# --------------------------------------------------------------------------- metrics
def box_mask(box: Box, shape: tuple[int, int]) -> np.ndarray:
    """``(H, W)`` bool: pixels whose centres lie inside the box."""
    height, width = shape
    cols = (np.arange(width) + 0.5 >= box.x) & (np.arange(width) + 0.5 <= box.x + box.w)
    rows = (np.arange(height) + 0.5 >= box.y) & (np.arange(height) + 0.5 <= box.y + box.h)
    return rows[:, None] & cols[None, :]


def pointing_hit(heatmap: np.ndarray, box: Box) -> bool:
    """The map's (first) maximum lies inside the box; a map with no positive value misses."""
    if not float(heatmap.max()) > 0:
        return False
    row, col = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    return bool(box_mask(box, heatmap.shape)[row, col])


def iobb(heatmap: np.ndarray, box: Box, threshold: float = 0.5) -> float:
    """``|box n {heatmap >= threshold * max}| / |{heatmap >= threshold * max}|`` in [0, 1]."""
    peak = float(heatmap.max())
    if not peak > 0:
        return 0.0
    highlighted = heatmap >= threshold * peak
    return float((highlighted & box_mask(box, heatmap.shape)).sum() / highlighted.sum())


def to_box_space(heatmap: np.ndarray, size: int = BOX_SPACE) -> np.ndarray:
    """``(h, w)`` map over the whole image -> ``(size, size)`` float32 (bilinear)."""
    return cv2.resize(np.asarray(heatmap, dtype=np.float32), (size, size),
                      interpolation=cv2.INTER_LINEAR)


def centre_map(size: int = BOX_SPACE, sigma_fraction: float = 0.25) -> np.ndarray:
    """``(size, size)`` isotropic Gaussian centred on the image, peak 1."""
    axis = (np.arange(size) + 0.5 - size / 2) / (sigma_fraction * size)
    return np.exp(-0.5 * (axis[:, None] ** 2 + axis[None, :] ** 2)).astype(np.float32)


def random_map(rng: np.random.Generator, resolution: int, size: int = BOX_SPACE) -> np.ndarray:
    """Uniform noise at ``resolution`` x ``resolution`` resized to the box space."""
    return to_box_space(rng.random((resolution, resolution), dtype=np.float32), size)


@dataclass(frozen=True)
class BoxScore:
    """Metrics of one map on one box."""

    pointing: float  # 1.0 hit / 0.0 miss (a mean over draws for the random baseline)
    iobb: float
    hit_01: float  # IoBB >= 0.1
    hit_05: float  # IoBB >= 0.5


def score_box(heatmap: np.ndarray, box: Box, threshold: float = 0.5) -> BoxScore:
    value = iobb(heatmap, box, threshold)
    return BoxScore(float(pointing_hit(heatmap, box)), value,
                    float(value >= IOBB_HITS[0]), float(value >= IOBB_HITS[1]))


def mean_score(scores: Sequence[BoxScore]) -> BoxScore:
    return BoxScore(*(float(np.mean([getattr(s, f) for s in scores]))
                      for f in ("pointing", "iobb", "hit_01", "hit_05")))


def summarise(
    boxes: Sequence[Box], scores: dict[str, Sequence[BoxScore]]
) -> dict[str, dict[str, Any]]:
    """Per class (and ``"all"``): counts and each method's mean metrics."""
    groups: dict[str, list[int]] = {"all": list(range(len(boxes)))}
    for i, box in enumerate(boxes):
        groups.setdefault(box.label, []).append(i)
    table = {}
    for name, rows in groups.items():
        table[name] = {
            "boxes": len(rows),
            "images": len({boxes[i].image for i in rows}),
            **{method: asdict(mean_score([scores[method][i] for i in rows]))
               for method in scores},
        }
    return table


# --------------------------------------------------------------------------- run
def evaluate_localisation(
    boxes: Sequence[Box],
    heatmap_of: Callable[[Box], np.ndarray],
    *,
    native_resolution: int,
    threshold: float = 0.5,
    random_draws: int = 100,
    seed: int = 0,
    box_space: int = BOX_SPACE,
) -> dict[str, list[BoxScore]]:
    """Scores of the model's maps and both baselines, one per box (in ``boxes`` order)."""
    rng = np.random.default_rng(seed)
    centre = centre_map(box_space)
    scores: dict[str, list[BoxScore]] = {method: [] for method in METHODS}
    for box in boxes:
        scores["gradcam"].append(score_box(to_box_space(heatmap_of(box), box_space), box, threshold))
        scores["centre"].append(score_box(centre, box, threshold))
        draws = [score_box(random_map(rng, native_resolution, box_space), box, threshold)
                 for _ in range(random_draws)]
        scores["random"].append(mean_score(draws))
    return scores


_FLAT_NAMES = {"pointing": "pointing", "hit_01": "iobb>=0.1", "hit_05": "iobb>=0.5",
               "iobb": "mean_iobb"}


def flat_table(table: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per class one flat mapping (``boxes``, ``images``, ``<metric>_<method>``) for
    ``loc.json``, so that tables (e.g. the model card's) can list it column by column."""
    flat = {}
    for name, row in table.items():
        entry: dict[str, Any] = {"boxes": row["boxes"], "images": row["images"]}
        for metric, label in _FLAT_NAMES.items():
            for method in METHODS:
                entry[f"{label}_{method}"] = row[method][metric]
        flat[name] = entry
    return flat


def headline(report: dict[str, Any]) -> dict[str, Any]:
    """The figure a user is shown under the heatmaps (``training.bundle`` puts it into
    ``config.json``'s ``provenance.localization``): over all boxes, the share where the
    model's heatmap, random maps and a centred map put at least ``IOBB_HITS[0]`` of their
    highlighted region inside the box."""
    overall = report["per_class"]["all"]
    hits = _FLAT_NAMES["hit_01"]
    return {
        "boxes": overall["boxes"],
        "images": overall["images"],
        "heatmap": report["heatmap"],
        "out_of_fold": bool(report.get("out_of_fold")),
        "min_overlap": IOBB_HITS[0],
        "heatmap_hits": overall[f"{hits}_gradcam"],
        "random_hits": overall[f"{hits}_random"],
        "centre_hits": overall[f"{hits}_centre"],
    }


def _percent(value: float) -> str:
    return f"{100 * value:.0f} %"


def markdown_report(table: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "# Heatmap localisation against NIH boxes",
        "",
        f"Checkpoint `{meta['checkpoint']}` ({meta['model']}); {meta['boxes']} boxes on "
        f"{meta['images']} images present (of {meta['boxes_listed']} "
        f"boxes listed). Heatmaps: {meta['heatmap']}. IoBB threshold: "
        f"{meta['threshold']} x the map's maximum; random baseline: mean of "
        f"{meta['random_draws']} draws at {meta['native_resolution']} x "
        f"{meta['native_resolution']}.",
        "",
        "Each cell: Grad-CAM / centre / random.  **n** = boxes (images): with so few boxes "
        "one box moves a figure by 100/n points.",
        "",
        "| class | n | pointing game | IoBB >= 0.1 | IoBB >= 0.5 | mean IoBB |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in table.items():
        cells = []
        for metric in ("pointing", "hit_01", "hit_05"):
            cells.append(" / ".join(_percent(row[m][metric]) for m in METHODS))
        cells.append(" / ".join(f"{row[m]['iobb']:.2f}" for m in METHODS))
        lines.append(f"| {name} | {row['boxes']} ({row['images']}) | " + " | ".join(cells) + " |")
    if meta.get("out_of_fold"):
        lines += ["", "Out of fold: each image's map comes from the cross-validation fold that "
                  "held its patient out (" + "; ".join(
                      f"{name}: {len(held)}" for name, held in meta["out_of_fold"].items())
                  + " boxed images), never from a network that trained on it."]
    if meta.get("absent_classes"):
        lines += ["", "No box available here for: " + ", ".join(meta["absent_classes"]) + "."]
    if not meta.get("trained", True):
        lines += ["", "**The checkpoint is UNTRAINED (random initialisation): its heatmaps "
                  "carry no information; the figures only exercise the pipeline.**"]
    return "\n".join(lines) + "\n"


def boxes_present(boxes: Iterable[Box], images: dict[str, Path]) -> list[Box]:
    return [box for box in boxes if box.image in images]


class HeatmapScorer:
    """Grad-CAM maps of boxed images, each from the checkpoint ``owner(box)`` names (one
    Predictor per checkpoint, built on first use; one prediction per image)."""

    def __init__(self, checkpoints: dict[str, LoadedCheckpoint], owner: Callable[[Box], str],
                 images: dict[str, Path]) -> None:
        self.checkpoints, self.owner, self.images = checkpoints, owner, images
        self._predictors: dict[str, Predictor] = {}
        self._cams: dict[str, np.ndarray] = {}

    def heatmap_of(self, box: Box) -> np.ndarray:
        if box.image not in self._cams:
            name = self.owner(box)
            if name not in self._predictors:
                self._predictors[name] = Predictor(self.checkpoints[name], device="cpu")
            self._cams[box.image] = self._predictors[name].predict(self.images[box.image]).cams
        return self._cams[box.image][LABEL_INDEX[box.label]]


@dataclass(frozen=True)
class FoldModel:
    """One cross-validation fold: its last epoch and the images it held out and trained on."""

    name: str
    checkpoint: LoadedCheckpoint
    held_out: frozenset[str]
    trained_on: frozenset[str]


def fold_models(cv_dir: Path) -> list[FoldModel]:
    """Every ``CV_DIR/fold_K`` as its last finished epoch (its weight average when it kept
    one, as :meth:`training.fitting.run_folder.RunFolder.last_epoch_model` gives it to the out-of-fold
    predictions), in the exported checkpoint's preprocessing, scoring images as the fold's
    recipe did (``mirror_average``)."""
    from training.fitting.run_folder import RunFolder
    from xray_app.model import load_checkpoint

    runs = sorted((p for p in cv_dir.glob("fold_*") if p.name.removeprefix("fold_").isdigit()),
                  key=lambda p: int(p.name.removeprefix("fold_")))
    if not runs:
        raise BoxFileError(f"--folds {cv_dir}: no fold_K folder (a training.crossval output?)")
    folds = []
    for run in runs:
        folder = RunFolder(run)
        needed = (folder.config_file, folder.split_file("train"), folder.split_file("val"),
                  folder.checkpoint, folder.best)
        missing = [path.name for path in needed if not path.exists()]
        if missing:
            raise BoxFileError(f"{run}: no {', '.join(missing)}; is the fold finished?")
        recipe = folder.recipe()
        exported = load_checkpoint(folder.best)
        exported.model.load_state_dict(folder.last_epoch_model(recipe).state_dict())
        config = exported.config.with_updates(mirror_average=recipe.mirror_average)
        listed = {part: frozenset(pd.read_csv(folder.split_file(part))["Image Index"])
                  for part in ("val", "train")}
        folds.append(FoldModel(run.name, dataclasses.replace(exported, config=config),
                               listed["val"], listed["train"]))
    return folds


def out_of_fold_scorer(
    boxes: Sequence[Box], folds: Sequence[FoldModel], images: dict[str, Path]
) -> tuple[list[Box], HeatmapScorer]:
    """The boxes whose image some fold held out, and a scorer that maps each with that
    fold.  Refuses a fold listed as training on an image it holds out."""
    owner: dict[str, str] = {}
    for fold in folds:
        leaked = fold.held_out & fold.trained_on
        if leaked:
            raise BoxFileError(f"{fold.name} both trains on and holds out {sorted(leaked)[0]}")
        owner.update(dict.fromkeys(fold.held_out, fold.name))
    kept = [box for box in boxes if box.image in owner]
    if not kept:
        raise BoxFileError("no boxed image is held out by any fold")
    checkpoints = {fold.name: fold.checkpoint for fold in folds}
    return kept, HeatmapScorer(checkpoints, lambda box: owner[box.image], images)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.localize",
                                     description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="checkpoint directory")
    source.add_argument("--folds", type=Path, metavar="CV_DIR",
                        help="a training.crossval folder: score each boxed image with the last "
                             "epoch of the fold that held its patient out (out of fold)")
    parser.add_argument("--images", required=True, type=Path, nargs="+", metavar="DIR",
                        help="image folders (searched recursively)")
    parser.add_argument("--bboxes", required=True, type=Path, help="BBox_List_2017.csv")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--threshold", type=float, default=0.5,
                        help="IoBB: highlighted = map >= THRESHOLD x its maximum")
    parser.add_argument("--random-draws", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--box-space", type=int, default=BOX_SPACE,
                        help="side of the square the box coordinates refer to")
    return parser


def choose_scorer(
    args: argparse.Namespace, boxes: list[Box], images: dict[str, Path]
) -> tuple[list[Box], HeatmapScorer, LoadedCheckpoint, dict[str, Any]]:
    """The boxes to score, who scores them, the checkpoint that sets the input size, and
    how the model is described: one checkpoint, or each fold for the patients it held out."""
    from xray_app.model import load_checkpoint

    if args.folds is not None:
        folds = fold_models(args.folds)
        boxes, scorer = out_of_fold_scorer(boxes, folds, images)
        checkpoint = folds[0].checkpoint
        described = {
            "checkpoint": f"{args.folds.name} (out of fold)",
            "model": f"last epochs of the {len(folds)} folds of {args.folds.name} "
                     f"({checkpoint.config.name}), each box scored by the fold that held its "
                     f"patient out; input {checkpoint.config.input_size} px",
            "out_of_fold": {f.name: sorted({b.image for b in boxes} & f.held_out)
                            for f in folds},
        }
        return boxes, scorer, checkpoint, described
    checkpoint = load_checkpoint(args.checkpoint)
    scorer = HeatmapScorer({"checkpoint": checkpoint}, lambda box: "checkpoint", images)
    described = {
        "checkpoint": public_folder(args.checkpoint),
        "model": f"{checkpoint.config.name}, sha256 {checkpoint.sha256[:12]}, "
                 f"input {checkpoint.config.input_size} px",
    }
    return boxes, scorer, checkpoint, described


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    from training.data.images import find_images
    from training.data.metadata import MetadataError
    from training.fitting.config import ConfigError
    from training.fitting.runtime import TrainingError
    from xray_app.model import CheckpointError
    from xray_app.preprocess import ImageInputError

    try:
        all_boxes = read_boxes(args.bboxes)
        images = find_images(args.images)
        boxes = boxes_present(all_boxes, images)
        if not boxes:
            raise BoxFileError(f"none of the {len(all_boxes)} boxed images is in "
                                  f"{', '.join(map(str, args.images))}")
        boxes, scorer, checkpoint, described = choose_scorer(args, boxes, images)
        native = max(1, checkpoint.config.input_size // 32)
        scores = evaluate_localisation(
            boxes, scorer.heatmap_of, native_resolution=native, threshold=args.threshold,
            random_draws=args.random_draws, seed=args.seed, box_space=args.box_space,
        )
    except (BoxFileError, MetadataError, CheckpointError, ImageInputError, ConfigError,
            TrainingError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    table = summarise(boxes, scores)
    box_classes = sorted({b.label for b in all_boxes})
    meta = {
        **described,
        "trained": bool(checkpoint.config.trained),
        "images_dirs": public_name([str(folder) for folder in args.images]),
        "boxes": len(boxes),
        "images": len({b.image for b in boxes}),
        "boxes_listed": len(all_boxes),
        "heatmap": "Predictor Grad-CAM of the box's class (exact CAM of the linear head)",
        "threshold": args.threshold,
        "random_draws": args.random_draws,
        "native_resolution": native,
        "box_space": args.box_space,
        "absent_classes": [c for c in box_classes if c not in table],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    per_box = [{**asdict(box), "scored_by": scorer.owner(box),
                **{m: asdict(scores[m][i]) for m in METHODS}} for i, box in enumerate(boxes)]
    (args.out / "loc.json").write_text(json.dumps(
        {**meta, "per_class": flat_table(table), "per_box": per_box}, indent=2) + "\n")
    text = markdown_report(table, meta)
    (args.out / "loc.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
