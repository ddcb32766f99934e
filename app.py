"""Serve the chest X-ray demo: ``python app.py [--weights PATH]`` (Hugging Face Space entry point)."""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from xray_app.serve import predictor_from_command_line, server_address  # noqa: E402
from xray_app.ui import build_demo, launch_options  # noqa: E402

if __name__ == "__main__":
    predictor = predictor_from_command_line()  # once; a missing checkpoint exits with a message
    demo = build_demo(predictor, examples_dir=os.environ.get("XRAY_EXAMPLES_DIR"))
    demo.launch(**server_address(), **launch_options())
