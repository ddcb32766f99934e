"""The JSON form of a prediction: one builder for the command line and the app's API.

``python -m xray_app.predict --json`` prints :func:`prediction_to_json` (or
:func:`error_to_json`) as one line per input, and the app's API returns the same dict,
so the two cannot drift apart.  Shape::

    {"file": "00000075_000.png",
     "findings": [{"label": "Atelectasis", "probability": 0.0123, "threshold": 0.5,
                   "positive": false}, ... 15 entries in logit order],
     "model": {"name": "...", "sha256": "..."},
     "warnings": ["UNTRAINED MODEL: ...", ...],
     "gate": {"verdict": "frontal", "check": null, "score": 0.0132, "level": "ok",
              "scores": {"view": 0.0132, "feature_distance": 61.2}}}

    {"file": "broken.png", "error": "broken.png: the PNG data is truncated or corrupt (...)"}
    {"file": "side.jpg", "error": "side.jpg: This looks like a lateral chest film; ...",
     "gate": {"verdict": "lateral", "check": "view", "score": 0.998, "level": "refuse", ...}}

``gate`` is the input gate's verdict (:mod:`xray_app.gate`): what the image looks like
(``"frontal"``, ``"lateral"``, ``"other_modality"`` or ``"unknown"``), the check that
fired (``"view"``, ``"feature_distance"`` or null), its score and the level (``"ok"``,
``"warn"``: findings shown with the gate's warning, ``"refuse"``: no findings); ``null``
for weights without a gate.

``file`` is the base name only: directories can name patients.  Probabilities and
thresholds are the model's float32 values written with the fewest digits that read back
as the same float32 (``0.123``, not ``0.12300000339746475``).  ``positive`` is the flag of
:func:`xray_app.flags.flag_findings`: a pathology's ``probability >= threshold`` as written;
"No Finding" only when, besides, no pathology is flagged.  ``label`` is the NIH spelling in logit
order (:data:`xray_app.labels.LABELS`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from xray_app.predictor import Prediction

# shown wherever a person reads a prediction: the app's report sheet, the command line's table
DISCLAIMER = "Research demo - NOT a medical device. Not for diagnosis or treatment decisions."


def prediction_to_json(prediction: Prediction, model_info: dict[str, Any]) -> dict[str, Any]:
    """``{"file", "findings", "model", "warnings", "gate"}`` for one prediction (see the module docstring)."""
    return {
        "file": prediction.name,
        "findings": [
            {
                "label": finding.label,
                "probability": _float32_value(finding.probability),
                "threshold": _float32_value(finding.threshold),
                "positive": bool(finding.positive),
            }
            for finding in prediction.findings
        ],
        "model": {"name": str(model_info["name"]), "sha256": str(model_info["sha256"])},
        "warnings": [str(warning) for warning in prediction.warnings],
        "gate": None if prediction.gate is None else prediction.gate.to_json(),
    }


def error_to_json(name: str, error: Exception) -> dict[str, Any]:
    """``{"file", "error"}`` for an input that could not be used; the message is one line.

    An input the gate refused also gets the gate's verdict (``"gate"``).
    """
    message = str(error).strip() or type(error).__name__
    record: dict[str, Any] = {"file": Path(str(name)).name, "error": " ".join(message.split())}
    gate = getattr(error, "gate", None)
    if gate is not None:
        record["gate"] = gate.to_json()
    return record


def _float32_value(value: float) -> float:
    """The shortest decimal that reads back as the same float32."""
    return float(str(np.float32(value)))
