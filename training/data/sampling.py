"""Balancing of the training split: repeat factors and a (distributed) epoch sampler.

Rule (:func:`repeat_factors`), from the training split's own frequencies:

* an image whose only label is "No Finding" gets factor ``no_finding_fraction``
  (e.g. 0.5 keeps about half of them each epoch, a different half every epoch);
* every pathology ``c`` with image frequency ``f_c`` gets
  ``r_c = clip(sqrt(repeat_threshold / f_c), 1, max_repeat)`` (LVIS repeat-factor
  sampling), and an image gets the largest ``r_c`` of its labels.

Each epoch an image is drawn ``floor(r)`` times plus once more with probability
``r - floor(r)``, so the epoch size is about ``sum(r)``.  Validation and test are never
resampled.

``--sampling raked`` replaces the rule by :func:`raked_factors`: factors that move the
training split toward the population's label mix and view position (mean 1).
``--sampling folders`` keeps the rule and rescales it within each source folder
(:func:`folder_balanced`): folders picked differently are drawn equally often.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from training.metrics.raking import Margin, rake_labels
from xray_app.labels import LABELS, NO_FINDING_INDEX


def repeat_factors(
    labels: np.ndarray,
    *,
    no_finding_fraction: float,
    repeat_threshold: float,
    max_repeat: float,
) -> np.ndarray:
    """``(N,)`` float64 expected draws per epoch for ``(N, 15)`` training labels."""
    if not 0.0 < no_finding_fraction <= 1.0:
        raise ValueError(f"no_finding_fraction must be in (0, 1], got {no_finding_fraction}")
    if max_repeat < 1.0:
        raise ValueError(f"max_repeat must be >= 1, got {max_repeat}")
    frequency = labels.mean(axis=0) if len(labels) else np.zeros(labels.shape[1])
    with np.errstate(divide="ignore"):
        per_class = np.sqrt(repeat_threshold / np.maximum(frequency, 1e-12))
    per_class = np.clip(per_class, 1.0, max_repeat)
    per_class[NO_FINDING_INDEX] = no_finding_fraction
    factors = np.where(labels > 0, per_class[None, :], 0.0).max(axis=1)
    return np.where(factors > 0, factors, 1.0)  # images with no label at all: once


def folder_balanced(factors: np.ndarray, folders: Sequence[str | None]) -> np.ndarray:
    """``factors`` rescaled within each source folder so that every folder gets the same
    share of an epoch's draws; the epoch size (their sum) and the ratios within a folder
    are unchanged.  ``folders``: each image's folder name; None (in no named folder) is
    an error, since such an image would have no share to belong to."""
    factors = np.asarray(factors, dtype=np.float64)
    names = np.asarray(folders, dtype=object)
    if len(names) != len(factors):
        raise ValueError(f"{len(factors)} factors but {len(names)} folder names")
    unplaced = int(sum(name is None for name in names))
    if unplaced:
        raise ValueError(f"{unplaced} training image(s) are in none of the source folders; "
                         "name every folder the training images come from")
    balanced = factors.copy()
    kinds = sorted(set(names.tolist()))
    for kind in kinds:
        rows = names == kind
        balanced[rows] *= factors.sum() / (len(kinds) * factors[rows].sum())
    return balanced


def effective_class_mix(labels: np.ndarray, factors: np.ndarray) -> dict[str, float]:
    """Expected fraction of drawn images carrying each label (logit order)."""
    total = float(factors.sum())
    if total == 0:
        return dict.fromkeys(LABELS, 0.0)
    mix = (labels * factors[:, None]).sum(axis=0) / total
    return {name: float(value) for name, value in zip(LABELS, mix, strict=True)}


def describe_mix(labels: np.ndarray, factors: np.ndarray) -> str:
    natural = labels.mean(axis=0) if len(labels) else np.zeros(len(LABELS))
    balanced = effective_class_mix(labels, factors)
    parts = [
        f"{name} {100 * natural[i]:.1f}%->{100 * balanced[name]:.1f}%"
        for i, name in enumerate(LABELS)
    ]
    return (
        f"balanced epoch ~{factors.sum():.0f} draws from {len(labels)} images; "
        "class mix natural->effective: " + ", ".join(parts)
    )


class RepeatFactorSampler(Sampler[tuple[int, int]]):
    """Yields ``(index, sample_seed)`` pairs for one epoch of repeat-factor sampling.

    The epoch's draw depends only on ``(seed, epoch)``: every rank computes the same
    shuffled list, pads it to a multiple of ``world_size`` and takes every
    ``world_size``-th entry from ``rank`` on, so ranks see disjoint shards of one
    balanced epoch.  ``sample_seed`` seeds that draw's augmentation, so a repeated image
    is augmented differently each time and a resumed epoch replays exactly.
    """

    def __init__(
        self, factors: np.ndarray, *, seed: int, rank: int = 0, world_size: int = 1
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        self.factors = np.asarray(factors, dtype=np.float64)
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _epoch_draws(self) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        factors = torch.from_numpy(self.factors)
        whole = torch.floor(factors)
        extra = torch.rand(len(factors), generator=generator, dtype=torch.float64)
        counts = (whole + (extra < factors - whole).double()).long()
        indices = torch.repeat_interleave(torch.arange(len(factors)), counts)
        indices = indices[torch.randperm(len(indices), generator=generator)]
        padded = math.ceil(len(indices) / self.world_size) * self.world_size
        if padded > len(indices):
            indices = torch.cat([indices, indices[: padded - len(indices)]])
        seeds = torch.randint(0, 2**31 - 1, (len(indices),), generator=generator)
        return indices, seeds

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices, seeds = self._epoch_draws()
        mine = slice(self.rank, None, self.world_size)
        yield from zip(indices[mine].tolist(), seeds[mine].tolist(), strict=True)

    def __len__(self) -> int:
        return len(self._epoch_draws()[0]) // self.world_size

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch, "world_size": self.world_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])


def raked_factors(labels: np.ndarray, is_ap: np.ndarray, prevalence: np.ndarray,
                  ap_share_normal: float, ap_share_abnormal: float) -> np.ndarray:
    """``(N,)`` expected draws per epoch (mean 1) that move the training split toward a
    population: raked (:mod:`training.metrics.raking`) to its 15 label prevalences
    ``(15,)`` and to its share of AP films among No-Finding films and among films with a
    pathology, so that view position stops telling normal from abnormal films.

    ``labels`` ``(N, 15)`` 0/1 and ``is_ap`` ``(N,)`` bool of the training images.
    """
    labels = np.asarray(labels) > 0
    normal = labels[:, NO_FINDING_INDEX]
    p_normal = float(prevalence[NO_FINDING_INDEX])
    view_target = np.array([p_normal * (1 - ap_share_normal), p_normal * ap_share_normal,
                            (1 - p_normal) * (1 - ap_share_abnormal), (1 - p_normal) * ap_share_abnormal])
    codes = 2 * (~normal).astype(np.int64) + np.asarray(is_ap, dtype=np.int64)
    # a view margin the split cannot meet is left out rather than forced
    view = ([Margin("view position within normal / abnormal", codes, view_target)]
            if (np.bincount(codes, minlength=4) > 0).all() else [])
    return rake_labels(labels, prevalence, LABELS, extra=view).weights
