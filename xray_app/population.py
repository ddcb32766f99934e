"""Probabilities for a named population: prior-shift correction of calibrated odds.

The model is calibrated (Platt scaling) on out-of-fold predictions of its own training
films, an *enriched* sample: Pneumonia is about a quarter of it against 1.3% of all NIH
films.  A probability calibrated there answers "how often is this finding present among
films like these *in that sample*", which overstates every rare finding.

If the films of a class look the same in the sample and in the population and only the
class's share differs (label shift), Bayes' rule moves a probability from one prevalence
to the other by adding the difference of the prior log-odds (Saerens et al., Neural
Computation 2002; Elkan, IJCAI 2001):

    logit p_population = logit p_sample + logit(pi_population) - logit(pi_sample)

applied per class, since each output is its own sigmoid.  The offset is the same for every
image, so it changes what the number *means* and never the order of films: AUROC and the
specificity of an operating point are unchanged, and a threshold moves with the same
offset (:func:`move_thresholds`).

What it does not do: it cannot know a hospital's own mix of patients.  A probability for
"all NIH ChestX-ray14 films" is the chance among films like NIH's, taken as NIH took them;
at a hospital with another case mix the same film deserves another number, and a config
can carry that hospital's prevalence table instead (``population`` in ``config.json``, or
``--population FILE`` on the command line).

``config.json`` records::

    "population": {
      "name": "all 112,120 NIH ChestX-ray14 films",
      "source": "...",                               # where the prevalences come from
      "prevalence": {"Atelectasis": 0.103, ...},     # the 15 labels
      "sample": {"name": "...", "prevalence": {...}} # what the calibration was fitted on
    }
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xray_app.labels import LABELS

__all__ = [
    "Population",
    "PopulationError",
    "PriorShift",
    "logit",
    "move_thresholds",
    "read_population",
    "sigmoid",
]

# A prevalence of exactly 0 or 1 has infinite log-odds; a population in which a finding
# never (or always) occurs is refused rather than silently clipped.
_OPEN_UNIT = "a prevalence must lie strictly between 0 and 1"


class PopulationError(ValueError):
    """A prevalence table that cannot describe a population of these labels."""


def logit(p: np.ndarray | float) -> np.ndarray:
    """Log-odds ``log(p / (1 - p))`` of probabilities in (0, 1), as float64."""
    p = np.asarray(p, dtype=np.float64)
    return np.log(p) - np.log1p(-p)


def sigmoid(z: np.ndarray | float) -> np.ndarray:
    """Inverse of :func:`logit`, as float64."""
    z = np.asarray(z, dtype=np.float64)
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # exact for large |z|, no overflow warning


@dataclass(frozen=True)
class Population:
    """A named population: the prevalence of each label, in ``labels`` order."""

    name: str
    prevalence: tuple[float, ...]
    labels: tuple[str, ...] = LABELS
    source: str = ""

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise PopulationError("a population needs a name (say which films it describes)")
        if len(self.prevalence) != len(self.labels):
            raise PopulationError(
                f"population {self.name!r}: {len(self.prevalence)} prevalences for "
                f"{len(self.labels)} labels"
            )
        bad = {
            label: p for label, p in zip(self.labels, self.prevalence, strict=True)
            if not (isinstance(p, (int, float)) and math.isfinite(p) and 0.0 < p < 1.0)
        }
        if bad:
            raise PopulationError(f"population {self.name!r}: {_OPEN_UNIT}; got {bad}")

    def as_array(self) -> np.ndarray:
        """``(C,)`` float64 prevalences."""
        return np.asarray(self.prevalence, dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name}
        if self.source:
            data["source"] = self.source
        data["prevalence"] = {
            label: float(p) for label, p in zip(self.labels, self.prevalence, strict=True)
        }
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], labels: Sequence[str] = LABELS) -> Population:
        """Read ``{"name", "prevalence": {label: p}, "source"?}``; every label must be there
        and no other."""
        if not isinstance(data, Mapping):
            raise PopulationError(f"a population must be a JSON object, not {type(data).__name__}")
        table = data.get("prevalence")
        if not isinstance(table, Mapping):
            raise PopulationError("a population needs 'prevalence': {label: fraction, ...}")
        missing = [label for label in labels if label not in table]
        unknown = sorted(set(table) - set(labels))
        if missing or unknown:
            raise PopulationError(
                f"population {data.get('name')!r}: prevalence table lacks {missing} "
                f"and has unknown labels {unknown}"
            )
        try:
            values = tuple(float(table[label]) for label in labels)
        except (TypeError, ValueError):
            raise PopulationError(
                f"population {data.get('name')!r}: prevalences must be numbers"
            ) from None
        return cls(
            name=str(data.get("name") or ""),
            prevalence=values,
            labels=tuple(labels),
            source=str(data.get("source") or ""),
        )


@dataclass(frozen=True)
class PriorShift:
    """Moves probabilities calibrated on ``sample`` to ``population``."""

    population: Population
    sample: Population

    def __post_init__(self) -> None:
        if self.population.labels != self.sample.labels:
            raise PopulationError("population and sample must describe the same labels")

    def offsets(self) -> np.ndarray:
        """``(C,)`` float64 log-odds to add: ``logit(pi_population) - logit(pi_sample)``."""
        return logit(self.population.as_array()) - logit(self.sample.as_array())

    def to_dict(self) -> dict[str, Any]:
        return {**self.population.to_dict(), "sample": self.sample.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], labels: Sequence[str] = LABELS) -> PriorShift:
        """Read ``config.json``'s ``population`` record (see the module docstring)."""
        if not isinstance(data, Mapping) or "sample" not in data:
            raise PopulationError(
                "config.json 'population' needs a 'sample' record: the prevalences the "
                "calibration was fitted on"
            )
        return cls(Population.from_dict(data, labels), Population.from_dict(data["sample"], labels))

    def to(self, population: Population) -> PriorShift:
        """The same calibration sample, moved to another population."""
        return PriorShift(population, self.sample)


def move_thresholds(thresholds: Sequence[float] | np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """``(C,)`` thresholds moved by log-odds ``offsets``: the same operating point (the same
    films above it) on the moved probability scale."""
    return sigmoid(logit(np.asarray(thresholds, dtype=np.float64)) + np.asarray(offsets))


def read_population(path: str | Path, labels: Sequence[str] = LABELS) -> Population:
    """A prevalence table from a JSON file ``{"name", "prevalence": {label: p}, "source"?}``
    (the shape of ``config.json``'s ``population`` record, whose ``sample`` is ignored)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise PopulationError(f"{path}: no such prevalence table") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PopulationError(f"{path} is not valid JSON: {error}") from None
    try:
        return Population.from_dict(data, labels)
    except PopulationError as error:
        raise PopulationError(f"{path}: {error}") from None
