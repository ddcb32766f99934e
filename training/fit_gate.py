"""Fit the input gate's view head into a checkpoint and measure it on held-out images.

One command, rerun whenever the bundled model changes (its features change with it)::

    python -m training.fit_gate --checkpoint DIR --images NIH_DIR [NIH_DIR ...] \\
        --metadata Data_Entry_2017_v2020.csv.gz --ood-dir ../shared/data/ood [--seed 0] \\
        [--held-out-fraction 0.4] [--max-nih-fit N] [--max-nih-held-out N] [--device cpu] \\
        [--report FILE.json]

Steps (:func:`fit_gate`):

1. **Images and groups.**  NIH frontal films from ``--images`` (patients from
   ``--metadata``) and, from ``--ood-dir``, ``lateral/``, ``ct/`` and ``frontal/`` (frontal
   films from other hospitals) with ``sources.csv``.  Every image belongs to a group: an
   NIH patient, or an OOD source (the case, paper or collection of ``sources.csv``'s
   ``source`` URL), so that one patient's or one figure's images never sit on both sides
   of a split.
2. **Held-out split** (:func:`split_groups`): ``--held-out-fraction`` of the groups of
   each kind (NIH frontal, other frontal, lateral, CT), seeded.  Held-out images are only
   ever scored, at the end.
3. **Fit set**: the fit images as given, plus augmented variants (:func:`augment`: crops,
   rotations, mirror images, gamma and contrast, blur, JPEG re-compression, borders,
   arrows and text, as journal figures have them) and generated "other" images
   (:func:`other_images`: rendered document pages, photographs and an MR slice shipped
   with matplotlib and scikit-learn, synthetic scenes), all through the app's own
   preprocessing.  Classes: ``frontal`` (NIH and other hospitals), ``lateral``, ``ct``,
   ``other``.
4. **Levels from out-of-fold scores** (:func:`choose_levels`): a grouped K-fold over
   the fit set gives each fit image (as given) a view score from a head that never saw
   its group.  ``warn`` is the higher of the 98th percentile of the NIH frontal films'
   scores and the 90th percentile of the other hospitals' frontal films' scores;
   ``refuse`` the higher of ``warn`` and the highest score of any fit frontal film, so
   that no frontal film of the fit set would have been refused out of fold.
5. **The head** (:func:`fit_head`): multinomial logistic regression on standardised
   features (``--c``, classes balanced), fitted on the whole fit set, written into the
   checkpoint (``ood.view.*`` tensors, ``config.json``'s ``gate`` entry).
6. **Held-out figures** (:func:`held_out_figures`): per kind, the count, AUROC of the view
   score against the held-out NIH frontal films, and the share flagged (warned or
   refused) and refused, by the view check alone and by the whole gate (view + feature
   distance, as the app applies them).  Stored in the ``gate`` entry, rendered by
   :mod:`training.model_card`.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import cv2
import numpy as np
import torch
from PIL import Image, ImageDraw

from training.fitting.provenance import public_name
from training.metrics.auroc import auroc
from xray_app.gate import (
    BIAS_KEY,
    MEAN_KEY,
    METHOD,
    N_STATISTICS,
    SCALE_KEY,
    WEIGHT_KEY,
    ViewGate,
    ViewResult,
    combine,
    gate_features,
    image_statistics,
    unit_images,
)
from xray_app.model import (
    CheckpointError,
    ChestXrayResNet,
    LoadedCheckpoint,
    git_commit,
    load_checkpoint,
    save_checkpoint,
    utc_now,
)
from xray_app.ood import OodGate
from xray_app.preprocess import ImageInputError, PreprocessConfig, decode_image
from xray_app.scoring import model_input, score_sources

CLASSES = ("frontal", "lateral", "ct", "other")
# what each held-out figure is measured on; "nih" and "other_frontal" are both frontal films
KINDS = ("nih_frontal", "other_frontal", "lateral", "ct")
OOD_FOLDERS = {"lateral": "lateral", "ct": "ct", "frontal": "other_frontal"}
CLASS_OF_KIND = {"nih_frontal": "frontal", "other_frontal": "frontal", "lateral": "lateral",
                 "ct": "ct", "other": "other"}
NIH_WARN_QUANTILE = 0.98
OTHER_FRONTAL_WARN_QUANTILE = 0.90
LEVEL_RULE = (
    f"warn = max({NIH_WARN_QUANTILE:.0%} quantile of the NIH frontal films' out-of-fold view "
    f"scores, {OTHER_FRONTAL_WARN_QUANTILE:.0%} quantile of the other hospitals' frontal "
    "films' out-of-fold view scores); refuse = max(warn, highest out-of-fold view score of "
    "any fit frontal film): grouped K-fold over the fit set, held-out images never used"
)


@dataclass(frozen=True)
class GateFitConfig:
    """Everything :func:`fit_gate` needs; written into the ``gate`` entry as ``fit_config``."""

    checkpoint: Path
    images: tuple[Path, ...]
    metadata: Path
    ood_dir: Path
    held_out_fraction: float = 0.4
    max_nih_fit: int | None = None  # subsample the fit NIH films (time), None = all
    max_nih_held_out: int | None = None  # subsample the held-out NIH films, None = all
    augment_copies: int = 6  # augmented variants per fit image from --ood-dir
    nih_augment_share: float = 0.25  # share of fit NIH films that also get one variant
    n_other: int = 160  # generated "other" images
    folds: int = 5
    c: float = 0.05  # inverse L2 strength of the logistic regression
    batch_size: int = 16
    device: str = "cpu"
    seed: int = 0


@dataclass(frozen=True)
class Item:
    """One real image: its file, its kind (:data:`KINDS`) and its group."""

    path: Path
    kind: str
    group: str


# --------------------------------------------------------------------------- images
def source_group(url: str) -> str:
    """A ``sources.csv`` URL without its language parameter: one case, paper or collection."""
    parts = urlsplit(url.strip())
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k.lower() != "lang"],
                      safe="/:")
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), query, ""))


def ood_items(ood_dir: Path) -> list[Item]:
    """The images of ``ood_dir/{lateral,ct,frontal}`` with their ``sources.csv`` groups."""
    table = ood_dir / "sources.csv"
    if not table.is_file():
        raise FileNotFoundError(f"{table}: sources.csv not found (one row per image: file, source)")
    with open(table, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not {"file", "source"} <= set(rows[0]):
        raise ValueError(f"{table}: needs the columns 'file' and 'source'")
    items = []
    for row in rows:
        folder = Path(row["file"]).parts[0]
        if folder not in OOD_FOLDERS:
            continue
        path = ood_dir / row["file"]
        if not path.is_file():
            raise FileNotFoundError(f"{table}: lists {row['file']}, which is not in {ood_dir}")
        items.append(Item(path, OOD_FOLDERS[folder], "source:" + source_group(row["source"])))
    return items


def nih_items(image_dirs: Sequence[Path], metadata: Path) -> list[Item]:
    """NIH frontal films found under ``image_dirs``, grouped by patient from ``metadata``."""
    from training.data.images import find_images
    from training.data.metadata import IMAGE, PATIENT, read_metadata

    frame = read_metadata(metadata)
    patient = dict(zip(frame[IMAGE], frame[PATIENT], strict=True))
    items = []
    for directory in image_dirs:
        for name, path in sorted(find_images(directory).items()):
            if name in patient:
                items.append(Item(path, "nih_frontal", f"patient:{patient[name]}"))
    if not items:
        raise ValueError(f"no image of {[str(d) for d in image_dirs]} is listed in {metadata}")
    return items


def split_groups(items: Sequence[Item], fraction: float, seed: int) -> tuple[list[Item], list[Item]]:
    """``(fit, held_out)``: ``fraction`` of each kind's groups held out, seeded.

    A group whose images are of several kinds (a case with a lateral and a frontal film)
    is counted under its first kind and moves whole.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"held-out fraction must lie in (0, 1), got {fraction}")
    groups: dict[str, list[Item]] = defaultdict(list)
    for item in items:
        groups[item.group].append(item)
    by_kind: dict[str, list[str]] = defaultdict(list)
    for name, members in groups.items():
        by_kind[members[0].kind].append(name)
    held: set[str] = set()
    for kind in sorted(by_kind):
        names = sorted(by_kind[kind])
        # one generator per kind: a kind's split does not depend on which others are present
        order = np.random.default_rng([seed, zlib.crc32(kind.encode())]).permutation(len(names))
        held.update(names[i] for i in order[: max(1, round(fraction * len(names)))])
    fit = [item for item in items if item.group not in held]
    return fit, [item for item in items if item.group in held]


