"""PNG figures of an evaluation: ROC and precision-recall grids, reliability diagram.

Figures are drawn on :class:`matplotlib.figure.Figure` objects with the Agg canvas
directly, never through ``pyplot``: no global figure registry, no backend switching.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve

from training.fitting.probability_scaling import DEFAULT_ECE_BINS, reliability_bins
from training.metrics.auroc import roc_points
from xray_app.labels import display_name

Curves = dict[str, np.ndarray]  # model name -> (N, C) probabilities


def _grid(n_panels: int, title: str) -> tuple[Figure, list]:
    cols = min(5, n_panels)
    rows = math.ceil(n_panels / cols)
    figure = Figure(figsize=(3.2 * cols, 3.0 * rows + 0.6), layout="constrained")
    axes = figure.subplots(rows, cols, squeeze=False).ravel().tolist()
    for axis in axes[n_panels:]:
        axis.set_axis_off()
    figure.suptitle(title)
    return figure, axes[:n_panels]


def _save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure).print_png(str(path))
    return path


def _defined(y: np.ndarray) -> bool:
    return 0 < y.sum() < y.size


def plot_roc_grid(
    y_true: np.ndarray, models: Curves, labels: Sequence[str], path: Path, title: str
) -> Path:
    """One ROC panel per class; one curve per model (all ``(N, C)`` over ``labels``)."""
    figure, axes = _grid(len(labels), title)
    for c, (axis, name) in enumerate(zip(axes, labels, strict=True)):
        y = y_true[:, c]
        axis.plot([0, 1], [0, 1], color="0.7", linewidth=0.8, linestyle="--")
        if _defined(y):
            for model, probs in models.items():
                if np.isnan(probs[:, c]).all():
                    continue
                fpr, tpr = roc_points(y, probs[:, c])
                axis.plot(fpr, tpr, linewidth=1.2, label=model)
        else:
            axis.text(0.5, 0.5, "undefined:\none label value", ha="center", va="center")
        axis.set_title(f"{display_name(name)} (n+={int(y.sum())})", fontsize=9)
        axis.set_xlabel("1 - specificity", fontsize=8)
        axis.set_ylabel("sensitivity", fontsize=8)
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1)
    if len(models) > 1:
        axes[0].legend(fontsize=7, loc="lower right")
    return _save(figure, path)


def plot_pr_grid(
    y_true: np.ndarray, models: Curves, labels: Sequence[str], path: Path, title: str
) -> Path:
    """One precision-recall panel per class; the dotted line is the prevalence."""
    figure, axes = _grid(len(labels), title)
    for c, (axis, name) in enumerate(zip(axes, labels, strict=True)):
        y = y_true[:, c]
        if y.sum() > 0:
            axis.axhline(y.mean(), color="0.7", linewidth=0.8, linestyle=":")
            for model, probs in models.items():
                if np.isnan(probs[:, c]).all():
                    continue
                precision, recall, _ = precision_recall_curve(y, probs[:, c])
                axis.step(recall, precision, where="post", linewidth=1.2, label=model)
        else:
            axis.text(0.5, 0.5, "undefined:\nno positives", ha="center", va="center")
        axis.set_title(f"{display_name(name)} (n+={int(y.sum())})", fontsize=9)
        axis.set_xlabel("recall", fontsize=8)
        axis.set_ylabel("precision", fontsize=8)
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1.02)
    if len(models) > 1:
        axes[0].legend(fontsize=7, loc="upper right")
    return _save(figure, path)


def plot_reliability(
    y_true: np.ndarray,
    probs: Curves,
    labels: Sequence[str],
    path: Path,
    title: str,
    n_bins: int = DEFAULT_ECE_BINS,
) -> Path:
    """Reliability diagram: observed rate against mean probability per bin.

    The first panel pools every (image, class) decision; one panel per class follows.
    ``probs`` maps a curve name (e.g. "before calibration") to ``(N, C)`` probabilities.
    Marker area grows with the number of images in the bin.
    """
    panels = ["all classes pooled", *labels]
    figure, axes = _grid(len(panels), title)
    for index, (axis, name) in enumerate(zip(axes, panels, strict=True)):
        axis.plot([0, 1], [0, 1], color="0.7", linewidth=0.8, linestyle="--")
        for curve, p in probs.items():
            y = y_true if index == 0 else y_true[:, index - 1]
            values = p if index == 0 else p[:, index - 1]
            bins = reliability_bins(y, values, n_bins)
            filled = bins["count"] > 0
            sizes = 8 + 60 * bins["count"][filled] / max(1, bins["count"].max())
            (line,) = axis.plot(bins["mean_probability"][filled], bins["observed_rate"][filled],
                                linewidth=1.0, label=curve)
            axis.scatter(bins["mean_probability"][filled], bins["observed_rate"][filled],
                         s=sizes, color=line.get_color())
        axis.set_title(name if index == 0 else display_name(name), fontsize=9)
        axis.set_xlabel("mean predicted probability", fontsize=8)
        axis.set_ylabel("observed rate", fontsize=8)
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1)
    axes[0].legend(fontsize=7, loc="upper left")
    return _save(figure, path)
