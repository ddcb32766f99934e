"""The MCP tool of ``python app.py --mcp``: one radiograph in, the CLI's JSON out.

Gradio's MCP server (``launch(mcp_server=True)``, Streamable HTTP at
``/gradio_api/mcp/``) turns every public API endpoint into a tool, named after its
function and described by its docstring.  :func:`add_mcp_tool` adds one endpoint made
for assistants, ``classify_chest_radiograph`` (a file in, the JSON text of
:func:`xray_app.report.prediction_to_json` out, exactly the line the command line prints, or the input gate's refusal as a tool
error), and keeps the web page's own endpoints (``/predict``, ``/predict_batch``, which
return galleries and session state) off the tool list; they stay in the HTTP API as they
are.  Gradio 6.31 has no public switch for that: its MCP server lists only functions
without an ``_mcp_type`` or with ``_mcp_type == "tool"``, so those handlers are given
another type (:data:`UI_ONLY`); ``tests/test_mcp.py`` checks that exactly one tool is listed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import gradio as gr

from xray_app.preprocess import ImageInputError
from xray_app.report import DISCLAIMER, prediction_to_json

if TYPE_CHECKING:
    from xray_app.predictor import Predictor

TOOL_NAME = "classify_chest_radiograph"
ENDPOINT = f"/{TOOL_NAME}"
UI_ONLY = "ui-only"  # any _mcp_type other than "tool": Gradio's MCP server does not list it


def classify(predictor: Predictor, path: str | None) -> str:
    """The JSON of one radiograph, as the text ``python -m xray_app.predict --json`` prints;
    ``gr.Error`` with the one-line reason for unusable input."""
    if not path:
        raise gr.Error("no radiograph was given", print_exception=False)
    try:
        prediction = predictor.predict(path, name=Path(path).name)
    except ImageInputError as error:
        raise gr.Error(str(error), title="Cannot analyse this file", print_exception=False) from None
    return json.dumps(prediction_to_json(prediction, predictor.model_info), allow_nan=False)


def add_mcp_tool(demo: gr.Blocks, predictor: Predictor) -> None:
    """Add the ``classify_chest_radiograph`` endpoint to ``demo`` and hide its other
    endpoints from the MCP tool list (see the module docstring)."""
    for block_fn in demo.fns.values():
        if block_fn.fn is not None and block_fn.api_visibility == "public":
            block_fn.fn._mcp_type = UI_ONLY

    def classify_chest_radiograph(radiograph: str | None) -> str:
        """Find 14 thoracic pathologies (NIH ChestX-ray14) and "No Finding" on one frontal chest radiograph. Research demo, NOT a medical device: never use the result for diagnosis or treatment.

        The radiograph (PNG, JPEG, TIFF or DICOM) is checked first: an image the input gate refuses (not a radiograph the model can judge, unreadable, too small) gives an error with the reason and no findings; a doubtful one (colour, odd aspect ratio, non-chest or lateral DICOM, far from the training images) is analysed and its caveats are listed in "warnings". Read the warnings before the findings.

        Args:
            radiograph: the radiograph file (a URL, or a data: URL with the file base64-encoded)

        Returns:
            JSON: "file" (base name), "findings" (15 entries in a fixed order: "label", calibrated "probability" 0-1, the class "threshold", "positive" = flagged: a pathology at or above its threshold; No Finding only when no pathology is flagged), "model" (name and weights sha256), "warnings" (list of caveats; empty when none), as `python -m xray_app.predict --json` prints it.
        """
        return classify(predictor, radiograph)

    with demo:
        radiograph = gr.File(type="filepath", visible=False, label="Radiograph for the MCP tool")
        # text, not gr.JSON: the MCP server passes a string through as it is, a dict as its repr
        result = gr.Textbox(visible=False, label=DISCLAIMER)
        trigger = gr.Button(visible=False)
        trigger.click(
            classify_chest_radiograph,
            inputs=[radiograph],
            outputs=[result],
            api_name=TOOL_NAME,
            concurrency_id="model",  # one forward pass at a time, shared with the page
        )
