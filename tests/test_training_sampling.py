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
