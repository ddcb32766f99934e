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
from pathlib import Path

import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

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


def _run(args: argparse.Namespace) -> int:
    images = sorted((args.data / "nih" / "images").glob("*.png"))[: args.batch_size]
    file_512 = args.data / "nih" / "images" / IMAGE_512.name
    file_1024 = args.data / "nih" / "originals" / IMAGE_1024.name
    if len(images) < args.batch_size or not file_1024.is_file():
        print(f"error: shared radiographs not found under {args.data}", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="bench-weights-") as scratch:
        if args.weights is None:
            weights_dir = write_random_init(Path(scratch) / "random-init")
            weights_note = (f"UNTRAINED random-init checkpoint written to {weights_dir} "
                            "(same arithmetic as trained weights: fine for timing)")
        else:
            weights_dir, weights_note = args.weights, str(args.weights)
        predictor = Predictor(load_checkpoint(weights_dir), device=args.device)
        library_model = load_checkpoint(weights_dir, device=predictor.device).model
    device = predictor.device
    config = predictor.config
    batch = torch.stack([preprocess(path, config.preprocess)[0] for path in images])
    x = batch.to(device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    use_autocast = device.type == "cuda"

    mirror = config.mirror_average

    def bare_forward(*, mirror_average: bool = mirror) -> None:
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16,
                                                    enabled=use_autocast):
            score_batch(predictor._model, x, mirror_average=mirror_average)

    def fast_path() -> None:
        predictor.infer(batch)

    library_input = batch.to(device)

    def library_loop() -> None:
        with GradCAM(model=library_model, target_layers=[library_model.layer4]) as cam:
            for c in range(NUM_LABELS):
                cam(input_tensor=library_input, targets=[ClassifierOutputTarget(c)] * len(batch))

    threads = torch.get_num_threads()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {threads} threads"
    print(f"device: {device} ({name}); torch {torch.__version__}; input {config.input_size} px, "
          f"batch {len(batch)}")
    print(f"weights: {weights_note}")
    print("scores: each image averaged with its mirror image (the forward pass holds both)"
          if mirror else "scores: images as given")

    for _ in range(args.warmup):
        bare_forward()
        fast_path()
    forward_s, predictor_s = [], []
    for repeat in range(args.repeats):
        # paired and interleaved, alternating which goes first: background load from
        # other processes then hits both paths alike
        if repeat % 2:
            predictor_s.append(_time(fast_path, device))
            forward_s.append(_time(bare_forward, device))
        else:
            forward_s.append(_time(bare_forward, device))
            predictor_s.append(_time(fast_path, device))
    forward_ms, predictor_ms = _median_ms(forward_s), _median_ms(predictor_s)
    ratio = statistics.median(p / f for p, f in zip(predictor_s, forward_s, strict=True))
    ratio_of_medians = predictor_ms / forward_ms
    ratio_min = min(predictor_s) / min(forward_s)
    single_ms = _median_ms([_time(lambda: bare_forward(mirror_average=False), device)
                            for _ in range(args.repeats)])
    with torch.inference_mode():
        features = predictor._model.forward_features(with_mirror_images(x) if mirror else x).float()
    cam_s = [_time(lambda: class_activation_maps(features, predictor._fc_weight, config.input_size,
                                                 mirror_average=mirror),
                   device) for _ in range(args.repeats)]
    cam_ms = _median_ms(cam_s)
    print(f"bare forward                          : {forward_ms:9.1f} ms  (median of {args.repeats}; "
          f"min {1000 * min(forward_s):.1f})")
    if mirror:
        print(f"  the images alone, without mirrors   : {single_ms:9.1f} ms")
    print(f"predictor: probabilities + 15 heatmaps: {predictor_ms:9.1f} ms  (median of {args.repeats}; "
          f"min {1000 * min(predictor_s):.1f})")
    print(f"heatmaps_vs_forward                   : {ratio:9.2f}x  (median of the {args.repeats} paired "
          f"ratios; target <= {TARGET_RATIO}x; ratio of medians {ratio_of_medians:.2f}x, of minima "
          f"{ratio_min:.2f}x)")
    print(f"  of which the 15 maps from features  : {cam_ms:9.2f} ms  (one matrix product, "
          "normalisation, resize)")

    library_loop()  # warm-up
    loop_ms = _median_ms([_time(library_loop, device) for _ in range(args.loop_repeats)])
    print(f"pytorch-grad-cam loop, 15 classes     : {loop_ms:9.1f} ms  = {loop_ms / forward_ms:.1f}x "
          f"bare forward, {loop_ms / predictor_ms:.1f}x the predictor (median of {args.loop_repeats})")

    end_to_end = {}
    for label, path in (("512", file_512), ("1024", file_1024)):
        predictor.predict(path)  # warm-up (file cache, allocator)
        samples = [_time(lambda p=path: predictor.predict(p), device) for _ in range(args.repeats)]
        end_to_end[label] = _median_ms(samples)
        print(f"predict() from file, {label:>4} px (decode included): {end_to_end[label]:9.1f} ms  "
              f"({path.name}, median of {args.repeats})")

    figures = {
        "device": str(device),
        "device_name": name,
        "torch": torch.__version__,
        "threads": threads,
        "input_size": config.input_size,
        "batch_size": len(batch),
        "repeats": args.repeats,
        "weights": "random-init (untrained)" if args.weights is None else str(args.weights),
        "mirror_average": mirror,
        "forward_ms": round(forward_ms, 2),
        "forward_without_mirrors_ms": round(single_ms, 2),
        "predictor_ms": round(predictor_ms, 2),
        "gradcam_loop_ms": round(loop_ms, 2),
        "heatmaps_vs_forward": round(ratio, 3),
        "heatmaps_vs_forward_of_medians": round(ratio_of_medians, 3),
        "heatmaps_vs_forward_of_minima": round(ratio_min, 3),
        "forward_min_ms": round(1000 * min(forward_s), 2),
        "predictor_min_ms": round(1000 * min(predictor_s), 2),
        "cam_step_ms": round(cam_ms, 3),
        "gradcam_loop_vs_forward": round(loop_ms / forward_ms, 1),
        "gradcam_loop_vs_predictor": round(loop_ms / predictor_ms, 1),
        "predict_file_512_ms": round(end_to_end["512"], 2),
        "predict_file_1024_ms": round(end_to_end["1024"], 2),
        "target_heatmaps_vs_forward": TARGET_RATIO,
        "meets_target": ratio <= TARGET_RATIO,
    }
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
