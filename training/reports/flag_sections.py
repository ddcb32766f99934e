"""Markdown for what the flags mean: operating points, the population, flag figures.

Every number comes from ``config.json`` (``operating_points``, ``population``: written by
``training.calibrate``) or from a test report's ``flags`` section (written by
``training.evaluate``).  Both hold figures in the shape of
:func:`training.metrics.population_figures.population_figures` /
:func:`~training.metrics.population_figures.sample_figures`.
"""

from __future__ import annotations

from typing import Any

from training.reports.markdown import fmt, fmt_ci
from xray_app.labels import LABELS, PATHOLOGIES, display_name

__all__ = ["TARGETS", "flag_figures_section", "operating_points_section", "population_section"]

# The flag figures every report gives, with the direction that is better and, where the
# product states one, the target it is held to.
TARGETS: tuple[tuple[str, str, str], ...] = (
    ("flags_per_normal_film", "pathology flags per No-Finding film (mean)", "at most 0.5"),
    ("normal_films_with_any_flag", "No-Finding films with any pathology flag", "at most 25%"),
    ("abnormal_films_with_a_correct_flag",
     "films with a pathology that get at least one correct flag", "at least 35%"),
    ("flags_per_film", "pathology flags per film, all films (mean)", ""),
    ("mean_auroc", "mean AUROC over the 14 pathologies", ""),
    ("median_probability_ratio",
     "mean probability / prevalence, median over the 14 pathologies", "within 0.6–1.6 (weighted)"),
)


def _cell(figures: dict[str, Any] | None, key: str) -> str:
    if not figures or key not in figures:
        return "—"
    return fmt_ci(figures[key], 2)


def flag_figures_section(columns: list[tuple[str, dict[str, Any] | None]]) -> list[str]:
    """A table of the flag figures, one column per ``(heading, figures)``."""
    header = "| figure | " + " | ".join(h for h, _ in columns) + " | target |"
    lines = [header, "|---|" + "---|" * len(columns) + "---|"]
    for key, label, target in TARGETS:
        lines.append(f"| {label} | " + " | ".join(_cell(f, key) for _, f in columns) + f" | {target} |")
    sizes = []
    for heading, figures in columns:
        weighting = (figures or {}).get("weighting")
        if weighting:
            sizes.append(f"{heading}: {weighting['n_images']} films, effective sample size "
                         f"{weighting['effective_sample_size']:.0f} after raking")
    if sizes:
        lines += ["", "Weighted columns are raked over the 15 labels to the population's "
                  "prevalences; " + "; ".join(sizes) + "."]
    return lines


def _ratio_range(figures: dict[str, Any] | None) -> str:
    if not figures:
        return "—"
    ratios = [figures["per_class"][label]["probability_ratio"]["value"] for label in PATHOLOGIES]
    return f"{min(ratios):.2f}–{max(ratios):.2f}"


def operating_points_section(config: dict[str, Any],
                             test: dict[str, Any] | None = None) -> list[str]:
    """The rule, each threshold, and its sensitivity and specificity out of fold
    (cross-fitted) and on the test split."""
    points = config.get("operating_points")
    if not points:
        return ["## Operating points", "",
                "No operating points are recorded: the thresholds' origin is in the "
                "calibration section."]
    chosen = points["chosen_on"]
    oof = points["out_of_fold"]["sample"]["per_class"]
    test_per_class = (test or {}).get("sample", {}).get("per_class", {})
    lines = ["## Operating points", "",
             f"A flag means the probability is at or above the finding's operating point. "
             f"Rule: {points['description']}. Chosen on {chosen['description']}; never on the "
             "test split. Sensitivity and specificity out of fold are **cross-fitted** (each "
             "fold flagged with thresholds chosen on the other folds).", "",
             "| finding | threshold | sensitivity, out of fold | specificity, out of fold "
             "| sensitivity, test | specificity, test |",
             "|---|---|---|---|---|---|"]
    for c, label in enumerate(LABELS):
        own, tested = oof[label], test_per_class.get(label, {})
        lines.append(
            f"| {display_name(label)} | {fmt(config['thresholds'][c], 3)} "
            f"| {fmt_ci(own['sensitivity'], 2)} | {fmt_ci(own['specificity'], 2)} "
            f"| {fmt_ci(tested['sensitivity'], 2) if tested else '—'} "
            f"| {fmt_ci(tested['specificity'], 2) if tested else '—'} |")
    lines += ["", "Another operating point needs no retraining: `python -m training.calibrate "
              "--operating-rule specificity=0.9` (or `false-flags=B`) on the same out-of-fold "
              "predictions writes a new checkpoint folder; or edit `thresholds` in config.json."]
    return lines


def population_section(config: dict[str, Any], test: dict[str, Any] | None = None) -> list[str]:
    """Which population the probabilities refer to, its prevalences, and how well the
    probabilities match them out of fold and on the test split."""
    record = config.get("population")
    if not record:
        return ["## Population", "", "Probabilities refer to the training sample's own mix of "
                "findings (no population is recorded)."]
    points = config.get("operating_points") or {}
    oof = (points.get("out_of_fold") or {}).get("population")
    weighted_test = (test or {}).get("population")
    lines = ["## Probabilities: which population", "",
             f"Probabilities are calibrated out of fold on {record['sample']['name']} and then "
             f"moved to **{record['name']}** ({record.get('source', '')}) by prior-shift "
             "correction of the odds: `logit p = logit p_sample + logit(prevalence) - "
             "logit(sample prevalence)`. A probability is the chance of the finding among "
             "films like this one in that population, as NIH's text-mined labels define the "
             "finding. At a hospital with another mix of patients it is not that hospital's "
             "chance: give its prevalence table (`--population FILE` / `XRAY_POPULATION`).", "",
             "| finding | population prevalence | sample prevalence | mean probability / "
             "prevalence, out of fold (weighted) | same, test (weighted) |",
             "|---|---|---|---|---|"]
    for label in LABELS:
        ratio = (oof or {}).get("per_class", {}).get(label, {}).get("probability_ratio")
        tested = (weighted_test or {}).get("per_class", {}).get(label, {}).get("probability_ratio")
        lines.append(
            f"| {display_name(label)} | {record['prevalence'][label]:.4f} "
            f"| {record['sample']['prevalence'][label]:.4f} "
            f"| {fmt(ratio['value'], 2) if ratio else '—'} | {fmt(tested['value'], 2) if tested else '—'} |")
    lines += ["", f"Range over the 14 pathologies of mean probability / prevalence: out of fold "
              f"{_ratio_range(oof)}, test {_ratio_range(weighted_test)} (target: every class "
              "within 0.3–3.2)."]
    return lines
