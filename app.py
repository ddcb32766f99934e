"""Serve the chest X-ray demo: ``python app.py [--weights PATH]`` (Hugging Face Space entry point)."""

import argparse
import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from xray_app.model import CheckpointError  # noqa: E402
from xray_app.predictor import Predictor  # noqa: E402
from xray_app.ui import build_demo, launch_options  # noqa: E402
from xray_app.weights import WeightsNotFoundError  # noqa: E402

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--weights", default=os.environ.get("XRAY_WEIGHTS"), help="checkpoint dir")
    args = parser.parse_args()
    try:
        predictor = Predictor.from_weights(args.weights)
    except (WeightsNotFoundError, CheckpointError) as error:
        sys.exit(f"error: {error}")
    demo = build_demo(predictor, examples_dir=os.environ.get("XRAY_EXAMPLES_DIR"))
    demo.launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        **launch_options(),
    )
