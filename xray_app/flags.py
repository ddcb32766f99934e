"""What a flag is: the one rule that turns probabilities and operating points into flags.

A **flag** is a claim a clinician may act on: "this finding's probability is at or above
its operating point".  Each of the 14 pathologies is flagged on its own.  "No Finding" is
not a pathology but the claim that none is present, so it is never flagged beside one:

* a pathology is flagged when ``probability >= threshold``;
* "No Finding" is flagged when its own probability is at or above its threshold **and** no
  pathology is flagged.

Everything that flags (the JSON's ``positive``, the app's table, captions and report, the
DICOM SR's present/absent, FHIR's interpretation, and the evaluation of operating points
in ``training``) calls :func:`flag_findings`, so the rule lives here only.
"""

from __future__ import annotations

import numpy as np

from .labels import NO_FINDING_INDEX

__all__ = ["ABOVE", "BELOW", "NO_FINDING_RULE", "flag_findings", "flag_wording", "percent"]

# The one wording of above/below used wherever a probability is compared with its threshold.
ABOVE = "at or above its operating point"
BELOW = "below its operating point"

NO_FINDING_RULE = (
    '"No finding" is flagged only when its own probability is at or above its operating '
    "point and no pathology is flagged"
)


def flag_findings(probabilities: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Flags for ``(N, 15)`` or ``(15,)`` probabilities against ``(15,)`` thresholds.

    Returns a bool array of the same shape: pathologies ``p >= t``; "No Finding" also
    needs every pathology unflagged.  The inputs are on the same probability scale (both
    for the same population).
    """
    probabilities = np.asarray(probabilities)
    above = probabilities >= np.asarray(thresholds)
    pathology = np.delete(above, NO_FINDING_INDEX, axis=-1)
    flags = above.copy()
    flags[..., NO_FINDING_INDEX] = above[..., NO_FINDING_INDEX] & ~pathology.any(axis=-1)
    return flags


def flag_wording(flagged: bool) -> str:
    """The one wording of a flag beside a probability and its operating point."""
    return f"flagged: {ABOVE}" if flagged else BELOW


def percent(probability: float) -> str:
    """A probability or threshold for people, to three significant figures: ``19.4%``,
    ``4.53%``, ``0.312%``.  Probabilities for a population are often far below 1%, where
    two decimals of a fraction would show 0.00 for a finding and its threshold alike."""
    value = 100 * float(probability)
    if value < 0.001:
        return "<0.001%"
    if value > 99.9:
        return ">99.9%"
    return f"{value:.3g}%"
