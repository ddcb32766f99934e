"""Generate the model card ``weights/README.md`` from a checkpoint and its evaluation reports.

    python -m training.model_card --checkpoint weights --report weights/eval/report_val.json \\
        --report weights/eval/report_test.json [--localization loc.json] --out weights/README.md

Every figure in the card comes from ``config.json`` or a report written by
:mod:`training.evaluate`; nothing is typed in by hand.  The front matter is Hugging Face
model-card metadata.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training.fitting.provenance import public_command
from training.reports.flag_sections import (
    flag_figures_section,
    operating_points_section,
    population_section,
)
from training.reports.markdown import (
    OUT_OF_FOLD,
    evaluation_key,
    fmt,
    fmt_ci,
    headline_sentence,
    metrics_table,
    source_lines,
)
from xray_app.labels import LABELS, display_name
from xray_app.model import CONFIG_FILE, CheckpointError, read_config

NIH_IMAGES = 112_120
NIH_PATIENTS = 30_805
FRONT_MATTER = """---
license: mit
library_name: pytorch
pipeline_tag: image-classification
tags:
- medical-imaging
- chest-x-ray
- radiology
- multi-label-classification
- resnet50
- research-only
datasets:
- NIH-ChestX-ray14
metrics:
- roc_auc
---
"""


class ModelCardError(ValueError):
    """A report or localisation file is missing or not what the card needs."""


def read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ModelCardError(f"{path}: {what} not found") from None
    except json.JSONDecodeError as error:
        raise ModelCardError(f"{path}: {what} is not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise ModelCardError(f"{path}: {what} should be a JSON object")
    return data


def _check_report(report: dict[str, Any], path: Path) -> None:
    missing = [key for key in ("split", "metrics", "calibration", "thresholds", "data")
               if key not in report]
    if missing:
        raise ModelCardError(f"{path}: not a training.evaluate report (missing {missing})")


# --------------------------------------------------------------------------- sections
def _title(config: dict[str, Any]) -> list[str]:
    lines = [f"# {config['name']}: chest X-ray findings classifier (ResNet-50, 15 outputs)", "",
             "> **Research demonstration only. This is NOT a medical device.** It has not been "
             "cleared or approved by any regulator, has not been validated clinically, and must "
             "not be used to diagnose, triage or treat anyone.", ""]
    if not config.get("trained"):
        lines += ["> **WARNING: this checkpoint is marked UNTRAINED (random weights).** Every "
                  "number below describes a model whose outputs are meaningless.", ""]
    return lines


def _data_section(config: dict[str, Any], reports: list[dict[str, Any]]) -> list[str]:
    provenance = config.get("provenance", {})
    data = provenance.get("data", {})
    per_split = data.get("images", {}) if isinstance(data, dict) else {}
    lines = ["## Data and split", ""]
    if isinstance(data, dict) and data:
        lines.append(f"- Metadata: `{data.get('metadata')}`; images: {data.get('source')}; "
                     f"{data.get('availability')}.")
    elif data:
        lines.append(f"- Data: {data}")
    split = provenance.get("split", {})
    if split:
        files = f" (split files in `{split['files']}`)" if split.get("files") else ""
        lines.append(f"- Split: {split.get('method')}{files}; "
                     "always by patient: no patient is in two splits.")
    if per_split:
        lines.append("- Images per split: " + ", ".join(f"{k} {v}" for k, v in per_split.items())
                     + ".")
    lines += _distillation_lines(provenance.get("distillation"))
    train_images = per_split.get("train")
    scale = (f"{train_images:,} training images" if train_images
             else "an unknown number of training images (not recorded in config.json)")
    lines += ["", f"**How little data.** NIH ChestX-ray14 has {NIH_IMAGES:,} frontal radiographs "
              f"of {NIH_PATIENTS:,} patients; this model saw {scale}. Evaluation:"]
    for report in reports:
        lines.append(f"- {_report_name(report, config)}: {report['metrics']['n_images']:,} images of "
                     f"{report['metrics']['n_patients']:,} patients.")
    lines += _held_out_lines(config, reports)
    lines += ["", "Rare classes have only a handful of positive images in these sets, so their "
              "confidence intervals are wide; read the intervals, not just the point estimates.",
              "Labels are NIH's, mined from radiology reports by text processing: they are "
              "noisy, and the metrics are measured against them, not against radiologists."]
    return lines


def _held_out_lines(config: dict[str, Any], reports: list[dict[str, Any]]) -> list[str]:
    """What stands for patients the model never saw when no test split was scored: the
    out-of-fold figures of its recipe, or nothing at all (said plainly)."""
    if any(report["split"] == "test" for report in reports):
        return []
    if any(_out_of_fold(report, config) for report in reports):
        return ["", "**No test split of its own.** This model trained on every image of its "
                "split files; none was kept back to test it. The estimate of how it does on "
                "patients it never saw is the out-of-fold evaluation below: the same recipe "
                "trained once per fold on the other folds' patients, every image scored by the "
                "fold model that never saw its patient. Those fold models trained on fewer "
                "images than this one."]
    return ["", "**No test split scored.** The figures below are on the split that chose the "
            "thresholds and the calibration (and usually the epoch): read them as optimistic."]


def _fitted(config: dict[str, Any]) -> dict[str, Any]:
    """The record of the threshold and calibration fit (``training.calibrate``), or {}."""
    return config.get("provenance", {}).get("validation_fit") or {}


def _out_of_fold(report: dict[str, Any], config: dict[str, Any]) -> bool:
    """Whether ``report`` scored the out-of-fold predictions this model's thresholds were
    fitted on (the rule is :func:`training.reports.markdown.evaluation_key`)."""
    return evaluation_key(report["split"], _fitted(config)) == OUT_OF_FOLD


def _report_name(report: dict[str, Any], config: dict[str, Any]) -> str:
    if _out_of_fold(report, config):
        return "out-of-fold predictions on train + val (the fold models', not this model's)"
    return f"{report['split']} split"


def _distillation_lines(distillation: dict[str, Any] | None) -> list[str]:
    """What a teacher model contributed (``training.train --teacher``), if anything."""
    if not distillation:
        return []
    return [f"- Distillation: training targets were `(1 - w) * NIH label + w * teacher probability` "
            f"with w = {distillation['weight']:g}, the teacher's probabilities read from "
            f"`{distillation['teacher']}`, for {distillation['softened_images']} of "
            f"{distillation['train_images']} training images on {len(distillation['labels'])} "
            "outputs. The teacher's rows for validation and test images were not used: "
            "calibration, thresholds and every metric below are against NIH labels alone."]


def _scoring_line(config: dict[str, Any]) -> str:
    if config.get("mirror_average"):
        return ("- Scoring: each radiograph's logits are the mean of its own and its left-right "
                "mirror image's (one forward pass of both); thresholds, calibration and the metrics "
                "below were computed on logits made that way, and each fast Grad-CAM "
                "heatmap explains that mean (the mirror image's map flipped back).")
    return "- Scoring: each radiograph as given (no test-time augmentation)."


def _training_section(config: dict[str, Any]) -> list[str]:
    provenance = config.get("provenance", {})
    lines = ["## Model and training configuration", "",
             f"- Architecture: {config['architecture']} with a single linear head of "
             f"{len(config['labels'])} sigmoid outputs; input {config['input_size']} px, "
             f"normalised with mean {config['mean']} and std {config['std']}.",
             f"- Outputs, in logit order: {', '.join(config['labels'])}.",
             _scoring_line(config),
             f"- Code commit: `{provenance.get('commit')}`; exported {provenance.get('date')}."]
    train_config = provenance.get("train_config")
    if train_config:
        lines += ["", "Training configuration (`config.yaml` of the run):", "", "```json",
                  json.dumps(train_config, indent=2, sort_keys=True), "```"]
    else:
        lines.append("- Training configuration: not recorded in config.json.")
    return lines


def _evaluation_section(report: dict[str, Any], config: dict[str, Any]) -> list[str]:
    split = report["split"]
    metrics = report["metrics"]
    title = ("## Out-of-fold evaluation on train + val (cross-validation fold models)"
             if _out_of_fold(report, config) else f"## Evaluation on the {split} split")
    lines = [title, "", headline_sentence(metrics), *source_lines(report), ""]
    shipped = dict(zip(config["labels"], config["thresholds"], strict=True))
    used = report["thresholds"]["values"]
    if any(abs(used[name] - shipped[name]) > 1e-9 for name in used if name in shipped):
        lines += ["**Note:** this report was made with thresholds that differ from the ones "
                  "shipped in `config.json`; re-run the evaluation to refresh it.", ""]
    if _out_of_fold(report, config):
        lines += ["These are the out-of-fold predictions of the cross-validation's fold models, "
                  "not of this model (which trained on these images); thresholds and "
                  "calibration were fitted on them, so the figures at the threshold are "
                  "optimistic here.", ""]
    elif split == "val":
        lines += ["Thresholds and calibration were fitted on this split, so the figures at the "
                  "threshold (precision, recall, F1) are optimistic here.", ""]
    lines += [f"Intervals: {metrics['bootstrap']['interval']}, {metrics['bootstrap']['n_resamples']} "
              "bootstrap resamples of patients. Decision rule: "
              f"{metrics['threshold_rule']}. Macro = unweighted mean over the pathologies "
              "with a defined value; micro = all (image, pathology) decisions pooled.", "",
              *metrics_table(metrics)]
    accuracy = metrics["accuracy"]["averaged_classes"]
    if "element_wise_accuracy" in accuracy:
        lines += ["", f"Element-wise accuracy over the {accuracy['n_images']} x "
                  f"{accuracy['n_classes']} pathology decisions: "
                  f"{fmt(accuracy['element_wise_accuracy'])}, against "
                  f"{fmt(accuracy['element_wise_accuracy_always_negative'])} for a model that "
                  "always answers \"absent\": accuracy is not a useful figure here."]
    comparison = report.get("comparison")
    if comparison:
        diff = comparison["paired"]["mean_auroc_difference"]
        lines += ["", f"Reference model **{comparison['other_name']}** on the same "
                  f"{comparison['n_images']} images: "
                  f"{fmt_ci(comparison['other_model']['headline'])} vs this model's "
                  f"{fmt_ci(comparison['this_model']['headline'])} "
                  f"(difference {fmt_ci(diff)}, paired bootstrap)."]
    prefix = report.get("figures_dir", "")
    figures = report.get("figures", {})
    if figures:
        lines += ["", " ".join(f"![{kind}, {split}]({prefix}{name})"
                              for kind, name in figures.items())]
    return lines


def _thresholds_section(config: dict[str, Any], reports: list[dict[str, Any]]) -> list[str]:
    fitted = _fitted(config)
    if fitted:
        source = (f"chosen on {_fit_source(fitted)} by maximising "
                  f"{'F1' if fitted.get('threshold_method') == 'f1' else 'Youden J'}, on "
                  "calibrated probabilities")
    else:
        source = "never fitted on validation (defaults)"
    if config.get("operating_points"):
        source = (f"chosen on {_fit_source(fitted)} by the operating rule below, on calibrated "
                  "probabilities, then moved to the population's probability scale")
    lines = ["## Thresholds", "", f"Shipped in `config.json`; {source}. A pathology is flagged "
             "when its probability is at or above its threshold; No Finding only when, "
             "besides, no pathology is flagged.", ""]
    silent = set(fitted.get("no_signal") or ())
    rows = [[display_name(name), fmt(t) + (" (fallback: **no signal** on held-out images)"
                                           if name in silent else "")]
            for name, t in zip(config["labels"], config["thresholds"], strict=True)]
    lines += ["| Class | Threshold |", "|---|---|", *[f"| {a} | {b} |" for a, b in rows]]
    if silent:
        lines += ["", "Classes with no signal on the held-out predictions the thresholds were "
                  "fitted on (AUROC at most 0.5, or a calibration that found no relation between "
                  "score and label) keep the 0.5 fallback; the app marks them \"no signal\" "
                  "instead of judging them: " + ", ".join(display_name(n) for n in sorted(silent)) + "."]
    del reports  # thresholds are the config's; reports show the figures at them
    return lines


def _flags_sections(config: dict[str, Any], reports: list[dict[str, Any]]) -> list[str]:
    """Operating points, the flags' figures out of fold and on the test split (on the films
    as they are and weighted to the population), and the population itself."""
    if not config.get("operating_points"):
        return population_section(config)
    test = next((r.get("flags") for r in reports if r.get("split") == "test"), None)
    oof = config["operating_points"]["out_of_fold"]
    population = config["population"]["name"]
    columns = [("out of fold, sample", oof["sample"]),
               (f"out of fold, weighted to {population}", oof["population"]),
               ("test, sample", (test or {}).get("sample")),
               (f"test, weighted to {population}", (test or {}).get("population"))]
    return [*operating_points_section(config, test), "",
            "## What the flags do", "",
            "Out of fold the flags are cross-fitted; the test split is scored once with the "
            "shipped thresholds. Intervals: 95% patient bootstrap.", "",
            *flag_figures_section(columns), "",
            *_flags_by_source(oof, test),
            *population_section(config, test)]


def _flags_by_source(oof: dict[str, Any], test: dict[str, Any] | None) -> list[str]:
    """The flag figures on each source folder's films as they are, out of fold
    (cross-fitted) and on the test split, when the records give them per folder."""
    columns = [(f"out of fold, `{name}`", figures)
               for name, figures in (oof.get("by_source") or {}).items()]
    columns += [(f"test, `{name}`", figures)
                for name, figures in ((test or {}).get("by_source") or {}).items()]
    if not columns:
        return []
    return ["Per source folder (picked differently, so reported apart), on the films as they "
            "are:", "", *flag_figures_section(columns), ""]


def _fit_source(fitted: dict[str, Any]) -> str:
    """What thresholds and calibration were fitted on: the validation split, or
    out-of-fold predictions (``training.crossval --refit``)."""
    images = f"{fitted.get('n_images')} images, {fitted.get('n_patients')} patients"
    out_of_fold = fitted.get("out_of_fold")
    if out_of_fold:
        return (f"out-of-fold predictions of the train + validation images ({images}; "
                f"{out_of_fold.get('note')})")
    return f"the validation split ({images})"


def _calibration_section(config: dict[str, Any], reports: list[dict[str, Any]]) -> list[str]:
    calibration = config.get("calibration")
    method = calibration["method"] if calibration else None
    where = "out-of-fold predictions" if _fitted(config).get("out_of_fold") else "the validation split"
    lines = ["## Calibration", "",
             f"Method: **{method or 'none'}**"
             + (f" per class, p = sigmoid(scale x logit + bias), fitted on {where} "
                "before the thresholds were chosen." if method else "."), ""]
    rows = []
    for report in reports:
        ece = report["calibration"]["ece"]
        split = "out-of-fold (train + val)" if _out_of_fold(report, config) else report["split"]
        rows.append(f"| {split} | {fmt(ece['pooled']['ece_before'])} | "
                    f"{fmt(ece['pooled']['ece_after'])} | "
                    f"{fmt(ece['mean_over_classes']['ece_before'])} | "
                    f"{fmt(ece['mean_over_classes']['ece_after'])} |")
    if rows:
        lines += ["Expected calibration error (15 equal-width bins; \"before\" = plain sigmoid):",
                  "", "| Split | pooled, before | pooled, after | mean over classes, before | "
                  "mean over classes, after |", "|---|---|---|---|---|", *rows]
    return lines


def _localization_section(localization: dict[str, Any] | None, source: Path | None) -> list[str]:
    lines = ["## Localisation", ""]
    if localization is None:
        return lines + ["Not evaluated for this card. The heatmaps shown by the demo are "
                        "Grad-CAM class-activation maps: coarse (the network's 7 x 7 grid at "
                        "224 px), not segmentations, and not validated as localisation."]
    lines.append(f"From `{source}` (NIH radiologist bounding boxes):")
    lines.append("")
    per_class = localization.get("per_class")
    if isinstance(per_class, dict) and per_class:
        columns = sorted({key for entry in per_class.values() if isinstance(entry, dict)
                          for key, value in entry.items() if isinstance(value, (int, float))})
        lines += ["| Class | " + " | ".join(columns) + " |",
                  "|---|" + "---|" * len(columns)]
        for name, entry in per_class.items():
            cells = [_cell(entry.get(column)) for column in columns]
            label = display_name(name) if name in LABELS else name
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    scalars = {k: v for k, v in localization.items() if isinstance(v, (int, float, str))}
    lines += [f"- {key}: {_cell(value)}" for key, value in scalars.items()]
    return lines


def _ood_section(config: dict[str, Any]) -> list[str]:
    """The out-of-distribution gate's levels and how well it separated on validation."""
    lines = ["## Out-of-distribution gate", ""]
    ood = config.get("ood")
    if not ood:
        return [*lines, "This checkpoint has no out-of-distribution gate: every image gets a prediction."]
    lines.append(
        f"Method: {ood.get('method')} distance of the {ood.get('feature', 'penultimate features')} "
        f"to the {ood.get('n_train', '?')} training radiographs. Above {_cell(ood.get('warn'))} "
        f"the app and command line warn that the image is unlike the training radiographs; above "
        f"{_cell(ood.get('refuse'))} they refuse to predict. Levels: {ood.get('levels', 'see config.json')}."
    )
    if ood.get("validation_auroc") is not None:
        lines += ["", f"Separation of the {ood.get('n_val', '?')} validation radiographs from "
                  f"{ood.get('n_generated', '?')} generated non-radiographs: AUROC "
                  f"{_cell(ood.get('validation_auroc'))} (generated images are easy cases; "
                  "photographs and other body parts were not available to test)."]
    return lines


