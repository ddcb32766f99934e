"""Inference timing: bare forward vs. probabilities + all 15 heatmaps vs. pytorch-grad-cam.

``python -m benchmarks.bench_inference [--device cuda] [--weights DIR]`` measures, in one
run and on the shared NIH radiographs at the model's input size:

1. the bare forward pass the checkpoint asks for (``model(x)`` under ``inference_mode``;
   on CUDA with the same ``channels_last`` + autocast as the predictor), over each image
   and its mirror image when its config says ``mirror_average`` (then the forward of the
   images alone is timed too and printed beside it);
2. the predictor's fast path (:meth:`~xray_app.predictor.Predictor.infer`): calibrated
   probabilities and the Grad-CAM maps of all 15 classes, as numpy arrays on the host;
3. pytorch-grad-cam's per-class loop for the same 15 maps (``GradCAM`` on ``layer4`` with
   ``ClassifierOutputTarget(c)``, one call per class, inside one ``with`` block), on an
   ordinary float32 copy of the model as a user of the library would run it;
4. end-to-end :meth:`~xray_app.predictor.Predictor.predict` from a file (decode included)
   for a 512 px and a 1024 px shared radiograph.

Each time is the median of ``--repeats`` runs after ``--warmup`` runs.  1 and 2 are
measured in pairs, interleaved with alternating order, and ``heatmaps_vs_forward`` is
the median of the per-pair ratios: on a machine shared with other work the load changes
from second to second, and two back-to-back runs see nearly the same load while runs a
minute apart do not (the ratio of the medians and of the minima are printed too).  The
time of the 15-map step alone (layer4 features to normalised maps) is also printed.
The last line printed is one JSON object with every figure (target:
``"heatmaps_vs_forward"`` <= 1.3).  Without ``--weights`` a random-init checkpoint is
written to a temporary folder: untrained weights do the same arithmetic, so this is
fine for timing, and the output says so.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from training.data.images import find_images
from training.data.metadata import MetadataError
from xray_app.compute import run_on_compute_thread
from xray_app.explain import class_activation_maps
from xray_app.labels import NUM_LABELS
from xray_app.model import load_checkpoint, with_mirror_images, write_random_init
from xray_app.predictor import Predictor
from xray_app.preprocess import preprocess
from xray_app.scoring import score_batch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
IMAGE_512 = SHARED_DATA / "nih" / "images" / "00000075_000.png"
IMAGE_1024 = SHARED_DATA / "nih" / "originals" / "00000075_000.png"
TARGET_RATIO = 1.3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_inference",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--weights", type=Path, metavar="DIR",
                        help="checkpoint directory (default: a random-init checkpoint in a temp dir)")
    parser.add_argument("--batch-size", type=int, default=1,
                        help="images per forward pass (default 1: one demo request)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=30,
                        help="timed runs of the forward and predictor paths (median reported)")
    parser.add_argument("--loop-repeats", type=int, default=3,
                        help="timed runs of pytorch-grad-cam's 15-class loop (slow on CPU)")
    parser.add_argument("--data", type=Path, default=SHARED_DATA, help="the shared data folder")
    return parser


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(function: Callable[[], object], device: torch.device) -> float:
    """Seconds for one call, waiting for the GPU to finish."""
    _synchronise(device)
    start = time.perf_counter()
    function()
    _synchronise(device)
    return time.perf_counter() - start


def _median_ms(samples: Sequence[float]) -> float:
    return 1000.0 * statistics.median(samples)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # every timed call on the predictor's compute thread: torch work from a second thread
    # would slow both paths down (see xray_app.compute)
    return run_on_compute_thread(_run, args)


@dataclass
class Setup:
    """What every timed path shares: the predictor, pytorch-grad-cam's copy of the same
    network, the preprocessed batch (``x`` on the device, in the predictor's layout)."""

    predictor: Predictor
    library_model: torch.nn.Module
    batch: torch.Tensor
    x: torch.Tensor
    library_input: torch.Tensor
    weights_note: str

    @property
    def device(self) -> torch.device:
        return self.predictor.device

    @property
    def mirror(self) -> bool:
        return self.predictor.config.mirror_average

    def bare_forward(self, *, mirror_average: bool | None = None) -> None:
        mirror = self.mirror if mirror_average is None else mirror_average
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16,
                                                    enabled=self.device.type == "cuda"):
            score_batch(self.predictor._model, self.x, mirror_average=mirror)

    def fast_path(self) -> None:
        self.predictor.infer(self.batch)

    def library_loop(self) -> None:
        model, batch = self.library_model, self.library_input
        with GradCAM(model=model, target_layers=[model.layer4]) as cam:
            for c in range(NUM_LABELS):
                cam(input_tensor=batch, targets=[ClassifierOutputTarget(c)] * len(batch))


