"""Shared pytest fixtures.  Keep each one small, documented and session-scoped when costly.

Paths to the shared real data live in :mod:`tests.paths`.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.paths import SHARED_DATA

# Under pytest-xdist (pyproject's addopts), the workers share the machine's cores: each one
# (and the processes it starts) gets its share of OpenMP threads instead of all of them,
# set before torch is first imported.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))

# Gradio's cache for the whole run (read when gradio is first imported, after this file):
# a folder of the run's own, removed at exit, so the demos the tests launch neither leave
# radiographs in the machine's shared cache nor meet a real app's files there.
_GRADIO_CACHE = tempfile.mkdtemp(prefix="xray-tests-gradio-")
os.environ["GRADIO_TEMP_DIR"] = _GRADIO_CACHE
atexit.register(shutil.rmtree, _GRADIO_CACHE, ignore_errors=True)


# --------------------------------------------------------------------------- threads
@pytest.fixture
def one_torch_thread():
    """One intra-op thread for small training runs: on a shared 2-core machine, OpenMP
    threads competing with other processes slow them down tenfold."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------- shared data
@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real data folder (``../shared/data``); fails loudly when it is missing."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"shared data not found at {SHARED_DATA}; see ../shared/data/README.md")
    return SHARED_DATA


# --------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="session")
def random_init_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of an UNTRAINED random-init checkpoint in the real format (seed 0, 224 px).

    Written once per session by :func:`xray_app.model.write_random_init`; treat it as
    read-only (load it, never write into it).
    """
    from xray_app.model import write_random_init

    return write_random_init(tmp_path_factory.mktemp("random-init"), seed=0)


@pytest.fixture(scope="session")
def cpu_predictor(random_init_checkpoint: Path):
    """A CPU :class:`~xray_app.predictor.Predictor` on :func:`random_init_checkpoint`.

    Shared by all tests of the session: a Predictor never changes after construction.
    """
    from xray_app.model import load_checkpoint
    from xray_app.predictor import Predictor

    return Predictor(load_checkpoint(random_init_checkpoint), device="cpu")