GATE_KIND_NAMES = {
    "nih_frontal": "NIH frontal films (patients not used in the fit)",
    "other_frontal": "frontal films from other hospitals",
    "lateral": "lateral chest films",
    "ct": "CT slices (axial, coronal)",
}


GATE_FIT_NAMES = {
    "nih_frontal": "NIH frontal films",
    "other_frontal": "frontal films from other hospitals",
    "lateral": "lateral chest films",
    "ct": "CT slices",
}
GATE_CLASS_NAMES = {"lateral": "a lateral chest film", "ct": "a CT slice",
                    "other": "other images (photographs, documents, MR slices)"}


def _gate_section(config: dict[str, Any]) -> list[str]:
    """The input gate's view head: method, levels and held-out separation per kind."""
    lines = ["## Input gate: frontal film, lateral film or another modality", ""]
    gate = config.get("gate")
    if not gate:
        return [*lines, "This checkpoint has no view head: only the out-of-distribution "
                "distance above screens its inputs (`python -m training.fit_gate` adds one)."]
    others = [GATE_CLASS_NAMES.get(c, c) for c in gate.get("classes", [])[1:]]
    lines += [
        f"The view head ({gate.get('method')}: {gate.get('features')}) tells a frontal chest "
        f"film from {', '.join(others)}; its score is {gate.get('score')}. Above {_cell(gate.get('warn'))} the findings come with a "
        f"warning that names what the image looks like; above {_cell(gate.get('refuse'))} "
        f"no findings are shown. Levels: {gate.get('levels')}. The app combines it with the "
        "distance above (an image only the distance flags is reported as \"unknown\").",
        "",
        f"Held-out images ({gate.get('split')}; measured {str(gate.get('date', ''))[:10]}): "
        "flagged = warned or refused; AUROC of the view score against the held-out NIH "
        "frontal films.",
        "",
        "| held-out images | n | AUROC | flagged by the view head | flagged by the whole gate | refused |",
        "|---|---|---|---|---|---|",
    ]
    for kind, fig in (gate.get("held_out") or {}).items():
        n = fig.get("n", 0)
        lines.append(
            f"| {GATE_KIND_NAMES.get(kind, kind)} | {n} | {_cell(fig.get('auroc_vs_nih_frontal'))} "
            f"| {fig.get('view_flagged')} ({_share(fig.get('view_flagged'), n)}) "
            f"| {fig.get('gate_flagged')} ({_share(fig.get('gate_flagged'), n)}) "
            f"| {fig.get('gate_refused')} |"
        )
    fit = gate.get("fit_images") or {}
    variants = gate.get("fit_with_variants") or {}
    lines += ["", "Fitted on " + ", ".join(f"{n} {GATE_FIT_NAMES.get(k, k)}" for k, n in fit.items())
              + f" ({sum(variants.values())} images with augmented variants and "
              f"{variants.get('other', 0)} generated non-radiographs: document pages, "
              "photographs, an MR slice, synthetic scenes). Design, split and levels: "
              "`docs/input-gate.md`; rerun `python -m training.fit_gate` whenever the weights change."]
    return lines