def _setup(args: argparse.Namespace, images: Sequence[Path]) -> Setup:
    with tempfile.TemporaryDirectory(prefix="bench-weights-") as scratch:
        if args.weights is None:
            weights_dir = write_random_init(Path(scratch) / "random-init")
            weights_note = (f"UNTRAINED random-init checkpoint written to {weights_dir} "
                            "(same arithmetic as trained weights: fine for timing)")
        else:
            weights_dir, weights_note = args.weights, str(args.weights)
        predictor = Predictor(load_checkpoint(weights_dir), device=args.device)
        library_model = load_checkpoint(weights_dir, device=predictor.device).model
    batch = torch.stack([preprocess(path, predictor.config.preprocess)[0] for path in images])
    x = batch.to(predictor.device)
    if predictor.device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    return Setup(predictor, library_model, batch, x, batch.to(predictor.device), weights_note)


def _time_paths(bench: Setup, args: argparse.Namespace) -> dict[str, float]:
    """The bare forward pass against the predictor (probabilities + 15 heatmaps), paired."""
    device = bench.device
    for _ in range(args.warmup):
        bench.bare_forward()
        bench.fast_path()
    forward_s, predictor_s = [], []
    for repeat in range(args.repeats):
        # paired and interleaved, alternating which goes first: background load from
        # other processes then hits both paths alike
        if repeat % 2:
            predictor_s.append(_time(bench.fast_path, device))
            forward_s.append(_time(bench.bare_forward, device))
        else:
            forward_s.append(_time(bench.bare_forward, device))
            predictor_s.append(_time(bench.fast_path, device))
    forward_ms, predictor_ms = _median_ms(forward_s), _median_ms(predictor_s)
    single_ms = _median_ms([_time(lambda: bench.bare_forward(mirror_average=False), device)
                            for _ in range(args.repeats)])
    config = bench.predictor.config
    with torch.inference_mode():
        x = with_mirror_images(bench.x) if bench.mirror else bench.x
        features = bench.predictor._model.forward_features(x).float()
    cam_ms = _median_ms([_time(lambda: class_activation_maps(
        features, bench.predictor._fc_weight, config.input_size, mirror_average=bench.mirror),
        device) for _ in range(args.repeats)])
    return {
        "forward_ms": forward_ms,
        "predictor_ms": predictor_ms,
        "ratio": statistics.median(p / f for p, f in zip(predictor_s, forward_s, strict=True)),
        "ratio_of_medians": predictor_ms / forward_ms,
        "ratio_min": min(predictor_s) / min(forward_s),
        "single_ms": single_ms,
        "cam_ms": cam_ms,
        "forward_min_ms": 1000 * min(forward_s),
        "predictor_min_ms": 1000 * min(predictor_s),
    }


def _print_paths(t: dict[str, float], mirror: bool, repeats: int) -> None:
    print(f"bare forward                          : {t['forward_ms']:9.1f} ms  (median of {repeats}; "
          f"min {t['forward_min_ms']:.1f})")
    if mirror:
        print(f"  the images alone, without mirrors   : {t['single_ms']:9.1f} ms")
    print(f"predictor: probabilities + 15 heatmaps: {t['predictor_ms']:9.1f} ms  (median of {repeats}; "
          f"min {t['predictor_min_ms']:.1f})")
    print(f"heatmaps_vs_forward                   : {t['ratio']:9.2f}x  (median of the {repeats} paired "
          f"ratios; target <= {TARGET_RATIO}x; ratio of medians {t['ratio_of_medians']:.2f}x, of minima "
          f"{t['ratio_min']:.2f}x)")
    print(f"  of which the 15 maps from features  : {t['cam_ms']:9.2f} ms  (one matrix product, "
          "normalisation, resize)")


