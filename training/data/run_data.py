"""One training run's data: its splits, restricted to the images at hand, as datasets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from training.data.augment import build_augment
from training.data.datasets import CachedImages, FileImages, XrayDataset
from training.data.image_cache import ImageCache
from training.data.images import Availability, find_images, keep_available, source_of
from training.data.metadata import IMAGE, labels_of, read_metadata
from training.data.prevalence import ap_shares, is_ap, population_of
from training.data.sampling import folder_balanced, raked_factors, repeat_factors
from training.data.soft_targets import DistillSummary, distill_targets
from training.data.splits import Splits, prepare_splits, read_splits
from training.fitting.auxiliary_outputs import (
    auxiliary_columns,
    configured_traits,
    folder_column,
    metadata_traits,
    with_auxiliary_columns,
)
from training.fitting.runtime import TrainingError

if TYPE_CHECKING:
    from training.fitting.config import TrainConfig


@dataclass
class RunData:
    """The datasets of one run and what they were made from."""

    train: XrayDataset
    val: XrayDataset
    train_labels: np.ndarray
    factors: np.ndarray
    splits: Splits
    availability: Availability
    source: str
    distill: DistillSummary | None = None


def load_data(cfg: TrainConfig) -> RunData:
    """Splits (from files or made here), restricted to the images we have, as datasets."""
    data = cfg.data
    if data.cache:
        cache = ImageCache(data.cache)
        names: set[str] = cache.available_names()
        source = f"a uint8 cache of the images at {cache.size} px"
    else:
        paths = find_images(data.images)
        names = set(paths)
        source = "image files, decoded as they are read"
    if data.splits:
        splits = read_splits(data.splits)
        parts = {}
        for name, part in splits.items():
            parts[name], _ = keep_available(part, names)
        availability = Availability(
            sum(len(p) for _, p in splits.items()), sum(len(p) for p in parts.values()), ()
        )
        splits = Splits(parts["train"], parts["val"], parts["test"], splits.method)
    else:
        splits, availability = prepare_splits(
            data.metadata,
            image_names=names,
            split_lists=data.split_lists,
            val_fraction=data.val_fraction,
            test_fraction=data.test_fraction,
            seed=cfg.seed,
        )
    checked = (("train", splits.train), ("val", splits.val)) if cfg.validate else (("train", splits.train),)
    for name, part in checked:
        if len(part) == 0:
            raise TrainingError(
                f"the {name} split is empty with the {availability.available} available images "
                f"({splits.method}); with a partial download use the patient-random split "
                "(no --split-lists), or download the images the lists name"
            )

    def dataset(part: pd.DataFrame, train: bool, labels: np.ndarray | None = None) -> XrayDataset:
        if data.cache:
            images = CachedImages(cache, part[IMAGE].tolist())
        else:
            images = FileImages([paths[n] for n in part[IMAGE]])
        return XrayDataset(
            images,
            labels_of(part) if labels is None else labels,
            input_size=data.input_size,
            augment=build_augment(cfg.augment, train=train),
        )

    train_labels = labels_of(splits.train)
    factors = sampling_factors(cfg, splits.train, train_labels)
    targets, distill = training_targets(cfg, splits.train, train_labels)
    return RunData(
        dataset(splits.train, True, targets), dataset(splits.val, False), train_labels, factors,
        splits, availability, source, distill,
    )


def sampling_factors(cfg: TrainConfig, train: pd.DataFrame, labels: np.ndarray) -> np.ndarray:
    """How often each training film is drawn per epoch, by ``cfg.sampling``: repeat factors
    (raked to the metadata's mix with ``raked``; rescaled per source folder with ``folders``)."""
    if cfg.sampling == "raked":
        return raked_training_factors(cfg.data.metadata, train, labels)
    factors = repeat_factors(
        labels,
        no_finding_fraction=cfg.no_finding_fraction,
        repeat_threshold=cfg.repeat_threshold,
        max_repeat=cfg.max_repeat,
    )
    if cfg.sampling == "folders":
        folders = [Path(folder) for folder in cfg.data.source_folders or ()]
        try:
            factors = folder_balanced(factors, source_of(train[IMAGE].tolist(), folders))
        except ValueError as error:
            raise TrainingError(f"--sampling folders: {error}") from None
    return factors


def training_targets(
    cfg: TrainConfig, train: pd.DataFrame, labels: np.ndarray
) -> tuple[np.ndarray | None, DistillSummary | None]:
    """What the loss is trained toward when it is not the 0/1 labels alone: soft targets
    from ``--teacher``, then the auxiliary outputs' traits as columns after the 15 findings.
    None (the labels) without either. The sampler and class weights count the 0/1 labels."""
    targets, distill = None, None
    if cfg.teacher:
        targets, distill = distill_targets(cfg.teacher, train[IMAGE].tolist(), labels, cfg.distill_weight)
    traits = list(configured_traits(cfg))
    if traits:
        from_metadata = metadata_traits(traits)
        needs_rows = bool(from_metadata) or cfg.folder_adversary_within_view
        rows = metadata_rows(read_metadata(cfg.data.metadata), train) if needs_rows else None
        columns = []
        if from_metadata:
            columns.append(auxiliary_columns(rows, from_metadata))
        if cfg.folder_adversary_weight > 0:
            columns.append(folder_targets(cfg, train, labels, is_ap(rows) if cfg.folder_adversary_within_view else None))
        targets = with_auxiliary_columns(labels if targets is None else targets, np.concatenate(columns, axis=1))
    return targets, distill


def folder_targets(cfg: TrainConfig, train: pd.DataFrame, labels: np.ndarray,
                   ap: np.ndarray | None = None) -> np.ndarray:
    """``--folder-adversary-weight``'s hidden target: which of the two ``--source-folders``
    each No-Finding training film came from, within each view given ``ap`` (:func:`folder_column`)."""
    folders = [Path(folder) for folder in cfg.data.source_folders or ()]
    try:
        return folder_column(source_of(train[IMAGE].tolist(), folders), [f.name for f in folders], labels, ap)
    except ValueError as error:
        raise TrainingError(f"--folder-adversary-weight: {error}") from None


def raked_training_factors(metadata: str, train: pd.DataFrame, labels: np.ndarray) -> np.ndarray:
    """:func:`~training.data.sampling.raked_factors` toward every film of ``metadata``:
    its label prevalences and its AP shares within normal and abnormal films."""
    frame = read_metadata(metadata)
    population = population_of(frame, "the metadata's films", "label shares")
    return raked_factors(labels, is_ap(metadata_rows(frame, train)), population.as_array(), *ap_shares(frame))


def metadata_rows(frame: pd.DataFrame, part: pd.DataFrame) -> pd.DataFrame:
    """The rows of the metadata table ``frame`` for the films of ``part``, in ``part``'s order."""
    return frame.set_index(IMAGE).loc[part[IMAGE]]
