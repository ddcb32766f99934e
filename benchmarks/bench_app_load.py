"""Load test of the web demo: ``python -m benchmarks.bench_app_load [--clients 8 --requests 200]``.

Starts ``app.py`` as its own process on loopback (as the README runs it), warms it up,
then sends ``--requests`` ``/predict`` calls from ``--clients`` concurrent
``gradio_client`` clients, cycling through the shared NIH radiographs.  Prints
throughput, p50/p95 latency (client side: upload, queue, inference, download of the 15
heatmap images), the error count (must be 0) and the server's resident memory before,
during and after the load (its growth must stay bounded).  Then, with the server idle,
it compares ``/predict`` on a 1024 px radiograph, called over Gradio's plain HTTP API,
with a bare forward pass of the same model in this process (target: at most 3x; the
forward the checkpoint asks for, over the image and its mirror image when its config
says ``mirror_average``, with the image-alone ratio printed too); it
also reports the handler behind ``/predict`` timed in this process without HTTP (the
app's own work), and the same call through ``gradio_client`` (which adds up to 50 ms
of message polling per call).  The last line is a JSON object of the figures.  Exit status 1 when errors occurred or the memory growth exceeded its bound.

Weights: ``--weights PATH`` or ``XRAY_WEIGHTS``; ``--random-init`` benchmarks an
untrained checkpoint (same architecture and cost).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import warnings
from collections.abc import Sequence
from pathlib import Path

from training.data.images import find_images
from training.data.metadata import MetadataError

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "nih"
# OpenMP worker threads keep spinning for a while after a parallel region; a pause between
# timed steps keeps this process's and the server's threads from slowing each other.
PAUSE_S = 0.5


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def start_server(weights: Path, port: int, log: Path) -> subprocess.Popen:
    env = dict(
        os.environ,
        XRAY_WEIGHTS=str(weights),
        GRADIO_SERVER_NAME="127.0.0.1",
        GRADIO_SERVER_PORT=str(port),
        GRADIO_ANALYTICS_ENABLED="False",
    )
    env.pop("XRAY_EXAMPLES_DIR", None)
    with open(log, "w") as handle:
        server = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"app.py exited with {server.returncode}:\n{log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).close()
            return server
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise RuntimeError(f"app.py did not answer on port {port} within 180 s")


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def run_load(url: str, images: list[Path], clients: int, requests: int, on_progress) -> dict:
    from gradio_client import Client, handle_file

    latencies: list[float] = []
    errors: list[str] = []
    counter = iter(range(requests))
    lock = threading.Lock()

    def worker(download_dir: str) -> None:
        client = Client(url, verbose=False, analytics_enabled=False, download_files=download_dir)
        while True:
            with lock:
                number = next(counter, None)
            if number is None:
                return
            start = time.perf_counter()
            try:
                result = client.predict(handle_file(str(images[number % len(images)])), api_name="/predict")
                if len(result[1]) != 15 or "findings" not in result[0]:
                    raise RuntimeError(f"unexpected response shape: {len(result[1])} heatmaps")
            except Exception as error:  # a benchmark counts every failure, whatever its type
                with lock:
                    errors.append(f"{type(error).__name__}: {error}")
                continue
            with lock:
                latencies.append(time.perf_counter() - start)
                on_progress(len(latencies) + len(errors))

    with tempfile.TemporaryDirectory(prefix="bench-downloads-") as downloads:
        threads = [threading.Thread(target=worker, args=(downloads,)) for _ in range(clients)]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - start
    return {"latencies": latencies, "errors": errors, "wall_s": wall}


def http_predict(http, url: str, image: Path) -> dict:
    """One ``/predict`` call over Gradio's plain HTTP API, as ``curl`` would make it.

    Upload the file (``POST /gradio_api/upload``), start the event (``POST
    /gradio_api/call/predict``), then read its server-sent events until ``complete``;
    returns the decoded outputs (the JSON result, then the 15 gallery items as URLs).
    """
    with open(image, "rb") as handle:
        uploaded = http.post(f"{url}gradio_api/upload", files={"files": (image.name, handle)})
    uploaded.raise_for_status()
    payload = {"data": [{"path": uploaded.json()[0], "meta": {"_type": "gradio.FileData"}}]}
    started = http.post(f"{url}gradio_api/call/predict", json=payload)
    started.raise_for_status()
    event_id = started.json()["event_id"]
    event = None
    with http.stream("GET", f"{url}gradio_api/call/predict/{event_id}") as stream:
        for line in stream.iter_lines():
            if line.startswith("event: "):
                event = line[len("event: "):]
            elif line.startswith("data: ") and event in ("complete", "error"):
                if event == "error":
                    raise RuntimeError(f"/predict failed: {line[len('data: '):][:300]}")
                outputs = json.loads(line[len("data: "):])
                if "findings" not in outputs[0] or len(outputs[1]) != 15:
                    raise RuntimeError("unexpected /predict outputs")
                return outputs
    raise RuntimeError("/predict stream ended without a result")


def forward_vs_predict(url: str, weights: Path, image: Path, repeats: int) -> dict:
    """Median ``/predict`` latency on ``image`` (idle server) over a bare forward pass.

    ``/predict`` is timed through Gradio's plain HTTP API (:func:`http_predict`: what the
    server takes, upload to result) and through ``gradio_client``, with and without it
    downloading the 15 images.  ``gradio_client`` 2.x adds its own delay: it polls for
    server messages every 50 ms (``time.sleep(0.05)`` in ``stream_sse_v1plus``), so it is
    reported beside the headline, not as it.  The forward pass and the handler run in
    this process on the predictor's compute thread (:mod:`xray_app.compute`), as in the
    server.  The timings are interleaved so that a CPU shared with other work slows all
    of them alike.
    """
    import httpx
    import torch
    from gradio_client import Client, handle_file

    from xray_app import ui
    from xray_app.compute import run_on_compute_thread
    from xray_app.predictor import Predictor
    from xray_app.scoring import score_batch

    predictor = Predictor.from_weights(weights, device="cpu")
    model, size = predictor._model, int(predictor.config.input_size)  # the same network, bare
    mirror = predictor.config.mirror_average
    x = torch.randn(1, 3, size, size)

    def forward(*, mirror_average: bool = mirror) -> None:
        with torch.inference_mode():
            score_batch(model, x, mirror_average=mirror_average)

    timings: dict[str, list[float]] = {
        "forward": [], "forward_without_mirror": [], "handler": [], "http": [], "client": [],
        "client_downloads": [],
    }
    with tempfile.TemporaryDirectory(prefix="bench-downloads-") as downloads, httpx.Client(timeout=60) as http:
        clients = {
            "client": Client(url, verbose=False, analytics_enabled=False, download_files=False),
            "client_downloads": Client(url, verbose=False, analytics_enabled=False, download_files=downloads),
        }
        steps = {
            "forward": lambda: run_on_compute_thread(forward),
            "forward_without_mirror": lambda: run_on_compute_thread(forward, mirror_average=False),
            "handler": lambda: ui.analyse(predictor, str(image), downloads),  # in process, no HTTP
            "http": lambda: http_predict(http, url, image),
            **{key: (lambda c=client: c.predict(handle_file(str(image)), api_name="/predict"))
               for key, client in clients.items()},
        }
        with warnings.catch_warnings():  # gr.Warning outside a request is a UserWarning
            warnings.simplefilter("ignore")
            for step in steps.values():  # warm-up
                step()
            for _ in range(repeats):
                for key, step in steps.items():
                    time.sleep(PAUSE_S)
                    start = time.perf_counter()
                    step()
                    timings[key].append(time.perf_counter() - start)
    median_ms = {key: statistics.median(values) * 1000 for key, values in timings.items()}
    forward_ms = median_ms["forward"]
    return {
        "input_size": size,
        "mirror_average": mirror,
        "forward_ms": round(forward_ms, 1),
        "forward_without_mirror_ms": round(median_ms["forward_without_mirror"], 1),
        "handler_1024_ms": round(median_ms["handler"], 1),
        "handler_over_forward": round(median_ms["handler"] / forward_ms, 2),
        "predict_1024_ms": round(median_ms["http"], 1),
        "predict_over_forward": round(median_ms["http"] / forward_ms, 2),
        "predict_over_forward_without_mirror": round(median_ms["http"] / median_ms["forward_without_mirror"], 2),
        "predict_1024_gradio_client_ms": round(median_ms["client"], 1),
        "predict_1024_gradio_client_with_downloads_ms": round(median_ms["client_downloads"], 1),
        "gradio_client_over_forward": round(median_ms["client"] / forward_ms, 2),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_app_load", description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--weights", type=Path, default=os.environ.get("XRAY_WEIGHTS"))
    parser.add_argument("--random-init", action="store_true", help="benchmark an untrained checkpoint")
    parser.add_argument("--images", type=Path, default=SHARED / "images")
    parser.add_argument("--original", type=Path, default=SHARED / "originals" / "00000075_000.png",
                        help="the 1024 px radiograph of the /predict vs forward comparison")
    parser.add_argument("--repeats", type=int, default=10, help="repeats of the latency comparison")
    parser.add_argument("--max-growth-mb", type=float, default=300.0,
                        help="bound on the server's memory growth over the load")
    return parser


def radiographs(folder: Path) -> list[Path]:
    """The radiographs under ``folder`` in name order (none when it is missing)."""
    try:
        found = find_images(folder)
    except MetadataError:
        return []
    return [found[name] for name in sorted(found)]


def measure(args: argparse.Namespace, weights: Path, images: Sequence[Path], scratch: Path) -> dict:
    """Serve ``weights``, put the load on it while sampling its memory, then compare one
    idle ``/predict`` with the bare forward pass."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    server = start_server(weights, port, scratch / "server.log")
    try:
        run_load(url, images, clients=1, requests=4, on_progress=lambda n: None)  # warm-up
        baseline = rss_mb(server.pid)
        samples: list[float] = []
        marks = {max(1, args.requests * k // 4) for k in (1, 2, 3)}

        def on_progress(done: int) -> None:
            if done in marks:
                samples.append(round(rss_mb(server.pid), 1))

        print(f"load: {args.clients} clients, {args.requests} requests to {url}predict", flush=True)
        load = run_load(url, images, args.clients, args.requests, on_progress)
        after = rss_mb(server.pid)
        print("latency: /predict on a 1024 px radiograph vs a bare forward pass (idle server)", flush=True)
        ratio = forward_vs_predict(url, weights, args.original, args.repeats)
    finally:
        server.terminate()
        server.wait(timeout=30)
    return {"load": load, "baseline": baseline, "samples": samples, "after": after, "ratio": ratio}


def figures_of(args: argparse.Namespace, measured: dict) -> dict:
    load, ratio = measured["load"], measured["ratio"]
    baseline, after = measured["baseline"], measured["after"]
    latencies = load["latencies"]
    return {
        "clients": args.clients,
        "requests": args.requests,
        "errors": len(load["errors"]),
        "throughput_rps": round(len(latencies) / load["wall_s"], 2),
        "p50_s": round(percentile(latencies, 50), 3) if latencies else None,
        "p95_s": round(percentile(latencies, 95), 3) if latencies else None,
        "server_rss_mb_before": round(baseline, 1),
        "server_rss_mb_during": measured["samples"],
        "server_rss_mb_after": round(after, 1),
        "server_rss_growth_mb": round(after - baseline, 1),
        "memory_bounded": after - baseline <= args.max_growth_mb,
        **ratio,
        "ratio_target_met": ratio["predict_over_forward"] <= 3.0,
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def print_summary(figures: dict, errors: Sequence[str], max_growth_mb: float) -> None:
    print(f"throughput {figures['throughput_rps']} requests/s, errors {figures['errors']}")
    print(f"latency p50 {figures['p50_s']} s, p95 {figures['p95_s']} s")
    print(
        f"server memory {figures['server_rss_mb_before']} MiB before, "
        f"{figures['server_rss_mb_during']} during, "
        f"{figures['server_rss_mb_after']} after: growth {figures['server_rss_growth_mb']} MiB "
        f"({'bounded' if figures['memory_bounded'] else 'ABOVE'} the {max_growth_mb:g} MiB bound)"
    )
    print(
        f"/predict handler on 1024 px (in process, no HTTP): {figures['handler_1024_ms']} ms, "
        f"{figures['handler_over_forward']}x the bare forward"
    )
    print(
        f"/predict on 1024 px over HTTP (upload, call, result): {figures['predict_1024_ms']} ms; bare "
        f"forward at {figures['input_size']} px: {figures['forward_ms']} ms; ratio "
        f"{figures['predict_over_forward']}x (target <= 3x)"
        + (f"; the forward holds the image and its mirror image, and the image alone takes "
           f"{figures['forward_without_mirror_ms']} ms ({figures['predict_over_forward_without_mirror']}x)"
           if figures["mirror_average"] else "")
    )
    print(
        f"/predict through gradio_client: {figures['predict_1024_gradio_client_ms']} ms "
        f"({figures['gradio_client_over_forward']}x; its 50 ms message polling included), "
        f"{figures['predict_1024_gradio_client_with_downloads_ms']} ms with it downloading the 15 images"
    )
    for error in errors[:5]:
        print(f"error: {error}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-app-") as scratch:
        weights = args.weights
        if args.random_init:
            from xray_app.model import write_random_init

            weights = write_random_init(Path(scratch) / "random-init")
        if weights is None:
            parser.error("give --weights PATH (or XRAY_WEIGHTS), or --random-init")
        images = radiographs(args.images)
        if not images:
            parser.error(f"no radiographs in {args.images}")
        measured = measure(args, Path(weights), images, Path(scratch))
    figures = figures_of(args, measured)
    print_summary(figures, measured["load"]["errors"], args.max_growth_mb)
    print(json.dumps(figures))
    return 0 if figures["errors"] == 0 and figures["memory_bounded"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
