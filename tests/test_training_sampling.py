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
