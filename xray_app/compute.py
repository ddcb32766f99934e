"""One long-lived thread for all of the predictor's tensor work.

PyTorch's CPU kernels run in an OpenMP thread team, and GNU OpenMP (which the PyTorch
wheels ship) keeps one team per *calling* thread.  Once the teams of several calling
threads exist together and their threads outnumber the CPU cores, libgomp stops
spinning at its barriers and parks idle threads in the kernel, so every parallel region
of every later forward pass pays wake-up latency.  Gradio calls handlers from a pool of
worker threads, so without this module a ResNet-50 forward on a 2-core CPU slows from
about 33 ms to about 58 ms for the rest of the process's life
(``python -m benchmarks.bench_threads`` measures it).

:func:`run_on_compute_thread` runs a function on one process-wide thread and waits for
it; a call made from that thread runs directly.  Everything in
:class:`~xray_app.predictor.Predictor` that creates or runs tensors goes through it, so
the process has a single OpenMP team however many threads ask for predictions.  It adds
well under a millisecond per call, and it serialises the calls, which costs nothing on
a CPU where one forward pass already uses every core.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

THREAD_NAME = "xray-compute"

P = ParamSpec("P")
R = TypeVar("R")

_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None


def _compute_executor() -> ThreadPoolExecutor:
    global _executor
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=THREAD_NAME)
        return _executor


def on_compute_thread() -> bool:
    """True when the caller is the compute thread itself."""
    return threading.current_thread().name.startswith(THREAD_NAME)


def run_on_compute_thread(fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """``fn(*args, **kwargs)`` on the compute thread; its result, or its exception re-raised."""
    if on_compute_thread():
        return fn(*args, **kwargs)
    return _compute_executor().submit(fn, *args, **kwargs).result()
