"""Why the predictor runs its tensor work on one thread: ``python -m benchmarks.bench_threads``.

Times a ResNet-50 forward pass (224 px, batch 1, CPU) asked for by a web server's pool of
worker threads, three ways, each in a fresh process (OpenMP state lasts a process's life):

* ``one_thread``: every call from the same thread (the best case);
* ``rotating_threads``: each call from the next of 3 pool threads, torch run directly, as
  a Gradio handler would without :mod:`xray_app.compute`;
* ``compute_thread``: the same 3 pool threads, each call handed to
  :func:`xray_app.compute.run_on_compute_thread` (what the predictor does).

Prints the median of each and the ratios to ``one_thread``; the last line is a JSON
object of the figures.  The model weights are random: only the arithmetic matters here.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = ("one_thread", "rotating_threads", "compute_thread")
POOL_THREADS = 3
PAUSE_S = 0.2  # requests arrive apart, as on an idle demo


def measure(scenario: str, repeats: int) -> float:
    """Median seconds of one forward pass under ``scenario`` (run in this process)."""
    from concurrent.futures import ThreadPoolExecutor

    import torch
    import torchvision

    from xray_app.compute import run_on_compute_thread

    model = torchvision.models.resnet50().eval()
    x = torch.randn(1, 3, 224, 224)

    def forward() -> None:
        with torch.inference_mode():
            model(x)

    pools = [ThreadPoolExecutor(max_workers=1) for _ in range(POOL_THREADS)]
    calls = {
        "one_thread": lambda i: pools[0].submit(forward).result(),
        "rotating_threads": lambda i: pools[i % POOL_THREADS].submit(forward).result(),
        "compute_thread": lambda i: pools[i % POOL_THREADS].submit(run_on_compute_thread, forward).result(),
    }
    call = calls[scenario]
    for i in range(2 * POOL_THREADS):  # warm-up: every pool thread has asked once
        call(i)
    samples = []
    for i in range(repeats):
        time.sleep(PAUSE_S)
        start = time.perf_counter()
        call(i)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_threads", description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--scenario", choices=SCENARIOS, help=argparse.SUPPRESS)  # child process
    args = parser.parse_args(argv)
    if args.scenario:
        print(json.dumps({"seconds": measure(args.scenario, args.repeats)}))
        return 0
    figures: dict[str, float] = {}
    for scenario in SCENARIOS:
        child = subprocess.run(
            [sys.executable, "-m", "benchmarks.bench_threads", "--scenario", scenario,
             "--repeats", str(args.repeats)],
            cwd=REPO, capture_output=True, text=True, check=True,
        )
        figures[f"{scenario}_ms"] = round(1000 * json.loads(child.stdout.splitlines()[-1])["seconds"], 1)
        print(f"{scenario:17s}: {figures[f'{scenario}_ms']:7.1f} ms per forward (median of {args.repeats})",
              flush=True)
    for scenario in SCENARIOS[1:]:
        figures[f"{scenario}_over_one_thread"] = round(figures[f"{scenario}_ms"] / figures["one_thread_ms"], 2)
    print(f"rotating pool threads: {figures['rotating_threads_over_one_thread']}x one thread; "
          f"through the compute thread: {figures['compute_thread_over_one_thread']}x")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
