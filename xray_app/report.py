"""The JSON form of a prediction: one builder for the command line and the app's API.

``python -m xray_app.predict --json`` prints :func:`prediction_to_json` (or
:func:`error_to_json`) as one line per input, and the app's API returns the same dict,
so the two cannot drift apart.  Shape::

    {"file": "00000075_000.png",
     "findings": [{"label": "Atelectasis", "probability": 0.0123, "threshold": 0.5,
                   "positive": false}, ... 15 entries in logit order],
     "model": {"name": "...", "sha256": "..."},
     "warnings": ["UNTRAINED MODEL: ...", ...]}

    {"file": "broken.png", "error": "broken.png: the PNG data is truncated or corrupt (...)"}

``file`` is the base name only: directories can name patients.  Probabilities and
thresholds are the model's float32 values written with the fewest digits that read back
as the same float32 (``0.123``, not ``0.12300000339746475``), so ``positive`` always agrees
with ``probability >= threshold`` as written.  ``label`` is the NIH spelling in logit
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
    """``{"file", "findings", "model", "warnings"}`` for one prediction (see the module docstring)."""
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
    }


def error_to_json(name: str, error: Exception) -> dict[str, str]:
    """``{"file", "error"}`` for an input that could not be used; the message is one line."""
    message = str(error).strip() or type(error).__name__
    return {"file": Path(str(name)).name, "error": " ".join(message.split())}


def _float32_value(value: float) -> float:
    """The shortest decimal that reads back as the same float32."""
    return float(str(np.float32(value)))
