"""``python app.py --mcp``: Gradio's MCP server lists one tool, and calling it with the
``mcp`` Python client returns the command line's JSON (or the gate's reason as an error).

One demo per module, launched on loopback with the session's random-init predictor and
the MCP tool added exactly as ``app.py --mcp`` does.
"""

from __future__ import annotations

import asyncio
import base64
import json

import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from tests.paths import NIH_IMAGES
from xray_app import ui
from xray_app.mcp_tool import TOOL_NAME, add_mcp_tool
from xray_app.report import prediction_to_json
from xray_app.serve import parse_command_line

NIH_PNG = NIH_IMAGES / "00000075_000.png"


@pytest.fixture(scope="module")
def mcp_url(cpu_predictor):
    """The MCP endpoint of the demo as ``python app.py --mcp`` serves it, on loopback, in
    this process (an app process would cost ~20 s of start-up on a 2-core machine)."""
    demo = ui.build_demo(cpu_predictor)
    add_mcp_tool(demo, cpu_predictor)
    demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True, mcp_server=True,
                **ui.launch_options())
    try:
        yield demo.local_url.rstrip("/") + "/gradio_api/mcp/"
    finally:
        demo.close()


def test_app_takes_the_mcp_flag():
    assert parse_command_line(["--mcp"]).mcp is True, "--mcp turns the MCP server on"
    assert parse_command_line([]).mcp is False, "the MCP server is off by default"


async def _session(url: str, work):
    async with streamable_http_client(url) as (read, write, _), ClientSession(read, write) as session:
        await session.initialize()
        return await work(session)


def _data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def test_one_well_described_tool_is_listed(mcp_url):
    tools = asyncio.run(_session(mcp_url, lambda s: s.list_tools())).tools
    assert [tool.name for tool in tools] == [TOOL_NAME], f"expected only {TOOL_NAME}, got {[t.name for t in tools]}"
    description = tools[0].description
    for phrase in ("NOT a medical device", "warnings", "threshold", "probability", "refuses"):
        assert phrase in description, f"the description must mention {phrase!r}: {description[:200]}"
    assert list(tools[0].inputSchema["properties"]) == ["radiograph"], tools[0].inputSchema


def test_the_tool_returns_the_command_line_json(mcp_url, cpu_predictor):
    argument = {"radiograph": _data_url(NIH_PNG.read_bytes(), "image/png")}
    result = asyncio.run(_session(mcp_url, lambda s: s.call_tool(TOOL_NAME, argument)))
    assert not result.isError, f"expected a result, got an error: {result.content}"
    answer = json.loads(result.content[0].text)
    expected = prediction_to_json(cpu_predictor.predict(NIH_PNG), cpu_predictor.model_info)
    assert answer["file"].endswith(".png"), f"the uploaded file's base name, got {answer['file']!r}"
    assert {k: v for k, v in answer.items() if k != "file"} == {
        k: v for k, v in expected.items() if k != "file"}, "findings, model and warnings as the CLI prints them"


def test_an_unusable_file_is_a_tool_error_with_the_reason(mcp_url):
    argument = {"radiograph": _data_url(b"this is not a radiograph", "text/plain")}
    result = asyncio.run(_session(mcp_url, lambda s: s.call_tool(TOOL_NAME, argument)))
    assert result.isError, "an unusable file must be a tool error"
    assert "not a recognised image" in result.content[0].text, result.content[0].text
