"""The population the app's probabilities refer to, from a metadata table.

By default that is every film NIH ChestX-ray14 lists (112,120 films of 30,805 patients in
``Data_Entry_2017_v2020.csv.gz``): the share of films with each of the 15 labels, as NIH's
text-mined labels give it.  It is NIH's population of films as NIH took them (many
follow-up films of in-patients), not any hospital's case mix.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from training.data.metadata import PATIENT, MetadataError, labels_of, read_metadata
from xray_app.labels import LABELS, NO_FINDING_INDEX
from xray_app.population import Population

__all__ = ["VIEW", "ap_shares", "is_ap", "population_from_metadata", "population_of", "population_of_labels"]


def population_of(frame: pd.DataFrame, name: str, source: str) -> Population:
    """The 15 label prevalences of the films in ``frame`` (rows of a metadata table)."""
    return population_of_labels(labels_of(frame), name, source)


def population_of_labels(labels: np.ndarray, name: str, source: str = "") -> Population:
    """The label prevalences of ``(N, 15)`` 0/1 labels, as ``(films with the label + 0.5) /
    (films + 1)``: a label no film has keeps finite log-odds (for all 112,120 NIH films the
    correction is below 5e-6)."""
    prevalence = (np.asarray(labels).sum(axis=0) + 0.5) / (len(labels) + 1.0)
    return Population(name=name, prevalence=tuple(float(p) for p in prevalence),
                      labels=LABELS, source=source)


def population_from_metadata(path: str | Path) -> Population:
    """Every film of a metadata file, named by its count of films and patients."""
    frame = read_metadata(path)
    name = (f"all {len(frame):,} NIH ChestX-ray14 films "
            f"({frame[PATIENT].nunique():,} patients)")
    source = f"label shares of every film listed in {Path(path).name}"
    return population_of(frame, name, source)


VIEW = "View Position"


def is_ap(frame: pd.DataFrame) -> np.ndarray:
    """``(N,)`` booleans: the rows of a metadata table whose View Position is AP."""
    if VIEW not in frame.columns:
        raise MetadataError(f"the metadata has no {VIEW!r} column, needed for view position")
    return (frame[VIEW].astype(str).str.upper() == "AP").to_numpy()


def ap_shares(frame: pd.DataFrame) -> tuple[float, float]:
    """The share of AP films among No-Finding films and among films with a pathology."""
    ap = is_ap(frame)
    normal = labels_of(frame)[:, NO_FINDING_INDEX] > 0
    return float(ap[normal].mean()), float(ap[~normal].mean())