def _share(count: Any, n: Any) -> str:
    if not isinstance(count, int) or not n:
        return "—"
    return f"{count / n:.1%}"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return fmt(value)
    return "—" if value is None else str(value)


LIMITATIONS = [
    "Trained and evaluated on one source, the NIH Clinical Center (ChestX-ray14), frontal "
    "views only. Other hospitals, scanners, populations, lateral views, children and "
    "portable/ICU films may behave very differently (dataset shift).",
    "Labels were extracted from reports by text processing and are imperfect; radiologist "
    "relabelling of NIH images (Majkowska et al., Radiology 2020) disagrees with many.",
    "\"No finding\" means none of the 14 labels was mentioned, not that the film is normal.",
    "Positive predictive value depends on prevalence: thresholds chosen on NIH prevalence "
    "do not transfer to a population with different prevalence.",
    "Known shortcuts in this dataset (chest tubes for pneumothorax, text markers, image "
    "processing of the source hospital) can inflate metrics without real understanding.",
    "Some labelled films are public copies made for one finding (a COVID-19 collection's "
    "No-Finding and Pneumonia folders), and one such copy's films are brighter and less "
    "sharp than the rest: figures on films from those copies rest partly on recognising the copy "
    "(`python -m training.source_audit`; the repository's docs/experiments.md).",
    "Heatmaps show where the network's evidence is, not where the disease is.",
    "Evaluated on few images for a 15-output model: per-class figures for rare findings "
    "rest on a handful of positives.",
]


