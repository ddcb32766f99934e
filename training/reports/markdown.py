"""Markdown rendering of an evaluation report (the dict that ``training.evaluate`` writes as JSON).

Only formatting, and which kind of report it is, live here: every number comes from the
report dict.
"""

from __future__ import annotations

from typing import Any

from xray_app.labels import PATHOLOGIES, display_name

OUT_OF_FOLD = "out_of_fold"


def evaluation_key(split: str, validation_fit: dict[str, Any] | None) -> str:
    """What a report on ``split`` measured, as ``provenance.evaluation`` and the card name
    it, given the record of the threshold fit (``config.json``'s
    ``provenance.validation_fit``, copied into each report's ``thresholds``):
    ``"out_of_fold"`` for the validation report of the out-of-fold predictions the
    thresholds were fitted on (``training.crossval --refit``), else the split (``"test"``,
    ``"val"``).  A test report made with those same thresholds is still the test split."""
    return OUT_OF_FOLD if split == "val" and (validation_fit or {}).get("out_of_fold") else split


def fmt(value: float | None, digits: int = 3) -> str:
    """A number for a table cell; ``—`` for undefined."""
    return "—" if value is None else f"{value:.{digits}f}"


def fmt_ci(entry: dict[str, Any], digits: int = 3) -> str:
    """``0.812 (0.771–0.850)`` from an interval dict, or ``— (reason)``."""
    if entry.get("value") is None:
        reason = entry.get("reason")
        return f"— ({reason})" if reason else "—"
    text = fmt(entry["value"], digits)
    if entry.get("ci_low") is not None:
        text += f" ({fmt(entry['ci_low'], digits)}–{fmt(entry['ci_high'], digits)})"
    if entry.get("n_valid_resamples", 0) < entry.get("n_resamples", 0):
        text += f" [{entry['n_valid_resamples']}/{entry['n_resamples']} resamples]"
    return text


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def headline_sentence(metrics: dict[str, Any]) -> str:
    head = metrics["headline"]
    boot = metrics["bootstrap"]
    text = f"**{head['name']}: {fmt_ci(head)}**"
    if head.get("value") is not None:
        text += (f" — {boot['interval']} interval over {head['n_valid_resamples']} of "
                 f"{boot['n_resamples']} bootstrap resamples of patients")
    if head.get("classes_left_out"):
        text += f"; left out (undefined): {', '.join(head['classes_left_out'])}"
    return text


def metrics_table(metrics: dict[str, Any]) -> list[str]:
    """Per-class table with intervals, then macro and micro rows labelled as such."""
    header = ["Class", "n+", "Prevalence", "AUROC (95% CI)", "AUPRC (95% CI)", "Threshold",
              "Precision", "Recall", "Specificity", "F1"]
    rows = []
    for name in metrics["labels"]:
        m = metrics["per_class"][name]
        rows.append([display_name(name), str(m["n_positive"]), fmt(m["prevalence"]),
                     fmt_ci(m["auroc"]), fmt_ci(m["auprc"]), fmt(m["threshold"]),
                     fmt(m["precision"]), fmt(m["recall"]), fmt(m["specificity"]), fmt(m["f1"])])
    macro, micro = metrics["macro"], metrics["micro"]
    count = len(macro["auroc"]["classes"])
    rows.append([f"**Macro** (unweighted mean over {count} pathologies)", "", "",
                 fmt_ci(macro["auroc"]), fmt_ci(macro["auprc"]), "",
                 fmt(macro["precision"]["value"]), fmt(macro["recall"]["value"]),
                 fmt(macro["specificity"]["value"]), fmt(macro["f1"]["value"])])
    rows.append(["**Micro** (all pathology decisions pooled)", "", "",
                 fmt_ci(micro["auroc"]), fmt_ci(micro["auprc"]), "",
                 fmt(micro["precision"]), fmt(micro["recall"]), fmt(micro["specificity"]),
                 fmt(micro["f1"])])
    return markdown_table(header, rows)