# --------------------------------------------------------------------------- augmentation
def augment(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A plausible variant of a decoded ``(H, W)`` float image in [0, 1]: how the same
    kind of image arrives from another hospital or a journal figure."""
    image = pixels.astype(np.float32)
    height, width = image.shape
    if rng.random() < 0.8:  # crop: 70-100 % of each side
        h, w = (int(s * rng.uniform(0.7, 1.0)) for s in (height, width))
        top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        image = image[top : top + h, left : left + w]
    if rng.random() < 0.5:
        image = image[:, ::-1]
    if rng.random() < 0.6:
        angle = rng.uniform(-12, 12)
        h, w = image.shape
        matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
        image = cv2.warpAffine(np.ascontiguousarray(image), matrix, (w, h),
                               borderMode=cv2.BORDER_CONSTANT, borderValue=float(rng.random() < 0.3))
    image = np.clip(image, 0, 1) ** float(np.exp(rng.normal(0, 0.3)))
    low, high = np.sort(rng.uniform(-0.1, 0.15, 2)) + np.array([0.0, 0.85])
    image = np.clip((image - low) / max(high - low, 0.2), 0, 1)
    if rng.random() < 0.3:
        image = cv2.GaussianBlur(image, (0, 0), float(rng.uniform(0.5, 2.5)))
    if rng.random() < 0.3:
        image = _border(image, rng)
    if rng.random() < 0.4:
        image = _annotate(image, rng)
    if rng.random() < 0.6:
        image = _jpeg(image, int(rng.integers(25, 95)))
    return np.ascontiguousarray(image, dtype=np.float32)


def _border(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    pad = [int(s * rng.uniform(0.0, 0.08)) for s in (*image.shape, *image.shape)]
    value = float(rng.random() < 0.5)
    return cv2.copyMakeBorder(np.ascontiguousarray(image), pad[0], pad[1], pad[2], pad[3],
                              cv2.BORDER_CONSTANT, value=value)


def _annotate(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Arrows and letters in white or black, as in journal figures."""
    out = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)  # OpenCV draws text on 8 bit
    h, w = out.shape
    colour = 255 * int(rng.random() < 0.7)
    thickness = max(1, int(min(h, w) / 150))
    for _ in range(int(rng.integers(1, 4))):
        x, y = int(rng.uniform(0.1, 0.9) * w), int(rng.uniform(0.1, 0.9) * h)
        dx, dy = (int(rng.uniform(-0.15, 0.15) * s) for s in (w, h))
        cv2.arrowedLine(out, (x + dx, y + dy), (x, y), colour, thickness, tipLength=0.3)
    letters = "ABCDLRPA0123456789"
    for _ in range(int(rng.integers(0, 3))):
        text = "".join(rng.choice(list(letters), int(rng.integers(1, 4))))
        x, y = int(rng.uniform(0.02, 0.8) * w), int(rng.uniform(0.08, 0.98) * h)
        cv2.putText(out, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, min(h, w) / 400, colour,
                    thickness, cv2.LINE_AA)
    return out.astype(np.float32) / 255.0


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    ok, encoded = cv2.imencode(".jpg", (image * 255).round().astype(np.uint8),
                               [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        return image
    return cv2.imdecode(encoded, cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255.0


# --------------------------------------------------------------------------- "other" images
def sample_photographs() -> list[np.ndarray]:
    """Grey ``(H, W)`` float images of photographs and an MR slice shipped by installed
    packages (matplotlib's sample data, scikit-learn's sample images); never stored here."""
    from matplotlib import cbook
    from sklearn.datasets import load_sample_images

    images = [np.asarray(Image.fromarray(rgb).convert("L"), np.float32) / 255.0
              for rgb in load_sample_images().images]
    for name in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png"):
        with cbook.get_sample_data(name) as handle:
            images.append(decode_image(handle.read(), name=name).pixels)
    with cbook.get_sample_data("s1045.ima.gz") as handle:  # a 256 x 256 MR slice, uint16
        mr = np.frombuffer(handle.read(), np.uint16).reshape(256, 256).astype(np.float32)
    images.append(mr / mr.max())
    return images


def document_page(rng: np.random.Generator, size: int = 512) -> np.ndarray:
    """A rendered page: lines of text, sometimes a table or a chart, on a light background."""
    page = Image.new("L", (size, int(size * rng.uniform(0.9, 1.4))), int(rng.integers(215, 256)))
    draw = ImageDraw.Draw(page)
    letters = list("abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789.,;:()")
    y = int(rng.integers(5, 30))
    while y < page.height - 15:
        if rng.random() < 0.08:  # a table or chart block
            bottom = min(page.height - 5, y + int(rng.integers(40, 140)))
            draw.rectangle((10, y, page.width - 10, bottom), outline=0)
            for x in range(10, page.width - 10, int(rng.integers(30, 120))):
                draw.line((x, y, x, bottom), fill=int(rng.integers(0, 120)))
            y = bottom + 8
            continue
        text = "".join(rng.choice(letters, int(rng.integers(10, 90))))
        draw.text((int(rng.integers(5, 25)), y), text, fill=int(rng.integers(0, 90)))
        y += int(rng.integers(9, 20))
    return np.asarray(page, np.float32) / 255.0


def other_images(n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``n`` grey non-radiographs: document pages, augmented photographs and MR slice,
    and the synthetic scenes of :func:`training.fit_ood.generate_non_radiographs`."""
    from training.fit_ood import generate_non_radiographs

    photos = sample_photographs()
    scenes = [decode_image(png).pixels for _, png in
              generate_non_radiographs(max(1, n // 4), seed=int(rng.integers(1 << 31)))]
    images: list[np.ndarray] = []
    for i in range(n):
        choice = i % 3
        if choice == 0:
            images.append(augment(document_page(rng), rng))
        elif choice == 1:
            images.append(augment(photos[int(rng.integers(len(photos)))], rng))
        else:
            images.append(scenes[int(rng.integers(len(scenes)))])
    return images


# --------------------------------------------------------------------------- features
@torch.inference_mode()
def extract_gate_inputs(
    model: ChestXrayResNet,
    pixels: Iterable[np.ndarray],
    config: PreprocessConfig,
    *,
    batch_size: int = 16,
) -> tuple[np.ndarray, np.ndarray]:
    """``(N, 2048 + N_STATISTICS)`` view-head inputs and ``(N, 2048)`` pooled features.

    Decoded ``(H, W)`` float images go through :func:`xray_app.preprocess.to_model_input`
    and the model as the app runs them (the image as given, float32 features).  ``pixels``
    may be a generator: images are consumed ``batch_size`` at a time, never all held.
    """
    features, pooled_all = [], []
    iterator = iter(pixels)
    while chunk := list(islice(iterator, batch_size)):
        # the features of the images as given, scored as the app scores them: no mirror pass
        pooled = score_sources(model, chunk, config, mirror_average=False,
                               batch_size=batch_size, features=True).features
        batch = torch.stack([model_input(p, config) for p in chunk])
        statistics = image_statistics(unit_images(batch, config.mean[0], config.std[0]))
        features.append(gate_features(torch.from_numpy(pooled), statistics).numpy())
        pooled_all.append(pooled)
    if not features:
        width = model.fc.in_features
        return np.zeros((0, width + N_STATISTICS), np.float32), np.zeros((0, width), np.float32)
    return np.concatenate(features), np.concatenate(pooled_all)


@dataclass
class FeatureSet:
    """View-head inputs of many images with their class, kind, group and whether they are
    augmented (only images as given are scored for levels and figures)."""

    features: np.ndarray  # (N, F) float32
    pooled: np.ndarray  # (N, 2048) float32
    kinds: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    augmented: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))

    @property
    def labels(self) -> np.ndarray:
        return np.array([CLASSES.index(CLASS_OF_KIND[k]) for k in self.kinds])


def decoded(items: Iterable[Item]) -> Iterator[np.ndarray]:
    """Decoded pixels of each item, one at a time, through the app's decoder (errors name
    the file)."""
    for item in items:
        yield decode_image(item.path).pixels


def build_fit_set(
    checkpoint: LoadedCheckpoint, items: Sequence[Item], cfg: GateFitConfig, rng: np.random.Generator
) -> FeatureSet:
    """The fit images as given, their augmented variants and the generated "other" images."""
    kinds: list[str] = []
    groups: list[str] = []
    augmented: list[bool] = []

    def images() -> Iterator[np.ndarray]:  # streamed: a large fit set is never all in memory
        for item, image in zip(items, decoded(items), strict=True):
            copies = cfg.augment_copies if item.kind != "nih_frontal" else int(
                rng.random() < cfg.nih_augment_share)
            for copy in range(copies + 1):
                kinds.append(item.kind)
                groups.append(item.group)
                augmented.append(copy > 0)
                yield image if copy == 0 else augment(image, rng)
        for index, image in enumerate(other_images(cfg.n_other, rng)):
            kinds.append("other")
            groups.append(f"other:{index % 20}")
            augmented.append(True)
            yield image

    features, pooled = extract_gate_inputs(checkpoint.model, images(),
                                           checkpoint.config.preprocess, batch_size=cfg.batch_size)
    return FeatureSet(features, pooled, kinds, groups, np.array(augmented))


def build_held_out_set(checkpoint: LoadedCheckpoint, items: Sequence[Item], cfg: GateFitConfig) -> FeatureSet:
    features, pooled = extract_gate_inputs(checkpoint.model, decoded(items),
                                           checkpoint.config.preprocess, batch_size=cfg.batch_size)
    return FeatureSet(features, pooled, [i.kind for i in items], [i.group for i in items],
                      np.zeros(len(items), bool))


# --------------------------------------------------------------------------- the head
def fit_head(features: np.ndarray, labels: np.ndarray, c: float, seed: int) -> dict[str, torch.Tensor]:
    """Standardisation + multinomial logistic regression -> the ``ood.view.*`` tensors.

    ``features`` ``(N, F)``, ``labels`` ``(N,)`` indices into :data:`CLASSES`; classes are
    balanced (each class weighs the same in the loss, however many images it has).
    """
    from sklearn.linear_model import LogisticRegression

    mean = features.mean(axis=0)
    scale = features.std(axis=0)
    scale = np.where(scale > 1e-6, scale, 1.0)
    model = LogisticRegression(C=c, class_weight="balanced", max_iter=2000, random_state=seed)
    model.fit((features - mean) / scale, labels)
    weight = np.zeros((len(CLASSES), features.shape[1]), np.float32)
    bias = np.full(len(CLASSES), -30.0, np.float32)  # a class absent from the fit: never chosen
    weight[model.classes_] = model.coef_
    bias[model.classes_] = model.intercept_
    return {
        MEAN_KEY: torch.from_numpy(mean.astype(np.float32)),
        SCALE_KEY: torch.from_numpy(scale.astype(np.float32)),
        WEIGHT_KEY: torch.from_numpy(weight),
        BIAS_KEY: torch.from_numpy(bias),
    }


def view_scores(tensors: dict[str, torch.Tensor], features: np.ndarray) -> np.ndarray:
    """``(N,)`` view scores ``1 - p(frontal)`` with the app's own code."""
    gate = ViewGate(CLASSES, tensors[MEAN_KEY], tensors[SCALE_KEY], tensors[WEIGHT_KEY],
                    tensors[BIAS_KEY], warn=1.0, refuse=1.0)
    return 1.0 - gate.probabilities(torch.from_numpy(features))[:, 0].numpy()


def out_of_fold_scores(data: FeatureSet, cfg: GateFitConfig) -> np.ndarray:
    """View score of every fit image from a head fitted without its group (grouped K-fold)."""
    from sklearn.model_selection import GroupKFold

    scores = np.full(len(data.kinds), np.nan)
    splitter = GroupKFold(n_splits=cfg.folds, shuffle=True, random_state=cfg.seed)
    for train, test in splitter.split(data.features, data.labels, np.array(data.groups)):
        tensors = fit_head(data.features[train], data.labels[train], cfg.c, cfg.seed)
        scores[test] = view_scores(tensors, data.features[test])
    return scores


def choose_levels(nih_scores: np.ndarray, other_frontal_scores: np.ndarray) -> tuple[float, float]:
    """``(warn, refuse)`` from out-of-fold view scores of frontal films (see :data:`LEVEL_RULE`)."""
    if nih_scores.size == 0 or other_frontal_scores.size == 0:
        raise ValueError("levels need out-of-fold scores of NIH and of other frontal films")
    warn = max(float(np.quantile(nih_scores, NIH_WARN_QUANTILE)),
               float(np.quantile(other_frontal_scores, OTHER_FRONTAL_WARN_QUANTILE)))
    refuse = max(warn, float(np.max(np.r_[nih_scores, other_frontal_scores])))
    return warn, min(refuse, 1.0)


# --------------------------------------------------------------------------- figures
def separation(negatives: np.ndarray, positives: np.ndarray) -> float | None:
    """AUROC of a score for ``positives`` against ``negatives`` (ties count half);
    None (a JSON null) when either is empty."""
    value = auroc(np.r_[np.zeros(negatives.size), np.ones(positives.size)], np.r_[negatives, positives])
    return None if np.isnan(value) else value


def held_out_figures(
    data: FeatureSet, scores: np.ndarray, warn: float, refuse: float, ood: OodGate | None
) -> dict[str, Any]:
    """Per kind: n, AUROC against NIH frontal films, flagged/refused by the view check and
    by the whole gate (view + feature distance, :func:`xray_app.gate.combine`)."""
    kinds = np.array(data.kinds)
    distance = ood.assess(torch.from_numpy(data.pooled)) if ood is not None else [None] * len(kinds)
    levels = []
    for score, dist in zip(scores, distance, strict=True):
        level = "refuse" if score > refuse else "warn" if score > warn else "ok"
        # the kind does not change the level; only the level is counted here
        levels.append(combine(ViewResult(float(score), "lateral", level, "", {}), dist).level)
    levels = np.array(levels)
    nih = scores[kinds == "nih_frontal"]
    figures: dict[str, Any] = {}
    for kind in KINDS:
        mask = kinds == kind
        count = int(mask.sum())
        if count == 0:
            continue
        view_flagged = int((scores[mask] > warn).sum())
        gate_flagged = int((levels[mask] != "ok").sum())
        figures[kind] = {
            "n": count,
            "auroc_vs_nih_frontal": None if kind == "nih_frontal" else separation(nih, scores[mask]),
            "view_flagged": view_flagged,
            "view_refused": int((scores[mask] > refuse).sum()),
            "gate_flagged": gate_flagged,
            "gate_refused": int((levels[mask] == "refuse").sum()),
            "gate_flagged_share": gate_flagged / count,
        }
    return figures


# --------------------------------------------------------------------------- the command
def fit_gate(cfg: GateFitConfig) -> dict[str, Any]:
    """Fit, choose levels, measure on held-out images and write the gate into the checkpoint.

    Returns the ``gate`` entry written to ``config.json``.
    """
    rng = np.random.default_rng(cfg.seed)
    checkpoint = load_checkpoint(cfg.checkpoint, device=cfg.device)
    items = nih_items(cfg.images, cfg.metadata) + ood_items(cfg.ood_dir)
    fit_items, _ = split_groups(items, cfg.held_out_fraction, cfg.seed)
    fit_items = _limit_nih(fit_items, cfg.max_nih_fit, rng)
    held_items = held_out_items(items, cfg.held_out_fraction, cfg.seed, cfg.max_nih_held_out)
    _progress(f"fit images {dict(Counter(i.kind for i in fit_items))}, held out "
              f"{dict(Counter(i.kind for i in held_items))}")
    fit_set = build_fit_set(checkpoint, fit_items, cfg, rng)
    _progress(f"fit set: {len(fit_set.kinds)} images with variants; out-of-fold scores")
    oof = out_of_fold_scores(fit_set, cfg)
    as_given = ~fit_set.augmented
    kinds = np.array(fit_set.kinds)
    warn, refuse = choose_levels(oof[as_given & (kinds == "nih_frontal")],
                                 oof[as_given & (kinds == "other_frontal")])
    tensors = fit_head(fit_set.features, fit_set.labels, cfg.c, cfg.seed)
    _progress("held-out images")
    held_set = build_held_out_set(checkpoint, held_items, cfg)
    ood = OodGate.from_checkpoint(checkpoint)
    held_scores = view_scores(tensors, held_set.features)
    fit_figures = held_out_figures(_subset(fit_set, as_given), oof[as_given], warn, refuse, ood)
    entry = {
        "method": METHOD,
        "classes": list(CLASSES),
        "features": f"penultimate features of the image as given (2048) + {N_STATISTICS} image "
        "statistics (xray_app.gate.image_statistics), standardised; multinomial logistic "
        "regression, classes balanced",
        "score": "1 - p(frontal)",
        "warn": warn,
        "refuse": refuse,
        "levels": LEVEL_RULE,
        "held_out": held_out_figures(held_set, held_scores, warn, refuse, ood),
        "fit_out_of_fold": fit_figures,
        "fit_images": dict(Counter(i.kind for i in fit_items)),
        "fit_with_variants": dict(Counter(fit_set.kinds)),
        "split": f"by group (NIH patient; OOD source case/paper/collection), "
        f"{cfg.held_out_fraction:.0%} of each kind's groups held out, seed {cfg.seed}",
        "held_out_groups": sorted({i.group for i in held_items if not i.group.startswith("patient:")}),
        # files and folders by name: config.json records no machine-local path
        "fit_config": {k: public_name(str(v)) if isinstance(v, Path) else v
                       for k, v in asdict(cfg).items() if k not in ("checkpoint", "images")},
        "commit": git_commit(),
        "date": utc_now(),
    }
    entry["fit_config"]["images"] = [Path(p).name for p in cfg.images]
    write_gate(checkpoint, tensors, entry)
    return entry


def _subset(data: FeatureSet, mask: np.ndarray) -> FeatureSet:
    index = np.flatnonzero(mask)
    return FeatureSet(data.features[index], data.pooled[index], [data.kinds[i] for i in index],
                      [data.groups[i] for i in index], data.augmented[index])


def held_out_items(
    items: Sequence[Item], fraction: float, seed: int, max_nih: int | None = None
) -> list[Item]:
    """The held-out images of :func:`split_groups`, at most ``max_nih`` NIH films of them
    (drawn with a generator of their own, so the fit's draws do not change)."""
    _, held = split_groups(items, fraction, seed)
    return _limit_nih(held, max_nih, np.random.default_rng([seed, 1]))


def _limit_nih(items: list[Item], limit: int | None, rng: np.random.Generator) -> list[Item]:
    nih = [i for i in items if i.kind == "nih_frontal"]
    if limit is None or len(nih) <= limit:
        return items
    keep = {nih[i].path for i in rng.choice(len(nih), limit, replace=False)}
    return [i for i in items if i.kind != "nih_frontal" or i.path in keep]


def write_gate(checkpoint: LoadedCheckpoint, tensors: dict[str, torch.Tensor], entry: dict[str, Any]) -> Path:
    """Rewrite the checkpoint with the view head: ``ood.view.*`` tensors + the ``gate`` entry.

    The weights keep their stored dtype and every other ``ood.*`` tensor is kept; the
    gate is read back through the app's loader before returning.
    """
    from training.fit_ood import stored_weight_dtype
    from xray_app.model import WEIGHTS_FILE

    directory = checkpoint.directory
    dtype = stored_weight_dtype(directory / WEIGHTS_FILE)
    extra = {**checkpoint.extra_tensors, **tensors}
    config = checkpoint.config.with_updates(gate=entry)
    save_checkpoint(checkpoint.model, config, directory, dtype=dtype, extra_tensors=extra)
    if ViewGate.from_checkpoint(load_checkpoint(directory)) is None:
        raise RuntimeError(f"{directory}: the gate entry was not written")
    return directory


def _progress(message: str) -> None:
    print(f"[gate] {message}", file=sys.stderr, flush=True)


def summary_lines(entry: dict[str, Any]) -> list[str]:
    """Readable held-out figures, one line per kind."""
    lines = [f"levels: warn {entry['warn']:.3f}, refuse {entry['refuse']:.3f}"]
    for kind, fig in entry["held_out"].items():
        auc = fig["auroc_vs_nih_frontal"]
        lines.append(
            f"held out {kind:<14} n={fig['n']:>4}  flagged {fig['gate_flagged']:>4} "
            f"({fig['gate_flagged_share']:.1%}), refused {fig['gate_refused']:>4}"
            + ("" if auc is None else f", AUROC {auc:.3f}")
        )
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.fit_gate",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint directory (rewritten)")
    parser.add_argument("--images", required=True, type=Path, nargs="+",
                        help="folders of NIH frontal films (searched recursively)")
    parser.add_argument("--metadata", required=True, type=Path, help="Data_Entry_2017*.csv[.gz]")
    parser.add_argument("--ood-dir", required=True, type=Path,
                        help="folder with lateral/, ct/, frontal/ and sources.csv")
    defaults = GateFitConfig(Path(), (), Path(), Path())
    parser.add_argument("--held-out-fraction", type=float, default=defaults.held_out_fraction)
    parser.add_argument("--max-nih-fit", type=int, default=None,
                        help="use at most N of the fit NIH films (the full NIH set is large)")
    parser.add_argument("--max-nih-held-out", type=int, default=None,
                        help="score at most N of the held-out NIH films")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--augment-copies", type=int, default=defaults.augment_copies)
    parser.add_argument("--n-other", type=int, default=defaults.n_other)
    parser.add_argument("--folds", type=int, default=defaults.folds)
    parser.add_argument("--c", type=float, default=defaults.c)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--report", type=Path, help="also write the gate entry as JSON here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = GateFitConfig(
        checkpoint=args.checkpoint, images=tuple(args.images), metadata=args.metadata,
        ood_dir=args.ood_dir, held_out_fraction=args.held_out_fraction,
        max_nih_fit=args.max_nih_fit, max_nih_held_out=args.max_nih_held_out,
        augment_copies=args.augment_copies, n_other=args.n_other, folds=args.folds, c=args.c,
        batch_size=args.batch_size, device=args.device, seed=args.seed,
    )
    from training.data.metadata import MetadataError

    try:
        entry = fit_gate(cfg)
    except (MetadataError, ImageInputError, CheckpointError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    text = json.dumps(entry, indent=2)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(text + "\n")
    print("\n".join(summary_lines(entry)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