def _reproduce_section(config: dict[str, Any], reports: list[dict[str, Any]],
                       card_command: str) -> list[str]:
    """The commands that made this model, in order, as each stage recorded them."""
    provenance = config.get("provenance", {})
    lines = ["## How to reproduce", "",
             "The commands below are the ones that ran, as each stage recorded them (paths "
             "reduced to their base names); the full sequence with its data folders is in the "
             "repository's `docs/training.md`.", ""]
    for key in ("selection", "hardware", "pretrained"):
        if provenance.get(key):
            lines.append(f"- {key.capitalize()}: {provenance[key]}")
    recorded = [provenance.get("command"),
                (provenance.get("validation_fit") or {}).get("command"),
                (provenance.get("bundle") or {}).get("command"),
                *[report.get("command") for report in reports]]
    missing = [stage for stage, command in (("training", recorded[0]), ("calibration", recorded[1]))
               if not command]
    if missing:
        lines += ["", f"Not recorded by this model's {' and '.join(missing)} (made before "
                  "stages recorded their commands); its resolved recipe is above and in "
                  "`train_config.yaml`."]
    lines += ["", "```bash", *[c for c in recorded if c], card_command, "```"]
    return lines


def build_card(
    config: dict[str, Any],
    reports: list[dict[str, Any]],
    *,
    localization: dict[str, Any] | None = None,
    localization_path: Path | None = None,
    card_command: str = "python -m training.model_card",
) -> str:
    """The whole model card as Markdown, front matter first."""
    lines = [*_title(config),
             "## Intended use", "",
             "A research and teaching demonstration of multi-label chest X-ray classification "
             "with per-class heatmaps: for exploring what such a model does and where it fails. "
             "Out of scope: any clinical use, including diagnosis, triage, screening or second "
             "reading; any use on patients; any use without a qualified reader.", "",
             *_data_section(config, reports), "",
             *_training_section(config), ""]
    for report in reports:
        lines += [*_evaluation_section(report, config), ""]
    lines += [*_thresholds_section(config, reports), "",
              *_flags_sections(config, reports), "",
              *_calibration_section(config, reports), "",
              *_localization_section(localization, localization_path), "",
              *_ood_section(config), "",
              *_gate_section(config), "",
              "## Limitations", "", *[f"- {item}" for item in LIMITATIONS], "",
              *_reproduce_section(config, reports, card_command), ""]
    return FRONT_MATTER + "\n" + "\n".join(lines)


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as tmp:
        tmp.write(text)
    os.replace(tmp.name, path)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m training.model_card",
                                     description="Write the model card from evaluation reports.")
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="checkpoint directory (its config.json)")
    parser.add_argument("--report", type=Path, action="append", required=True,
                        help="report_<split>.json from training.evaluate; repeat for val and test")
    parser.add_argument("--localization", type=Path, help="localisation figures (JSON)")
    parser.add_argument("--out", type=Path, default=Path("weights/README.md"))
    args = parser.parse_args(argv)
    try:
        config = read_config(args.checkpoint / CONFIG_FILE).to_dict()
        reports = []
        for path in args.report:
            report = read_json(path, "evaluation report")
            _check_report(report, path)
            # the report's figures sit beside it: link them relative to the card
            relative = os.path.relpath(path.resolve().parent, args.out.resolve().parent)
            report["figures_dir"] = "" if relative == "." else relative + "/"
            reports.append(report)
        localization = (read_json(args.localization, "localisation file")
                        if args.localization else None)
    except (ModelCardError, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    card = build_card(config, reports, localization=localization,
                      # named relative to the card, as its figures are
                      localization_path=Path(os.path.relpath(args.localization.resolve(),
                                                             args.out.resolve().parent))
                      if args.localization else None,
                      card_command=public_command("training.model_card", argv))
    _atomic_write(args.out, card)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