def original_table(metrics: dict[str, Any]) -> list[str]:
    """The original project's table: precision/recall/F1, macro F1, accuracy + baseline."""
    rows = []
    for name in metrics["labels"]:
        m = metrics["per_class"][name]
        rows.append([display_name(name), fmt(m["precision"]), fmt(m["recall"]), fmt(m["f1"]),
                     str(m["tp"] + m["fn"])])
    lines = markdown_table(["Class", "Precision", "Recall", "F1", "Support (n+)"], rows)
    macro_f1 = metrics["macro"]["f1"]
    lines += ["", f"Macro F1 (unweighted mean over {len(macro_f1['classes'])} pathologies): "
              f"**{fmt(macro_f1['value'])}**", ""]
    acc_rows = []
    pathology_count = metrics["accuracy"]["averaged_classes"].get("n_classes")
    for key, title in (("averaged_classes", "pathologies"), ("all_classes", "outputs")):
        acc = metrics["accuracy"][key]
        if "element_wise_accuracy" not in acc:
            continue
        if key == "all_classes" and acc["n_classes"] == pathology_count:
            continue  # the same classes as the row above
        acc_rows.append([f"element-wise, {acc['n_classes']} {title}",
                         fmt(acc["element_wise_accuracy"]),
                         fmt(acc["element_wise_accuracy_always_negative"])])
        acc_rows.append([f"exact match (subset), {acc['n_classes']} {title}",
                         fmt(acc["exact_match_accuracy"]),
                         fmt(acc["exact_match_accuracy_always_negative"])])
    lines += markdown_table(["Accuracy", "Model", "Always-negative baseline"], acc_rows)
    definitions = metrics["accuracy"]["all_classes"].get("definitions", {})
    lines += ["", "Definitions: *element-wise accuracy* is the "
              f"{definitions.get('element_wise_accuracy', '')}; *exact-match accuracy* is the "
              f"{definitions.get('exact_match_accuracy', '')}; the *always-negative baseline* is "
              f"{definitions.get('always_negative', '')}. With rare findings the baseline "
              "already scores high element-wise accuracy, so accuracy alone says little."]
    return lines


def calibration_section(calibration: dict[str, Any]) -> list[str]:
    ece = calibration["ece"]
    method = calibration.get("method")
    order = calibration["order"][0].upper() + calibration["order"][1:]
    lines = [f"Method: **{method or 'none (plain sigmoid)'}**. {order}.", "",
             f"Expected calibration error ({ece['n_bins']} bins, {ece['binning']}):", ""]
    columns = ["ece_before", "ece_after"] if method else ["ece_before"]
    header = ["Class", "ECE before", "ECE after"] if method else ["Class", "ECE (uncalibrated)"]
    rows = [[display_name(name), *(fmt(v[c]) for c in columns)]
            for name, v in ece["per_class"].items()]
    rows.append(["**pooled** (all image × class pairs)", *(fmt(ece["pooled"][c]) for c in columns)])
    rows.append(["**mean over classes**", *(fmt(ece["mean_over_classes"][c]) for c in columns)])
    return lines + markdown_table(header, rows)


def comparison_section(comparison: dict[str, Any]) -> list[str]:
    other = comparison["other_name"]
    this, that, paired = comparison["this_model"], comparison["other_model"], comparison["paired"]
    lines = [f"Compared with **{other}** (`{comparison['other_file']}`) on the "
             f"{comparison['n_images']} images ({comparison['n_patients']} patients) that both "
             f"have, over the {len(comparison['labels'])} classes that both predict "
             f"({comparison['images_only_in_this_model']} images only in this model's "
             f"predictions, {comparison['images_only_in_other']} only in the other's). "
             "Differences are this model minus the other, with a paired bootstrap by patient.", ""]
    rows = []
    for name in comparison["labels"]:
        rows.append([display_name(name), str(this["per_class"][name]["n_positive"]),
                     fmt_ci(this["per_class"][name]["auroc"]),
                     fmt_ci(that["per_class"][name]["auroc"]),
                     fmt_ci(paired["per_class"][name]["auroc_difference"]),
                     fmt_ci(this["per_class"][name]["auprc"]),
                     fmt_ci(that["per_class"][name]["auprc"])])
    rows.append(["**Mean over pathologies**", "", fmt_ci(this["headline"]),
                 fmt_ci(that["headline"]), fmt_ci(paired["mean_auroc_difference"]),
                 fmt_ci(this["macro"]["auprc"]), fmt_ci(that["macro"]["auprc"])])
    lines += markdown_table(["Class", "n+", "AUROC this model", f"AUROC {other}", "Δ AUROC",
                     "AUPRC this model", f"AUPRC {other}"], rows)
    lines += ["", f"Macro F1: this model {fmt(this['macro']['f1']['value'])} at its own "
              f"thresholds; {other} {fmt(that['macro']['f1']['value'])} at "
              f"{comparison['other_threshold']} ({comparison['other_threshold_note']})."]
    return lines


