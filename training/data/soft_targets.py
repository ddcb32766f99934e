"""Knowledge distillation from a teacher model's predictions on the training images.

With ``--teacher CSV`` (a predictions file, see :mod:`training.data.predictions`, e.g. a
stronger reference model's ``prob_<Label>`` columns) each training target the teacher
covers becomes a soft target

    target = (1 - w) * label + w * teacher_probability        (w = ``--distill-weight``)

i.e. Hinton et al.'s soft targets at temperature 1, one sigmoid output at a time.
Labels the teacher does not predict (e.g. "No Finding" for a 14-class CheXNet) and
training images it does not list keep their 0/1 NIH label.

Only the *training* split is ever softened.  Validation (model selection, calibration,
thresholds) and test are scored against the NIH labels alone, so a teacher's rows for
validation or test images are ignored and counted in the summary.  The teacher must
not have been trained on the images we validate or test on either; that is for the
user to check (the shared reference model's training split excludes all 500 shared
radiographs, see ``../shared/data/README.md``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.data.predictions import Predictions, read_predictions
from xray_app.labels import LABELS


@dataclass(frozen=True)
class DistillSummary:
    """What a teacher file contributed to one training run (recorded in provenance)."""

    teacher: str
    weight: float
    labels: tuple[str, ...]  # the outputs that get soft targets
    train_images: int  # training images in the split
    softened_images: int  # of those, listed by the teacher
    ignored_rows: int  # teacher rows for images outside the training split

    def describe(self) -> str:
        return (f"distillation from {self.teacher} (weight {self.weight:g}): soft targets for "
                f"{self.softened_images} of {self.train_images} training images on "
                f"{len(self.labels)} outputs; {self.ignored_rows} teacher rows for images "
                "outside the training split ignored")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "labels": list(self.labels)}


def soft_targets(
    names: Sequence[str], labels: np.ndarray, teacher: Predictions, weight: float
) -> tuple[np.ndarray, int, int]:
    """Mix ``(N, 15)`` 0/1 ``labels`` of images ``names`` with the teacher's probabilities.

    Returns ``(targets, softened, ignored)``: float32 targets in logit order, the number
    of ``names`` the teacher lists, and the number of teacher rows not in ``names``.
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"distill weight must be in [0, 1], got {weight}")
    if labels.shape != (len(names), len(LABELS)):
        raise ValueError(f"expected labels of shape {(len(names), len(LABELS))}, got {labels.shape}")
    row_of = {name: row for row, name in enumerate(teacher.images)}
    columns = [LABELS.index(label) for label in teacher.labels]
    targets = np.asarray(labels, dtype=np.float32).copy()
    softened = 0
    for i, name in enumerate(names):
        row = row_of.get(name)
        if row is None:
            continue
        softened += 1
        targets[i, columns] = (1.0 - weight) * targets[i, columns] + weight * teacher.probs[row]
    ignored = len(set(teacher.images) - set(names))
    return targets, softened, ignored


def distill_targets(
    teacher_csv: str | Path, names: Sequence[str], labels: np.ndarray, weight: float
) -> tuple[np.ndarray, DistillSummary]:
    """Read ``teacher_csv`` and return the training targets and their summary."""
    teacher = read_predictions(Path(teacher_csv))
    targets, softened, ignored = soft_targets(names, labels, teacher, weight)
    summary = DistillSummary(str(teacher_csv), float(weight), teacher.labels, len(names), softened, ignored)
    return targets, summary
