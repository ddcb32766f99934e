"""Smoke runs of the training benchmarks: each ends with a JSON line of its figures."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import bench_loader, bench_train


@pytest.fixture(autouse=True)
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)  # bench_loader pins one thread for per-core figures


def _last_json(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


def test_bench_loader_compares_cache_and_png_on_shared_images(capsys):
    assert bench_loader.main(["--count", "6", "--size", "128", "--input-size", "64", "--repeats", "1"]) == 0
    figures = _last_json(capsys.readouterr().out)
    assert figures["images"] == 6, f"expected 6 images timed, got {figures}"
    assert figures["item_cache_per_s"] > figures["item_png_per_s"] > 0, (
        f"expected reading the cache faster than decoding PNGs, got {figures}")


def test_bench_train_runs_the_training_step_on_cpu(capsys):
    code = bench_train.main(["--device", "cpu", "--batch-size", "2", "--input-size", "64",
                             "--steps", "1", "--warmup", "1"])
    assert code == 0, f"expected exit 0, got {code}"
    figures = _last_json(capsys.readouterr().out)
    assert figures["device"] == "cpu" and figures["images_per_s"] > 0, f"unexpected figures {figures}"
    assert (figures["amp"], figures["channels_last"]) == ("none", False), "expected fp32 defaults on CPU"