def source_lines(report: dict[str, Any]) -> list[str]:
    """The headline per source folder, when the report has one (``by_source``)."""
    sources = report.get("by_source")
    if not sources:
        return []
    lines = ["", "Per source folder (picked differently, so reported apart as well as pooled):", "",
             "| source | images | patients | headline | against No Finding | against other findings |",
             "|---|---|---|---|---|---|"]
    for name, entry in sources.items():
        negatives = entry.get("negatives", {})
        lines.append(f"| `{name}` | {entry['n_images']} | {entry['n_patients']} "
                     f"| {fmt_ci(entry['headline'])} | {fmt(negatives.get('against_no_finding'))} "
                     f"| {fmt(negatives.get('against_other_findings'))} |")
    return lines


def negatives_lines(report: dict[str, Any]) -> list[str]:
    """What the pathologies are told apart from (``negatives``), when the report has it."""
    negatives = report.get("negatives")
    if not negatives:
        return []
    return ["", "Mean AUROC over the 14 pathologies by kind of negative film: against No-Finding "
            f"films {fmt(negatives['against_no_finding'])}, against films with other pathologies "
            f"{fmt(negatives['against_other_findings'])}. A model that tells abnormal from normal "
            "films by cues other than the finding scores well on the first and not the second."]


def render_markdown(report: dict[str, Any]) -> str:
    """The whole ``report_<split>.md``."""
    metrics = report["metrics"]
    model = report["model"]
    split = report["split"]
    lines = [f"# Evaluation on the {split} split", ""]
    if model.get("checkpoint"):
        lines.append(f"Model: `{model.get('name')}` from `{model['checkpoint']}`"
                     f" ({model.get('architecture')}, input {model.get('input_size')} px).")
        if not model.get("trained"):
            lines.append("**WARNING: this checkpoint is marked UNTRAINED (random weights); "
                         "its figures are meaningless.**")
    else:
        lines.append(f"Model: predictions file `{report['data'].get('predictions')}` (no checkpoint).")
    data = report["data"]
    split_list = (f"split list `{data['split_csv']}`" if data.get("split_csv")
                  else "no split list (every image of the predictions file)")
    lines += ["", f"Data: {data['n_images']} images of {data['n_patients']} patients; labels from "
              f"{data['labels_from']} (`{data['metadata']}`); {split_list}.",
              f"Command: `{report['command']}`", "", "## Headline", "",
              headline_sentence(metrics)]
    lines += negatives_lines(report)
    lines += source_lines(report)
    if "No Finding" in metrics["per_class"]:
        lines.append(f"\n\"No finding\" is reported separately: AUROC "
                     f"{fmt_ci(metrics['per_class']['No Finding']['auroc'])}.")
    missing = [name for name in PATHOLOGIES if name not in metrics["labels"]]
    if missing:
        lines.append(f"\nPathologies this model does not predict: {', '.join(missing)}.")
    lines += ["", "## Per-class metrics", "",
              f"Intervals: {metrics['bootstrap']['interval']} over {metrics['bootstrap']['n_resamples']} "
              "bootstrap resamples of patients (all images of a drawn patient are taken); a "
              "class with one label value in a resample is skipped there, and [k/n] says on "
              f"how many resamples an interval rests. Decision rule: {metrics['threshold_rule']}.",
              "", *metrics_table(metrics), "",
              "## The original project's table", "", *original_table(metrics), "",
              "## Thresholds", "", f"Source: {report['thresholds']['source']}."]
    if report["thresholds"].get("optimistic"):
        lines.append(f"\n**Note:** {report['thresholds']['optimistic']}.")
    lines += ["", "## Calibration", "", *calibration_section(report["calibration"])]
    if "comparison" in report:
        lines += ["", "## Comparison", "", *comparison_section(report["comparison"])]
    figures = report.get("figures", {})
    if figures:
        lines += ["", "## Figures", ""]
        lines += [f"![{kind}]({name})" for kind, name in figures.items()]
    if report.get("notes"):
        lines += ["", "## Notes", "", *[f"- {note}" for note in report["notes"]]]
    if report.get("config_written"):
        lines += ["", f"Thresholds and calibration written to `{report['config_written']}`."]
    return "\n".join(lines) + "\n"
