"""What ``app.py`` needs besides the UI: its command line, the predictor and the address.

``python app.py [--weights PATH]``: the weights come from ``--weights``, else
``XRAY_WEIGHTS``, else the bundled ``weights/`` folder, else the pinned Hub copy
(:func:`xray_app.weights.resolve_weights`).  The server listens on
``GRADIO_SERVER_NAME``:``GRADIO_SERVER_PORT``, by default 0.0.0.0:7860 (all interfaces:
a Hugging Face Space or a container must be reachable from outside).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from xray_app.model import CheckpointError
from xray_app.predictor import Predictor
from xray_app.weights import WeightsNotFoundError

DEFAULT_SERVER_NAME = "0.0.0.0"
DEFAULT_SERVER_PORT = 7860


def predictor_from_command_line(argv: Sequence[str] | None = None) -> Predictor:
    """The predictor for ``--weights`` (or ``XRAY_WEIGHTS``...), loaded once.

    A missing or unreadable checkpoint ends the process with status 1 and a one-line
    message saying how to provide weights; never a traceback, never random weights.
    """
    parser = argparse.ArgumentParser(prog="python app.py", description="Serve the chest X-ray demo.")
    parser.add_argument("--weights", default=os.environ.get("XRAY_WEIGHTS"),
                        help="checkpoint directory (default: XRAY_WEIGHTS, then weights/, then the Hub)")
    args = parser.parse_args(argv)
    try:
        return Predictor.from_weights(args.weights)
    except (WeightsNotFoundError, CheckpointError) as error:
        sys.exit(f"error: {error}")


def server_address() -> dict[str, Any]:
    """``server_name`` and ``server_port`` for ``launch()``, from the environment."""
    return {
        "server_name": os.environ.get("GRADIO_SERVER_NAME", DEFAULT_SERVER_NAME),
        "server_port": int(os.environ.get("GRADIO_SERVER_PORT", str(DEFAULT_SERVER_PORT))),
    }
