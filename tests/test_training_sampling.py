"""training.data.sampling: balancing rule and the distributed, replayable epoch sampler."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from training.data.sampling import RepeatFactorSampler, effective_class_mix, repeat_factors
from xray_app.labels import LABEL_INDEX, NO_FINDING_INDEX, NUM_LABELS


def _labels() -> np.ndarray:
    labels = np.zeros((100, NUM_LABELS), dtype=np.float32)
    labels[:80, NO_FINDING_INDEX] = 1  # 80 healthy
    labels[80:99, LABEL_INDEX["Effusion"]] = 1  # 19 % effusion
    labels[99, LABEL_INDEX["Hernia"]] = 1  # 1 % hernia
    return labels


def test_repeat_factors_undersample_no_finding_and_cap_rare_classes():
    factors = repeat_factors(_labels(), no_finding_fraction=0.25, repeat_threshold=0.16, max_repeat=3.0)
    assert np.allclose(factors[:80], 0.25), "expected healthy-only images kept at the 0.25 fraction"
    assert np.allclose(factors[80:99], 1.0), "expected a 19 % class (above threshold) not repeated"
    assert factors[99] == pytest.approx(3.0), f"expected sqrt(0.16/0.01)=4 capped at 3, got {factors[99]}"
    mix = effective_class_mix(_labels(), factors)
    assert mix["No Finding"] == pytest.approx(20 / 42), f"expected 20 of 42 draws healthy, got {mix['No Finding']}"


def test_epoch_draw_follows_factors_and_replays_for_the_same_epoch():
    factors = np.array([0.5] * 200 + [2.0] * 100)
    sampler = RepeatFactorSampler(factors, seed=7)
    sampler.set_epoch(3)
    first = list(sampler)
    again = list(sampler)
    assert first == again, "expected the same (seed, epoch) to replay the same draws"
    counts = Counter(index for index, _ in first)
    healthy = sum(counts[i] for i in range(200))
    assert 70 <= healthy <= 130, f"expected about half of 200 healthy draws, got {healthy}"
    assert all(counts[i] == 2 for i in range(200, 300)), "expected factor 2.0 drawn exactly twice"
    sampler.set_epoch(4)
    assert list(sampler) != first, "expected another epoch to draw differently"


def test_ranks_get_disjoint_equal_shards_of_one_balanced_epoch():
    factors = np.linspace(0.2, 3.0, 101)
    whole = RepeatFactorSampler(factors, seed=1, rank=0, world_size=1)
    shards = [RepeatFactorSampler(factors, seed=1, rank=r, world_size=2) for r in (0, 1)]
    for s in (whole, *shards):
        s.set_epoch(5)
    draws = list(whole)
    a, b = (list(s) for s in shards)
    assert len(a) == len(b) == len(shards[0]), "expected equal shard lengths matching len()"
    merged = [d for pair in zip(a, b, strict=True) for d in pair]
    assert merged[: len(draws)] == draws, "expected the shards to interleave into the single-process epoch"


def test_raked_factors_meet_the_population_label_mix_and_view_shares():
    """--sampling raked: weighted label shares equal the population's, and within normal
    and abnormal films the AP share equals the population's, so view position no longer
    tells them apart in what the network sees."""
    from training.data.sampling import raked_factors
    from xray_app.labels import LABELS, NO_FINDING_INDEX

    rng = np.random.default_rng(0)
    n = 600
    labels = (rng.random((n, len(LABELS))) < 0.2).astype(int)
    labels[rng.random(n) < 0.3] = 0
    labels[:, NO_FINDING_INDEX] = ~labels[:, :NO_FINDING_INDEX].any(axis=1)
    normal = labels[:, NO_FINDING_INDEX] > 0
    is_ap = np.where(normal, rng.random(n) < 0.7, rng.random(n) < 0.4)  # the sample's confound
    prevalence = np.full(len(LABELS), 0.05)
    prevalence[NO_FINDING_INDEX] = 0.55
    factors = raked_factors(labels, is_ap, prevalence, 0.35, 0.46)
    shares = (labels * factors[:, None]).sum(axis=0) / factors.sum()
    assert np.allclose(shares, prevalence, atol=1e-4), f"label shares {shares} should match {prevalence}"
    ap_normal = factors[normal & is_ap].sum() / factors[normal].sum()
    ap_abnormal = factors[~normal & is_ap].sum() / factors[~normal].sum()
    assert (round(ap_normal, 3), round(ap_abnormal, 3)) == (0.35, 0.46), "AP shares within groups"
    assert np.isclose(factors.mean(), 1.0), "an epoch keeps about the split's size"


def test_sampling_rule_is_validated():
    from training.fitting.config import ConfigError, DataConfig, TrainConfig

    with pytest.raises((ConfigError, ValueError), match="sampling"):
        TrainConfig(data=DataConfig(cache="cache"), sampling="uniform")


def test_folder_balanced_factors_draw_each_folder_equally_and_keep_the_epoch_size():
    """--sampling folders: each source folder gets the same share of an epoch's draws;
    within a folder the repeat factors keep their ratios; the epoch size is unchanged."""
    from training.data.sampling import folder_balanced

    factors = repeat_factors(_labels(), no_finding_fraction=0.25, repeat_threshold=0.16, max_repeat=3.0)
    folders = ["images"] * 30 + ["images_extra"] * 70
    balanced = folder_balanced(factors, folders)
    names = np.array(folders)
    shares = {name: balanced[names == name].sum() / balanced.sum() for name in ("images", "images_extra")}
    assert shares == pytest.approx({"images": 0.5, "images_extra": 0.5}), f"folder shares {shares}"
    assert balanced.sum() == pytest.approx(factors.sum()), "the epoch keeps its size"
    for name in ("images", "images_extra"):
        ratio = balanced[names == name] / factors[names == name]
        assert np.allclose(ratio, ratio[0]), f"factors within {name} scaled by one number"


def test_folder_balanced_refuses_an_image_in_no_named_folder():
    from training.data.sampling import folder_balanced

    with pytest.raises(ValueError, match="1 training image"):
        folder_balanced(np.ones(3), ["images", None, "images_extra"])


def test_folder_sampling_needs_the_folders():
    from training.fitting.config import ConfigError, DataConfig, TrainConfig

    with pytest.raises(ConfigError, match="--source-folders"):
        TrainConfig(data=DataConfig(cache="cache"), sampling="folders")
    cfg = TrainConfig(data=DataConfig(cache="cache", source_folders=["a/images", "b/images_extra"]),
                      sampling="folders")
    assert cfg.data.source_folders == ("a/images", "b/images_extra"), "folders kept as a tuple"


def test_a_run_on_the_two_shared_folders_draws_each_half_of_the_time():
    """On the shared radiographs (a third of the training films from images/), a run with
    --sampling folders draws images/ and images_extra/ equally often."""
    from pathlib import Path

    from training.data.images import source_of
    from training.data.metadata import IMAGE
    from training.data.run_data import load_data
    from training.fitting.config import parse_config

    nih = Path(__file__).resolve().parents[2] / "shared" / "data" / "nih"
    folders = [str(nih / "images"), str(nih / "images_extra")]
    cfg = parse_config(["--metadata", str(nih / "Data_Entry_2017_v2020.csv.gz"), "--images", *folders,
                        "--sampling", "folders", "--source-folders", *folders, "--input-size", "64",
                        "--num-workers", "0"])
    data = load_data(cfg)
    names = np.array(source_of(data.splits.train[IMAGE].tolist(), [Path(f) for f in folders]), dtype=object)
    films = {name: float(np.mean(names == name)) for name in ("images", "images_extra")}
    draws = {name: data.factors[names == name].sum() / data.factors.sum() for name in ("images", "images_extra")}
    assert films["images"] < 0.35, f"expected images/ a minority of the training films, got {films}"
    assert draws == pytest.approx({"images": 0.5, "images_extra": 0.5}), f"draw shares {draws}"
