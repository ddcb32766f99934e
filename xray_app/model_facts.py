"""Every sentence the app says about the loaded model, read from its ``config.json``.

The banner and first screen (:func:`first_screen`: test result, training count,
reference model, what a flag means, the population of the probabilities), the note under
the heatmaps (:func:`measured_localisation`) and the one-line data summary
(``Predictor.model_info["data"]``) are written here and nowhere else, from what
``training.bundle`` recorded in ``config.json``: a figure a person reads is never
retyped.  Functions take parts of the config (``provenance``, ``operating_points``,
``population``) as plain dicts and return plain text (no HTML, no Markdown).

Keys read: ``provenance.evaluation.test`` (else ``.out_of_fold``) ``{value, ci_low,
ci_high, images, patients}``; ``provenance.evaluation.reference`` ``{name, value,
ours_on_same, images}``; ``provenance.split.images.train``; ``operating_points``
``{method, target, description, chosen_on: {description}}``, else ``provenance.validation_fit`` ``{threshold_method,
split, n_images}``; ``population.name``; ``provenance.localization`` ``{boxes,
heatmap_hits, random_hits, centre_hits, min_overlap, out_of_fold}``; ``provenance.data``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from xray_app.flags import ABOVE

UNTRAINED_NOTICE = (
    "UNTRAINED WEIGHTS: this model is a random initialisation. Its outputs and heatmaps "
    "are meaningless; use it only to test the software."
)
THRESHOLD_METHODS = {  # training.calibrate's threshold_method -> how people say it
    "f1": "for the best F1 (the balance of missed findings and false flags)",
    "youden": "for the best sum of sensitivity and specificity (Youden's J)",
}


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


def first_screen(provenance: Mapping[str, Any], operating_points: Mapping[str, Any] | None,
                 population: Mapping[str, Any] | None) -> list[str]:
    """The sentences shown before any upload, in reading order: what the model scored on
    patients it never saw, how many radiographs it was trained on, the reference model on
    the same films (when recorded), what a flag means, and which population the
    probabilities are for.  Sentences with nothing recorded behind them are left out."""
    sentences = [test_result(provenance), training_count(provenance), reference_result(provenance),
                 flag_meaning(operating_points, provenance), population_sentence(population)]
    return [s for s in sentences if s]


def test_result(provenance: Mapping[str, Any]) -> str | None:
    """``"Tested on 352 radiographs of 268 patients it never saw: mean AUROC 0.72 (95% CI
    0.69-0.75) over the 14 findings (0.5 is chance, 1 is perfect)."``: the test split
    ``training.bundle`` recorded, else the out-of-fold figure; None when nothing was."""
    evaluation = provenance.get("evaluation") or {}
    for key, where in (("test", "Tested on {images} radiographs{patients} it never saw"),
                       ("out_of_fold", "Scored out of fold (cross-validation) on {images} radiographs{patients}")):
        measured = evaluation.get(key)
        if not measured or measured.get("value") is None:
            continue
        patients = f" of {measured['patients']:,} patients" if measured.get("patients") else ""
        interval = (f" (95% CI {measured['ci_low']:.2f}\u2013{measured['ci_high']:.2f})"
                    if measured.get("ci_low") is not None else "")
        return (where.format(images=f"{measured['images']:,}", patients=patients)
                + f": mean AUROC {measured['value']:.2f}{interval} over the 14 findings "
                "(0.5 is chance, 1 is perfect).")
    return None


def training_count(provenance: Mapping[str, Any]) -> str | None:
    """``"Trained on 1,401 radiographs."`` from ``provenance.split.images.train`` (never the
    data set's total, which includes the test films); None when not recorded."""
    train = ((provenance.get("split") or {}).get("images") or {}).get("train")
    return f"Trained on {int(train):,} radiographs." if train else None


def reference_result(provenance: Mapping[str, Any]) -> str | None:
    """The reference model on the same test films, from ``provenance.evaluation.reference``
    ``{name, value, ours_on_same, images}``; None when the config does not carry it."""
    reference = (provenance.get("evaluation") or {}).get("reference")
    if not reference or reference.get("value") is None:
        return None
    return (f"On {reference['images']:,} of those films, {reference['name']} scored "
            f"{reference['value']:.2f} and this model {reference['ours_on_same']:.2f}.")


def flag_meaning(operating_points: Mapping[str, Any] | None, provenance: Mapping[str, Any]) -> str:
    """What a flag means: the probability is at or above the finding's operating point,
    and how those points were chosen (``operating_points``, else the threshold method of
    ``provenance.validation_fit``)."""
    start = f"A flag means the finding's probability is {ABOVE}"
    if operating_points and operating_points.get("method"):
        method, target = str(operating_points["method"]), operating_points.get("target")
        chosen_on = operating_points.get("chosen_on")
        if isinstance(chosen_on, Mapping):
            chosen_on = chosen_on.get("description")
        if operating_points.get("description"):  # training.calibrate's own words for its rule
            return (f"{start}. Operating points: {operating_points['description']}"
                    + (f"; chosen on {chosen_on}" if chosen_on else "") + ".")
        if method == "specificity" and target is not None:
            how = f"set for {float(target):.0%} specificity"
        else:
            how = f"set by {method}" + (f" (target {target})" if target is not None else "")
        return f"{start}, {how}" + (f"; chosen on {chosen_on}" if chosen_on else "") + "."
    fitted = provenance.get("validation_fit") or {}
    method = fitted.get("threshold_method")
    if not method:
        return f"{start}; how the operating points were chosen is not recorded."
    how = THRESHOLD_METHODS.get(str(method), f"by {method}")
    where = ""
    if fitted.get("n_images"):
        kind = "out-of-fold predictions" if fitted.get("split") == "out-of-fold" else "predictions"
        where = f" on {kind} of {int(fitted['n_images']):,} training radiographs"
    return f"{start}, chosen {how}{where}."


def population_sentence(population: Mapping[str, Any] | None) -> str:
    """``"Probabilities are for <name>."``: the population ``config.json`` moves them to,
    else the training sample they were calibrated on."""
    name = (population or {}).get("name")
    return f"Probabilities are for {name}." if name else "Probabilities are for the training sample."


def measured_localisation(provenance: Mapping[str, Any]) -> str:
    """The note beside the heatmaps: what they were measured to be worth against
    radiologist boxes, compared with random maps and a fixed blob at the image centre
    (``provenance.localization``), or that they were never checked."""
    measured = provenance.get("localization") or {}
    if not measured.get("boxes"):
        return ("Heatmaps show the regions that raised each score; no check against "
                "radiologist-marked regions is recorded with these weights, so do not read them "
                "as the site of a finding.")
    hit, random, centre = measured["heatmap_hits"], measured["random_hits"], measured["centre_hits"]
    if hit <= centre:
        verdict = ("no better than the fixed centre blob, which knows nothing of the image, so "
                   "they do not show where a finding is")
    elif hit <= random:
        verdict = "no better than random maps, so they do not show where a finding is"
    else:
        verdict = "better than both, but not a reliable guide to where a finding is"
    held_out = " of patients the model never saw" if measured.get("out_of_fold") else ""
    return (f"Heatmaps show the regions that raised each score. On {measured['boxes']} NIH "
            f"radiologist boxes{held_out}, the heatmaps hit {hit:.0%} of them (a hit: at least "
            f"{measured['min_overlap']:.0%} of the highlighted region inside the box); a fixed blob "
            f"at the image centre hit {centre:.0%} and random maps {random:.0%}. The heatmaps are "
            f"{verdict}.")
