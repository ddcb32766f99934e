"""Serve the chest X-ray demo: ``python app.py [--weights PATH] [--mcp]`` (Hugging Face Space entry point)."""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from xray_app.serve import (  # noqa: E402  (imports no gradio)
    default_cache_folder,
    examples_folder,
    parse_command_line,
    predictor_from_command_line,
    purge_stale_cache,
    server_address,
)

os.environ.setdefault("GRADIO_TEMP_DIR", str(default_cache_folder()))  # before gradio is imported

from xray_app.mcp_tool import add_mcp_tool  # noqa: E402
from xray_app.ui import DELETE_CACHE, build_demo, launch_options  # noqa: E402


def main() -> None:
    """Load the weights once, clear what an earlier server left, build the demo and serve it."""
    mcp = parse_command_line().mcp
    predictor = predictor_from_command_line()  # once; a missing checkpoint exits with a message
    # what an earlier server that crashed or was killed left in the cache, uploads included
    stale = purge_stale_cache(os.environ["GRADIO_TEMP_DIR"], older_than_s=DELETE_CACHE[1])
    if stale:
        print(f"removed {stale} cached files left by an earlier run", flush=True)
    demo = build_demo(predictor, examples_dir=examples_folder())
    if mcp:
        add_mcp_tool(demo, predictor)
    demo.launch(**server_address(), **launch_options(), mcp_server=mcp)


if __name__ == "__main__":
    main()