def _time_files(bench: Setup, files: dict[str, Path], repeats: int) -> dict[str, float]:
    """``predict()`` from a file, decoding included, per input size."""
    end_to_end = {}
    for label, path in files.items():
        bench.predictor.predict(path)  # warm-up (file cache, allocator)
        samples = [_time(lambda p=path: bench.predictor.predict(p), bench.device)
                   for _ in range(repeats)]
        end_to_end[label] = _median_ms(samples)
        print(f"predict() from file, {label:>4} px (decode included): {end_to_end[label]:9.1f} ms  "
              f"({path.name}, median of {repeats})")
    return end_to_end


def _figures(bench: Setup, args: argparse.Namespace, name: str, t: dict[str, float],
             loop_ms: float, end_to_end: dict[str, float]) -> dict[str, object]:
    return {
        "device": str(bench.device),
        "device_name": name,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "input_size": bench.predictor.config.input_size,
        "batch_size": len(bench.batch),
        "repeats": args.repeats,
        "weights": "random-init (untrained)" if args.weights is None else str(args.weights),
        "mirror_average": bench.mirror,
        "forward_ms": round(t["forward_ms"], 2),
        "forward_without_mirrors_ms": round(t["single_ms"], 2),
        "predictor_ms": round(t["predictor_ms"], 2),
        "gradcam_loop_ms": round(loop_ms, 2),
        "heatmaps_vs_forward": round(t["ratio"], 3),
        "heatmaps_vs_forward_of_medians": round(t["ratio_of_medians"], 3),
        "heatmaps_vs_forward_of_minima": round(t["ratio_min"], 3),
        "forward_min_ms": round(t["forward_min_ms"], 2),
        "predictor_min_ms": round(t["predictor_min_ms"], 2),
        "cam_step_ms": round(t["cam_ms"], 3),
        "gradcam_loop_vs_forward": round(loop_ms / t["forward_ms"], 1),
        "gradcam_loop_vs_predictor": round(loop_ms / t["predictor_ms"], 1),
        "predict_file_512_ms": round(end_to_end["512"], 2),
        "predict_file_1024_ms": round(end_to_end["1024"], 2),
        "target_heatmaps_vs_forward": TARGET_RATIO,
        "meets_target": t["ratio"] <= TARGET_RATIO,
    }


def _shared_images(data: Path, count: int) -> list[Path]:
    """The first ``count`` shared radiographs by name (none when the folder is missing)."""
    try:
        found = find_images(data / "nih" / "images")
    except MetadataError:
        return []
    return [found[name] for name in sorted(found)][:count]


def _run(args: argparse.Namespace) -> int:
    images = _shared_images(args.data, args.batch_size)
    files = {"512": args.data / "nih" / "images" / IMAGE_512.name,
             "1024": args.data / "nih" / "originals" / IMAGE_1024.name}
    if len(images) < args.batch_size or not files["1024"].is_file():
        print(f"error: shared radiographs not found under {args.data}", file=sys.stderr)
        return 2
    bench = _setup(args, images)
    device = bench.device
    threads = torch.get_num_threads()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {threads} threads"
    print(f"device: {device} ({name}); torch {torch.__version__}; input "
          f"{bench.predictor.config.input_size} px, batch {len(bench.batch)}")
    print(f"weights: {bench.weights_note}")
    print("scores: each image averaged with its mirror image (the forward pass holds both)"
          if bench.mirror else "scores: images as given")
    timings = _time_paths(bench, args)
    _print_paths(timings, bench.mirror, args.repeats)
    bench.library_loop()  # warm-up
    loop_ms = _median_ms([_time(bench.library_loop, device) for _ in range(args.loop_repeats)])
    print(f"pytorch-grad-cam loop, 15 classes     : {loop_ms:9.1f} ms  = "
          f"{loop_ms / timings['forward_ms']:.1f}x bare forward, "
          f"{loop_ms / timings['predictor_ms']:.1f}x the predictor (median of {args.loop_repeats})")
    end_to_end = _time_files(bench, files, args.repeats)
    print(json.dumps(_figures(bench, args, name, timings, loop_ms, end_to_end)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
