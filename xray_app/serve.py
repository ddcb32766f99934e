"""What ``app.py`` needs besides the UI: its command line, the predictor and the address.

``python app.py [--weights PATH] [--mcp]``: the weights come from ``--weights``, else
``XRAY_WEIGHTS``, else the bundled ``weights/`` folder, else the pinned Hub copy
(:func:`xray_app.weights.resolve_weights`).  ``--mcp`` also serves the MCP tool of
:mod:`xray_app.mcp_tool` (Gradio's MCP server, ``/gradio_api/mcp/``).  The server listens on
``GRADIO_SERVER_NAME``:``GRADIO_SERVER_PORT`` (:func:`server_address`): by default
127.0.0.1:7860, this machine only, since uploads are radiographs; on a Hugging Face Space
(which sets ``SPACE_ID``) 0.0.0.0, where the Space's proxy must reach it.  The example
radiographs offered under the upload are those of ``XRAY_EXAMPLES_DIR``, else the
repository's ``examples/`` folder (:func:`examples_folder`).

Gradio's cache (uploads, heatmaps, reports) is ``GRADIO_TEMP_DIR``, which ``app.py`` sets,
unless it is set already, to a folder of this app's own (:func:`default_cache_folder`).
``delete_cache`` empties it at a clean shutdown but knows only the files of its own
process, so a server that crashed or was killed leaves radiographs there;
:func:`purge_stale_cache` removes them when the app next starts.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from xray_app.model import CheckpointError
from xray_app.population import PopulationError, read_population
from xray_app.predictor import Predictor
from xray_app.weights import WeightsNotFoundError

DEFAULT_SERVER_NAME = "127.0.0.1"  # this machine only, unless told otherwise
SPACE_SERVER_NAME = "0.0.0.0"  # on a Hugging Face Space: its proxy reaches the container
DEFAULT_SERVER_PORT = 7860
CACHE_FOLDER_NAME = "xray-app"
BUNDLED_EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def parse_command_line(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``python app.py [--weights PATH] [--population JSON] [--mcp]``: ``weights`` and
    ``population`` (str or None) and ``mcp`` (bool)."""
    parser = argparse.ArgumentParser(
        prog="python app.py",
        description="Serve the chest X-ray demo (web page and HTTP API /predict, /predict_batch).",
        epilog=f"Listens on {DEFAULT_SERVER_NAME}:{DEFAULT_SERVER_PORT} (this machine only); "
        f"GRADIO_SERVER_NAME=0.0.0.0 opens it to the network (a Hugging Face Space, which sets "
        f"SPACE_ID, gets {SPACE_SERVER_NAME}); GRADIO_SERVER_PORT sets the port. Anyone who can "
        "reach the address can upload radiographs and read their findings: there is no login.",
    )
    parser.add_argument("--weights", default=os.environ.get("XRAY_WEIGHTS"),
                        help="checkpoint directory (default: XRAY_WEIGHTS, then weights/, then the Hub)")
    parser.add_argument("--population", default=os.environ.get("XRAY_POPULATION"), metavar="JSON",
                        help="prevalence table {\"name\", \"prevalence\": {label: p}} of the "
                        "population to state probabilities for (default: XRAY_POPULATION, else "
                        "the one config.json names); thresholds move with them")
    parser.add_argument("--mcp", action="store_true",
                        help="also serve an MCP server at /gradio_api/mcp/ (same address, no login) with "
                        "one tool, classify_chest_radiograph: any MCP client that reaches the "
                        "address can send a radiograph and read its findings as JSON")
    return parser.parse_args(argv)


def predictor_from_command_line(argv: Sequence[str] | None = None) -> Predictor:
    """The predictor for ``--weights`` (or ``XRAY_WEIGHTS``...), loaded once.

    A missing or unreadable checkpoint ends the process with status 1 and a one-line
    message saying how to provide weights; never a traceback, never random weights.
    """
    args = parse_command_line(argv)
    try:
        population = read_population(args.population) if args.population else None
        return Predictor.from_weights(args.weights, population=population)
    except (WeightsNotFoundError, CheckpointError, PopulationError) as error:
        sys.exit(f"error: {error}")


def server_address(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``server_name`` and ``server_port`` for ``launch()``: ``GRADIO_SERVER_NAME`` when set,
    else 0.0.0.0 on a Hugging Face Space (``SPACE_ID`` set), else 127.0.0.1 (this machine
    only); ``GRADIO_SERVER_PORT``, else 7860.  ``environ``: default ``os.environ``."""
    env = os.environ if environ is None else environ
    default = SPACE_SERVER_NAME if env.get("SPACE_ID") else DEFAULT_SERVER_NAME
    return {
        "server_name": env.get("GRADIO_SERVER_NAME") or default,
        "server_port": int(env.get("GRADIO_SERVER_PORT") or DEFAULT_SERVER_PORT),
    }


def examples_folder(bundled: Path = BUNDLED_EXAMPLES) -> Path | None:
    """The folder of example radiographs: ``XRAY_EXAMPLES_DIR`` when set (set but empty:
    none), else the bundled ``examples/`` (NIH test-split radiographs) when present."""
    chosen = os.environ.get("XRAY_EXAMPLES_DIR")
    if chosen is not None:
        return Path(chosen) if chosen else None
    return bundled if bundled.is_dir() else None


def default_cache_folder() -> Path:
    """This app's own Gradio cache, ``<temp dir>/xray-app``: not the ``gradio`` folder that
    every Gradio app of the user shares, so that a purge touches no other app's files."""
    return Path(tempfile.gettempdir()) / CACHE_FOLDER_NAME


def purge_stale_cache(folder: str | Path, older_than_s: float, now: float | None = None) -> int:
    """Delete the files under ``folder`` last modified more than ``older_than_s`` seconds
    ago, and the folders that leaves empty; return how many files went.

    For files left by an earlier server that did not shut down cleanly.  A file younger
    than the age, which a running server's own ``delete_cache`` still tracks, is kept, and
    so is a young empty folder (one being filled).  Links are removed, never followed;
    ``folder`` itself stays.  Files that vanish or cannot be removed meanwhile are skipped.
    """
    root = Path(folder)
    if not root.is_dir():
        return 0
    cutoff = (time.time() if now is None else now) - older_than_s
    removed = 0
    cleared: set[Path] = set()  # folders from which something stale was removed
    for directory, subdirs, files in os.walk(root, topdown=False):
        here = Path(directory)
        for name in files:  # os.walk lists links to files here, and links to folders below
            if _unlink_if_stale(here / name, cutoff):
                removed += 1
                cleared.add(here)
        for name in subdirs:
            if (here / name).is_symlink() and _unlink_if_stale(here / name, cutoff):
                cleared.add(here)
        if here != root and _rmdir_if_empty(here, cutoff, here in cleared):
            cleared.add(here.parent)
    return removed


def _unlink_if_stale(path: Path, cutoff: float) -> bool:
    try:
        if path.lstat().st_mtime < cutoff:
            path.unlink()
            return True
    except OSError:
        pass
    return False


def _rmdir_if_empty(directory: Path, cutoff: float, cleared: bool) -> bool:
    """Remove an empty folder that held stale files, or is itself older than the cutoff."""
    try:
        info = directory.lstat()
        if not stat.S_ISDIR(info.st_mode) or any(directory.iterdir()):
            return False
        if cleared or info.st_mtime < cutoff:
            directory.rmdir()
            return True
    except OSError:
        pass
    return False
