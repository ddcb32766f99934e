"""The model's 15 outputs in logit order, and parsing of NIH ``Finding Labels``.

The order is fixed: it is the order of the rows of the classification head and
of every probability vector, CSV column and JSON list in this project.  The 14
pathology names use NIH ChestX-ray14 spelling (``Pleural_Thickening`` with an
underscore); ``No Finding`` is the 15th output.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

PATHOLOGIES: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
NO_FINDING = "No Finding"
LABELS: tuple[str, ...] = (*PATHOLOGIES, NO_FINDING)
NUM_LABELS = len(LABELS)
LABEL_INDEX: dict[str, int] = {name: i for i, name in enumerate(LABELS)}
NO_FINDING_INDEX = LABEL_INDEX[NO_FINDING]

_DISPLAY_NAMES = {
    "Pleural_Thickening": "Pleural thickening",
    "Effusion": "Pleural effusion",
    NO_FINDING: "No finding",
}


def display_name(label: str) -> str:
    """Name of a label for people, e.g. ``Pleural_Thickening`` -> ``Pleural thickening``."""
    if label not in LABEL_INDEX:
        raise ValueError(f"unknown label {label!r}; expected one of {', '.join(LABELS)}")
    return _DISPLAY_NAMES.get(label, label)


DISPLAY_NAMES: tuple[str, ...] = tuple(display_name(label) for label in LABELS)


def parse_finding_labels(text: str) -> frozenset[str]:
    """Split an NIH ``Finding Labels`` string such as ``"Effusion|Mass"``.

    Names must match exactly (no substring matching); an unknown name raises
    ``ValueError`` naming it.  ``"No Finding"`` may not be combined with a pathology.
    """
    names = [part.strip() for part in str(text).split("|")]
    unknown = [name for name in names if name not in LABEL_INDEX]
    if unknown:
        raise ValueError(f"unknown finding label {unknown[0]!r} in {text!r}")
    found = frozenset(names)
    if NO_FINDING in found and len(found) > 1:
        raise ValueError(f"{NO_FINDING!r} combined with pathologies in {text!r}")
    return found


def encode_finding_labels(text: str) -> np.ndarray:
    """``(15,)`` float32 multi-hot vector in logit order for one ``Finding Labels`` string."""
    vector = np.zeros(NUM_LABELS, dtype=np.float32)
    for name in parse_finding_labels(text):
        vector[LABEL_INDEX[name]] = 1.0
    return vector


def label_matrix(texts: Iterable[str]) -> np.ndarray:
    """``(N, 15)`` float32 multi-hot matrix for N ``Finding Labels`` strings."""
    rows = [encode_finding_labels(text) for text in texts]
    if not rows:
        return np.zeros((0, NUM_LABELS), dtype=np.float32)
    return np.stack(rows)


def check_label_order(labels: Sequence[str]) -> None:
    """Raise ``ValueError`` unless ``labels`` is exactly this project's 15 labels in order."""
    if tuple(labels) != LABELS:
        raise ValueError(
            f"label order mismatch: got {list(labels)}, expected {list(LABELS)}"
        )
