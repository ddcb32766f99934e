"""python -m training.train: it learns, smoke runs, resumes after kill -9, runs under torchrun."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from tests.synthetic_xray import write_dataset
from training import cache
from training.data.metadata import labels_of
from training.data.sampling import RepeatFactorSampler, repeat_factors
from training.fitting.config import ConfigError, from_dict, parse_config, write_yaml
from training.fitting.loop import fit, make_schedule, mix_batch
from training.fitting.run_folder import RunFolder
from training.fitting.runtime import Runtime, TrainingError, cpu_has_native, make_runtime
from training.fitting.weight_averaging import StochasticWeightAverage, WeightAverage
from training.split import main as data_main
from xray_app.labels import LABELS
from xray_app.model import build_model, load_checkpoint

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "nih"
SCORE_COLUMNS = ["epoch", "lr", "train_loss", "train_images", "val_loss", "val_mean_auroc"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> tuple[Path, Path]:
    return write_dataset(tmp_path_factory.mktemp("synthetic"), count=128, size=96, seed=0)


def _tiny_flags(metadata: Path, images: Path, out: Path, *extra: str) -> list[str]:
    return ["--metadata", str(metadata), "--images", str(images), "--out", str(out),
            "--input-size", "32", "--batch-size", "8", "--pretrained", "none", "--architecture", "tiny-resnet", "--num-workers", "0",
            "--no-progress", "--val-fraction", "0.25", "--test-fraction", "0.1", "--seed", "3", *extra]


def _run(args: list[str], timeout: int = 240, **env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    result = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, f"expected exit 0 from {args[:4]}, got {result.returncode}:\n{result.stderr[-3000:]}"
    return result


@pytest.mark.slow
def test_loop_learns_a_synthetic_pattern(synthetic, tmp_path):
    metadata, images = synthetic
    cfg = parse_config(_tiny_flags(metadata, images, tmp_path / "run", "--epochs", "4", "--lr", "1e-3",
                                   "--augment-strength", "0", "--warmup-epochs", "0.5",
                                   "--input-size", "48"))
    seen: list[tuple[int, float]] = []
    best = fit(cfg, on_epoch_end=lambda epoch, m: seen.append((epoch, m["val_mean_auroc"])))
    assert [e for e, _ in seen] == [0, 1, 2, 3], f"expected a callback per epoch, got {seen}"
    top = max(score for _, score in seen)
    assert top >= 0.9, f"expected validation mean AUROC over the 14 pathologies >= 0.9 on a learnable pattern, got {seen}"
    loaded = load_checkpoint(best)
    assert loaded.config.trained and loaded.config.input_size == 48, "expected a trained 48 px export"
    assert loaded.config.provenance["metrics"]["val_mean_auroc"] == pytest.approx(top), (
        "expected the export to be the best epoch and to record its metrics")
    assert loaded.config.thresholds == (0.5,) * len(LABELS), "expected default 0.5 thresholds"


def test_callback_can_stop_a_run_after_its_checkpoint(synthetic, tmp_path):
    class Pruned(Exception):
        pass

    def prune(epoch: int, metrics: dict[str, float]) -> None:
        assert "val_mean_auroc" in metrics, f"expected val_mean_auroc in {sorted(metrics)}"
        raise Pruned

    metadata, images = synthetic
    cfg = parse_config(_tiny_flags(metadata, images, tmp_path / "run", "--epochs", "3", "--limit-batches", "1"))
    with pytest.raises(Pruned):
        fit(cfg, on_epoch_end=prune)
    history = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert len(history) == 1, f"expected the run stopped after epoch 1, got {len(history)} rows"
    assert (tmp_path / "run" / RunFolder.CHECKPOINT).is_file(), "expected the epoch checkpoint written first"


def test_yaml_config_with_flag_overrides_is_written_next_to_the_run(synthetic, tmp_path):
    metadata, images = synthetic
    (tmp_path / "base.yaml").write_text("epochs: 7\nlr: 0.01\ndata:\n  input_size: 48\naugment:\n  strength: 0.5\n")
    cfg = parse_config(["--config", str(tmp_path / "base.yaml"), "--lr", "0.002",
                        "--images", str(images), "--metadata", str(metadata)])
    assert (cfg.epochs, cfg.lr, cfg.data.input_size, cfg.augment.strength) == (7, 0.002, 48, 0.5), (
        f"expected YAML values with the --lr flag winning, got {cfg}")
    assert from_dict(cfg.to_dict()) == cfg, "expected the written form to round-trip"


def test_smoke_one_epoch_on_the_shared_radiographs(tmp_path):
    out = tmp_path / "run"
    result = _run([sys.executable, "-m", "training.train", "--metadata", str(SHARED / "Data_Entry_2017_v2020.csv.gz"),
                   "--images", str(SHARED / "images"), "--out", str(out), "--epochs", "1",
                   "--limit-batches", "2", "--batch-size", "4", "--input-size", "64",
                   "--pretrained", "none", "--architecture", "tiny-resnet", "--num-workers", "0", "--no-progress",
                   "--sampling", "raked"])
    assert "500 of 112120 listed images available" in result.stdout, "expected the partial download reported"
    history = pd.read_csv(out / "metrics.csv")
    assert history["train_images"].tolist() == [8.0], "expected 2 batches of 4 images"
    loaded = load_checkpoint(out / "best")
    assert loaded.config.input_size == 64, "expected the app format export at the trained size"
    # what `python app.py --weights RUN/best` does: the app's Predictor on the export
    from xray_app.predictor import Predictor

    prediction = Predictor.from_weights(out / "best", device="cpu").predict(SHARED / "images" / "00000075_000.png")
    assert prediction.probabilities.shape == (len(LABELS),), "expected 15 probabilities from the app"
    assert prediction.cams.shape == (len(LABELS), 64, 64), "expected 15 heatmaps at the trained size"
    splits = {name: set(pd.read_csv(out / f"{name}.csv")["Patient ID"]) for name in ("train", "val", "test")}
    assert not (splits["train"] & splits["val"]) and not (splits["train"] & splits["test"]), (
        "expected no patient in two splits")
    # provenance says what the data is and records no machine-local path
    provenance = loaded.config.provenance
    assert provenance["data"]["description"] == "500 NIH ChestX-ray14 radiographs from 500 patients, a public subset", (
        f"expected the data described by what it is, got {provenance['data']}")
    written = (out / "best" / "config.json").read_text()
    for local in (str(tmp_path), "../shared", str(SHARED)):
        assert local not in written, f"expected no machine-local path {local!r} in config.json"
    assert provenance["train_config"]["sampling"] == "raked", "expected the sampling rule recorded"
    assert provenance["command"].startswith("python -m training.train --metadata Data_Entry_2017_v2020.csv.gz"), (
        f"expected the command that ran recorded with base names, got {provenance.get('command')}")
    assert provenance["train_config"]["data"]["images"] == ["images"], (
        f"expected image folders recorded by name, got {provenance['train_config']['data']}")


def test_smoke_from_a_cache_alone_with_loader_workers(tmp_path):
    names = sorted(p.name for p in (SHARED / "images").glob("*.png"))[:80]
    subset = tmp_path / "subset.csv"
    meta = pd.read_csv(SHARED / "Data_Entry_2017_v2020.csv.gz")
    meta[meta["Image Index"].isin(names)].to_csv(subset, index=False)
    code = cache.main(["--images", str(SHARED / "images"), "--metadata", str(subset),
                         "--out", str(tmp_path / "cache"), "--size", "64", "--workers", "2", "--no-progress"])
    assert code == 0, f"expected the cache built, got exit {code}"
    out = tmp_path / "run"
    _run([sys.executable, "-m", "training.train", "--metadata", str(SHARED / "Data_Entry_2017_v2020.csv.gz"),
          "--cache", str(tmp_path / "cache"), "--out", str(out), "--epochs", "1", "--limit-batches", "2",
          "--batch-size", "4", "--input-size", "64", "--pretrained", "none", "--architecture", "tiny-resnet", "--num-workers", "2",
          "--no-progress"])
    total = sum(len(pd.read_csv(out / f"{name}.csv")) for name in ("train", "val", "test"))
    assert total == 80, f"expected the 80 cached images split, got {total}"
    assert pd.read_csv(out / "metrics.csv")["train_images"].tolist() == [8.0], "expected 2 batches of 4"


@pytest.mark.slow
def test_resume_after_kill_9_mid_epoch_matches_an_uninterrupted_run(synthetic, tmp_path):
    metadata, images = synthetic
    flags = [*_tiny_flags(metadata, images, tmp_path / "{}", "--epochs", "3", "--log-every", "1",
                          "--limit-batches", "4")]
    command = [sys.executable, "-m", "training.train"]
    straight = tmp_path / "straight"
    _run(command + [f.format("straight") for f in flags])

    killed = tmp_path / "killed"
    process = subprocess.Popen(command + [f.format("killed") for f in flags], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    for line in process.stdout:
        if line.startswith("epoch 2 step 2/"):
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, f"expected the run killed, got {process.returncode}"
    saved = torch.load(killed / RunFolder.CHECKPOINT, weights_only=True)
    assert saved["progress"]["epoch"] == 1, "expected the kill to land inside epoch 2"

    result = _run(command + [f.format("killed") for f in flags] + ["--resume"])
    assert "resumed from" in result.stdout, "expected the run to continue from its checkpoint"
    a = pd.read_csv(straight / "metrics.csv")[SCORE_COLUMNS]
    b = pd.read_csv(killed / "metrics.csv")[SCORE_COLUMNS]
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-6, obj="metrics after resume")
    wa = load_file(str(straight / "best" / "model.safetensors"))
    wb = load_file(str(killed / "best" / "model.safetensors"))
    differ = [k for k in wa if not torch.allclose(wa[k].float(), wb[k].float(), rtol=1e-3, atol=1e-4)]
    assert not differ, f"expected the same best weights after resume; differing: {differ[:3]}"


@pytest.mark.slow
def test_torchrun_two_cpu_processes_share_one_balanced_epoch(synthetic, tmp_path):
    metadata, images = synthetic
    out = tmp_path / "ddp"
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
          "-m", "training.train", *_tiny_flags(metadata, images, out, "--epochs", "1", "--device", "cpu")],
         OMP_NUM_THREADS="1")
    train = pd.read_csv(out / "train.csv")
    factors = repeat_factors(labels_of(train), no_finding_fraction=0.5, repeat_threshold=0.1, max_repeat=4.0)
    shard = RepeatFactorSampler(factors, seed=3, rank=0, world_size=2)
    per_rank = len(shard) // 8 * 8
    history = pd.read_csv(out / "metrics.csv")
    assert history["train_images"].tolist() == [2.0 * per_rank], (
        f"expected both ranks' {per_rank} images counted, got {history['train_images'].tolist()}")
    assert not math.isnan(history["val_mean_auroc"][0]), "expected a validation score from rank 0"
    assert load_checkpoint(out / "best").config.trained, "expected rank 0 to export the best checkpoint"


def test_no_finding_undersampling_is_logged_as_the_effective_mix(synthetic, tmp_path, capsys):
    metadata, images = synthetic
    fit(parse_config(_tiny_flags(metadata, images, tmp_path / "run", "--epochs", "1",
                                 "--limit-batches", "1", "--no-finding-fraction", "0.25")))
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("balanced epoch"))
    natural, effective = (float(v.rstrip("%")) for v in line.split("No Finding ")[1].split("->"))
    assert effective < natural, f"expected fewer No Finding draws than natural, got {line}"
    train = labels_of(pd.read_csv(tmp_path / "run" / "train.csv"))
    assert np.isclose(natural, 100 * train[:, -1].mean(), atol=0.1), "expected natural mix from train split"


def test_splits_written_by_training_data_are_reused_as_is(synthetic, tmp_path):
    metadata, images = synthetic
    assert data_main(["--metadata", str(metadata), "--images", str(images), "--seed", "11",
                      "--out", str(tmp_path / "splits")]) == 0, "expected training.split to succeed"
    fit(parse_config(_tiny_flags(metadata, images, tmp_path / "run", "--epochs", "1", "--limit-batches", "1",
                                 "--splits", str(tmp_path / "splits"))))
    for name in ("train", "val", "test"):
        given = pd.read_csv(tmp_path / "splits" / f"{name}.csv")["Image Index"].tolist()
        used = pd.read_csv(tmp_path / "run" / f"{name}.csv")["Image Index"].tolist()
        assert used == given, f"expected the run's {name} split to be the one given with --splits"


def test_split_lists_without_training_images_fail_with_a_clear_message(tmp_path):
    # all 500 shared radiographs are in the CheXNet *test* list: nothing to train on
    cfg = parse_config(["--metadata", str(SHARED / "Data_Entry_2017_v2020.csv.gz"), "--images",
                        str(SHARED / "images"), "--split-lists", str(SHARED / "chexnet_split"),
                        "--out", str(tmp_path / "run"), "--pretrained", "none"])
    with pytest.raises(TrainingError, match="train split is empty.*patient-random split"):
        fit(cfg)


def test_weight_average_is_the_exponential_moving_average_of_the_steps():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    average = WeightAverage(model, decay=0.9)
    values = [1.0, 3.0, -2.0]
    expected = None
    for value in values:
        with torch.no_grad():
            model[0].weight.fill_(value)
            model[1].running_mean.fill_(value)
        average.update()
        expected = value if expected is None else 0.9 * expected + 0.1 * value
    weight, running_mean = average.module[0].weight, average.module[1].running_mean
    assert torch.allclose(weight, torch.full_like(weight, expected)), (
        f"expected the first step copied, then 0.9 * average + 0.1 * weights: {expected}, got {weight}")
    assert torch.allclose(running_mean, torch.full_like(running_mean, expected)), (
        "expected batch-norm statistics averaged like the weights")


def _average_flags(synthetic, out: Path, epochs: int = 2, *extra: str) -> list[str]:
    metadata, images = synthetic
    return _tiny_flags(metadata, images, out, "--epochs", str(epochs), "--limit-batches", "2", "--ema-decay", "0.5",
                       *extra)


def test_with_a_weight_average_the_average_is_validated_and_exported(synthetic, tmp_path):
    seen: list[float] = []
    fit(parse_config(_average_flags(synthetic, tmp_path / "run", epochs=1)),
        on_epoch_end=lambda epoch, metrics: seen.append(metrics["val_mean_auroc"]))
    saved = torch.load(tmp_path / "run" / RunFolder.CHECKPOINT, weights_only=True)
    exported = load_file(str(tmp_path / "run" / "best" / "model.safetensors"))
    average = {k.removeprefix("module."): v.float() for k, v in saved["average"].items() if k != "n_averaged"}
    raw = saved["model"]["fc.weight"].float()
    assert not torch.allclose(average["fc.weight"], raw), "expected the average to differ from the raw weights"
    differ = [k for k in exported if not torch.allclose(exported[k].float(), average[k], atol=2e-3, rtol=2e-3)]
    assert not differ, f"expected the export to be the average (in fp16); differing: {differ[:3]}"
    loaded = load_checkpoint(tmp_path / "run" / "best")
    assert loaded.config.provenance["metrics"]["val_mean_auroc"] == pytest.approx(seen[0], nan_ok=True), (
        "expected the exported metrics to be those of the validated average")


def test_a_resumed_run_continues_the_same_weight_average_and_mixup(synthetic, tmp_path):
    class Crash(Exception):
        pass

    def crash(epoch: int, metrics: dict[str, float]) -> None:
        raise Crash

    def flags(name: str) -> list[str]:
        return _average_flags(synthetic, tmp_path / name, 2, "--mixup-alpha", "0.4")

    fit(parse_config(flags("straight")))
    with pytest.raises(Crash):
        fit(parse_config(flags("crashed")), on_epoch_end=crash)
    fit(parse_config([*flags("crashed"), "--resume"]))
    a = torch.load(tmp_path / "straight" / RunFolder.CHECKPOINT, weights_only=True)["average"]
    b = torch.load(tmp_path / "crashed" / RunFolder.CHECKPOINT, weights_only=True)["average"]
    differ = [k for k in a if not torch.allclose(a[k].float(), b[k].float(), rtol=1e-4, atol=1e-6)]
    assert not differ, f"expected the same average after a resume; differing: {differ[:3]}"


def test_mixup_blends_each_image_and_its_target_with_the_same_partner_and_weight():
    count = 8
    images = torch.arange(count, dtype=torch.float32).view(count, 1, 1, 1).expand(count, 3, 4, 4).clone()
    targets = torch.eye(count)
    torch.manual_seed(0)
    mixed_images, mixed_targets = mix_batch(images, targets, alpha=0.4)
    assert torch.allclose(mixed_targets.sum(dim=1), torch.ones(count)), "expected targets to stay convex blends"
    assert not torch.equal(mixed_targets, targets), "expected the batch to be mixed"
    implied = mixed_targets @ torch.arange(count, dtype=torch.float32)
    assert torch.allclose(mixed_images[:, 0, 0, 0], implied, atol=1e-5), (
        "expected each image blended with the same partner and weight as its target")
    torch.manual_seed(0)
    again, _ = mix_batch(images, targets, alpha=0.4)
    assert torch.equal(again, mixed_images), "expected the mixing to follow torch's seed"


def test_resuming_without_a_saved_average_is_refused_rather_than_started_afresh(synthetic, tmp_path):
    metadata, images = synthetic
    flags = _tiny_flags(metadata, images, tmp_path / "run", "--epochs", "2", "--limit-batches", "1")
    fit(parse_config([*flags, "--epochs", "1"]))
    with pytest.raises(TrainingError, match="no weight average"):
        fit(parse_config([*flags, "--ema-decay", "0.9", "--resume"]))


def _learning_rates(epochs: int, swa_epochs: int, steps_per_epoch: int, warmup_epochs: float) -> list[float]:
    cfg = from_dict({"data": {"images": "unused"}, "epochs": epochs, "swa_epochs": swa_epochs,
                     "lr": 1e-3, "swa_lr": 2e-4, "warmup_epochs": warmup_epochs, "min_lr_ratio": 0.01})
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    schedule = make_schedule(optimizer, cfg, steps_per_epoch)
    rates = []
    for _ in range(epochs * steps_per_epoch):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return rates


def test_with_weight_averaging_the_cosine_ends_before_the_averaged_epochs_which_hold_the_swa_rate():
    rates = _learning_rates(epochs=10, swa_epochs=4, steps_per_epoch=5, warmup_epochs=1)
    decay, held = rates[5:30], rates[30:]
    assert rates[:5] == pytest.approx([1e-3 * (k + 1) / 5 for k in range(5)]), "expected the warm-up ramp"
    assert all(a > b for a, b in zip(decay, decay[1:], strict=False)), "expected the cosine to decay over epochs 2-6"
    assert decay[-1] < 1e-3 * 0.02, f"expected the cosine near its floor by the end of epoch 6, got {decay[-1]}"
    assert held == pytest.approx([2e-4] * 20), "expected the rate held at --swa-lr in the 4 averaged epochs"
    continued = _learning_rates(epochs=3, swa_epochs=3, steps_per_epoch=5, warmup_epochs=0)
    assert continued == pytest.approx([2e-4] * 15), (
        "expected a run that only averages (a second stage) to hold --swa-lr from its first step")


def test_stochastic_weight_average_is_the_mean_of_the_snapshots_with_batch_norm_recomputed_for_it():
    model = torch.nn.Sequential(torch.nn.Linear(1, 1, bias=False), torch.nn.BatchNorm1d(1))
    average = StochasticWeightAverage(model)
    for value in (1.0, 3.0, 8.0):
        with torch.no_grad():
            model[0].weight.fill_(value)
        average.update()
    inputs = torch.tensor([[1.0], [2.0], [3.0], [6.0]])
    network = average.network([(inputs[:2], None), (inputs[2:], None)], Runtime(torch.device("cpu")))
    assert average.count == 3, "expected three snapshots counted"
    assert network[0].weight.item() == pytest.approx(4.0), "expected the equal-weight mean of 1, 3 and 8"
    assert network[1].running_mean.item() == pytest.approx(4.0 * inputs.mean().item()), (
        "expected batch-norm means recomputed on the inputs under the averaged weights")
    assert model[1].running_mean.item() == 0.0 and model[0].weight.item() == 8.0, (
        "expected the trained network itself left untouched")


def test_weight_averages_are_one_or_the_other_and_cover_at_most_every_epoch():
    with pytest.raises(ConfigError, match="give one"):
        from_dict({"data": {"images": "x"}, "epochs": 4, "swa_epochs": 2, "ema_decay": 0.9})
    with pytest.raises(ConfigError, match="swa_epochs"):
        from_dict({"data": {"images": "x"}, "epochs": 4, "swa_epochs": 5})


def test_with_swa_the_average_of_the_last_epochs_is_exported_and_a_resumed_run_keeps_it(synthetic, tmp_path):
    class Crash(Exception):
        pass

    def crash_after_second_epoch(epoch: int, metrics: dict[str, float]) -> None:
        if epoch == 1:
            raise Crash

    metadata, images = synthetic

    def flags(name: str) -> list[str]:
        return _tiny_flags(metadata, images, tmp_path / name, "--epochs", "3", "--swa-epochs", "2",
                           "--limit-batches", "2", "--lr", "1e-3", "--no-validate")

    fit(parse_config(flags("straight")))
    metrics = pd.read_csv(tmp_path / "straight" / "metrics.csv")
    assert metrics["swa_models"].fillna(0).tolist() == [0, 1, 2], "expected the last two epochs averaged"
    assert metrics["lr"].iloc[1:].tolist() == pytest.approx([2.5e-4] * 2), "expected a quarter of --lr held"
    saved = torch.load(tmp_path / "straight" / RunFolder.CHECKPOINT, weights_only=True)
    exported = load_file(str(tmp_path / "straight" / "best" / "model.safetensors"))
    differ = [k for k in exported if not torch.allclose(exported[k].float(), saved["swa_model"][k].float(),
                                                         atol=2e-3, rtol=2e-3)]
    assert not differ, f"expected the export to be the average (in fp16); differing: {differ[:3]}"
    assert not torch.allclose(saved["swa_model"]["fc.weight"], saved["model"]["fc.weight"]), (
        "expected the average to differ from the last raw weights")
    assert torch.allclose(saved["swa_model"]["fc.weight"], saved["swa"]["module.fc.weight"]), (
        "expected the exported weights to be the running average's")

    with pytest.raises(Crash):
        fit(parse_config(flags("crashed")), on_epoch_end=crash_after_second_epoch)
    fit(parse_config([*flags("crashed"), "--resume"]))
    resumed = torch.load(tmp_path / "crashed" / RunFolder.CHECKPOINT, weights_only=True)
    differ = [k for k in saved["swa_model"]
              if not torch.allclose(saved["swa_model"][k].float(), resumed["swa_model"][k].float(),
                                    rtol=1e-4, atol=1e-6)]
    assert not differ, f"expected the same average after a resume; differing: {differ[:3]}"

    continued = build_model(pretrained=tmp_path / "straight" / RunFolder.CHECKPOINT, architecture="tiny-resnet")
    assert all(torch.equal(value, saved["model"][key]) for key, value in continued.state_dict().items()), (
        "expected --pretrained RUN/last.ckpt to start from that run's raw weights, head included")


def _cpu_flags() -> set[str]:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo to read the CPU's instruction sets from")
    return {flag for line in cpuinfo.read_text().splitlines() if line.startswith("flags")
            for flag in line.split(":", 1)[1].split()}


def test_the_bf16_probe_agrees_with_the_cpus_instruction_sets():
    flags = _cpu_flags()
    if not any(flag.startswith("avx512") for flag in flags):
        assert not cpu_has_native("bf16"), "expected no native bf16 on a CPU without AVX-512"
    if {"avx512_bf16", "amx_bf16"} & flags:
        assert cpu_has_native("bf16"), "expected native bf16 on a CPU with bf16 instructions"


def test_cpu_bf16_without_native_instructions_is_refused_with_the_fix_named(monkeypatch):
    cfg = parse_config(["--device", "cpu", "--amp", "bf16", "--pretrained", "none", "--cache", "unused"])
    if cpu_has_native("bf16"):
        assert make_runtime(cfg).amp_dtype == torch.bfloat16, "expected bf16 autocast where the CPU has it"
        monkeypatch.setattr("training.fitting.runtime.cpu_has_native", lambda amp: False)  # the other kind of CPU
    with pytest.raises(TrainingError, match="use --amp none"):
        make_runtime(cfg)
    auto = parse_config(["--device", "cpu", "--pretrained", "none", "--cache", "unused"])
    assert make_runtime(auto).amp_dtype is None, "expected --amp auto to train in fp32 on any CPU"


def test_several_image_folders_are_one_tuple_from_flags_and_from_older_yaml(tmp_path):
    cfg = parse_config(["--images", "a", "b/c", "--out", str(tmp_path / "run")])
    assert cfg.data.images == ("a", "b/c"), f"expected both folders in order, got {cfg.data.images}"
    write_yaml(cfg, tmp_path / "config.yaml")
    again = parse_config(["--config", str(tmp_path / "config.yaml")])
    assert again.data.images == ("a", "b/c"), f"expected the written YAML to read back, got {again.data.images}"
    (tmp_path / "old.yaml").write_text("data: {images: one/folder}\n")
    old = parse_config(["--config", str(tmp_path / "old.yaml")])
    assert old.data.images == ("one/folder",), f"expected a single folder as a 1-tuple, got {old.data.images}"
