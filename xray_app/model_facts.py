"""Every sentence the app says about the bundled model, read from its ``config.json``.

The banner, the first screen, the note under the heatmaps and the model's one-line data
summary (``Predictor.model_info["data"]``) are written here and nowhere else, from what
``training.bundle`` recorded in ``config.json`` (``provenance``): a figure a person reads
is never retyped.  Functions take the config's ``provenance`` dict and return plain text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def training_data_summary(provenance: dict[str, Any]) -> str:
    """One line for people: which images the weights were trained and evaluated on."""
    data = provenance.get("data")
    if not data:
        return "not recorded in config.json"
    if not isinstance(data, dict):
        return str(data)
    if data.get("description"):  # what the data is, written by training.fitting.provenance
        summary = str(data["description"])
    else:
        counts = ", ".join(f"{n} {split}" for split, n in (data.get("images") or {}).items())
        source = data.get("source") or data.get("metadata") or "an unrecorded source"
        summary = f"{counts} images from {source}" if counts else str(source)
    teacher = (provenance.get("distillation") or {}).get("teacher")
    if teacher:
        summary += f"; training targets partly a teacher model's probabilities ({Path(teacher).name})"
    return summary


def measured_accuracy(provenance: dict[str, Any]) -> str | None:
    """One line for people: how well the weights did on patients they never saw, from
    the headline ``training.bundle`` recorded (the test split, else out of fold), e.g.
    ``"mean AUROC 0.71 (95% CI 0.68-0.74) over the 14 findings on 352 test radiographs of
    patients it never saw"``; None when nothing was measured."""
    evaluation = provenance.get("evaluation") or {}
    for key, where in (("test", "test radiographs of patients it never saw"),
                       ("out_of_fold", "radiographs scored out of fold (cross-validation)")):
        measured = evaluation.get(key)
        if measured and measured.get("value") is not None:
            interval = (f" (95% CI {measured['ci_low']:.2f}-{measured['ci_high']:.2f})"
                        if measured.get("ci_low") is not None else "")
            return (f"mean AUROC {measured['value']:.2f}{interval} over the 14 findings on "
                    f"{measured['images']:,} {where}")
    return None


def measured_localisation(provenance: dict[str, Any]) -> str:
    """One line for people under the heatmaps: what they were measured to be worth
    against radiologist boxes (``training.bundle`` records ``provenance.localization``),
    or that they were never checked."""
    measured = provenance.get("localization") or {}
    if not measured.get("boxes"):
        return ("Heatmaps show the regions that raised each score; no check against "
                "radiologist-marked regions is recorded with these weights, so do not read them "
                "as the site of a finding.")
    hit, random, centre = measured["heatmap_hits"], measured["random_hits"], measured["centre_hits"]
    verdict = ("no better than maps that know nothing of the image, so they do not show where "
               "a finding is" if hit <= max(random, centre)
               else "better than those, but not a reliable guide to where a finding is")
    held_out = " of patients the model never saw" if measured.get("out_of_fold") else ""
    return (f"Heatmaps show the regions that raised each score. Measured on {measured['boxes']} "
            f"NIH radiologist boxes{held_out}, a heatmap overlapped the box (at least "
            f"{measured['min_overlap']:.0%} of its highlighted region inside it) for {hit:.0%} of "
            f"them; random maps did for {random:.0%}, a fixed blob at the image centre for "
            f"{centre:.0%}: {verdict}.")
