"""Apply the rule for choosing a recipe to cross-validated candidates, from their reports.

The rule (docs/experiments.md, "Which recipe holds up on every source of films?") weighs
the source folders evenly: a recipe's deciding figure is the **mean of its per-folder
out-of-fold figures** (mean AUROC over the 14 pathologies on each folder's out-of-fold
films), and a candidate replaces the baseline when

- its deciding figure is at least ``--min-gain`` (0.005) above the baseline's, and
- its worse folder is not more than ``--max-worse-folder-drop`` (0.02) below the
  baseline's worse folder.

When several candidates pass, the one with the highest deciding figure is chosen. Each
recipe is a cross-validation folder (``python -m training.crossval ... --out-of-fold``)
holding the reports the rule reads, all written by other commands:

- ``oof_eval/report_val.json``: ``python -m training.evaluate --predictions
  DIR/oof_predictions.csv --split-csv DIR/oof_predictions.csv --split val --sources A B
  --out DIR/oof_eval`` (pooled and per-folder figures; required);
- ``crossval.json``: the per-fold mean and standard deviation (optional);
- ``<--paired>/report_val.json``: the same evaluation with ``--compare`` against the
  baseline's out-of-fold predictions (the paired pooled difference; optional);
- ``source_audit/audit.json``: ``python -m training.source_audit --predictions
  DIR/oof_predictions.csv`` (each pathology's films against each group's normal films;
  optional).

It writes ``standing.md`` (the table and each candidate's decision) and ``standing.json``
to ``--out`` and prints the table::

    python -m training.recipe_rule --baseline G=runs/nih1753/cv_g \\
        --candidates L=runs/nih1753/cv_l M=runs/nih1753/cv_m --paired oof_vs_g --out runs/nih1753/standing
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from training.reports.markdown import fmt_ci, markdown_table

OOF_REPORT = Path("oof_eval") / "report_val.json"
CROSSVAL_REPORT = "crossval.json"
AUDIT_REPORT = Path("source_audit") / "audit.json"


class RuleError(ValueError):
    """A recipe folder lacks what the rule reads, or the recipes do not match."""


@dataclass(frozen=True)
class Rule:
    """The thresholds of the rule, in mean AUROC."""

    min_gain: float = 0.005
    max_worse_folder_drop: float = 0.02


@dataclass(frozen=True)
class Figure:
    """A value with its 95% interval (``None`` where the report gives none)."""

    value: float
    low: float | None = None
    high: float | None = None

    @classmethod
    def of(cls, headline: Mapping[str, Any]) -> Figure:
        return cls(float(headline["value"]), headline.get("ci_low"), headline.get("ci_high"))

    def text(self) -> str:
        """``0.686 (0.670–0.702)``, as the evaluation reports write it."""
        return fmt_ci({"value": self.value, "ci_low": self.low, "ci_high": self.high})


@dataclass(frozen=True)
class Standing:
    """One recipe's out-of-fold figures, as its reports give them."""

    name: str
    folder: str
    pooled: Figure
    by_folder: dict[str, Figure]
    per_fold: tuple[float, float] | None = None  # mean and sd of the folds' figures
    paired: Figure | None = None  # pooled, this recipe minus the baseline, same films
    against_normals: dict[str, float] | None = None  # audit group -> mean AUROC

    @property
    def deciding(self) -> float:
        """The mean of the per-folder figures: each folder weighs the same."""
        return sum(figure.value for figure in self.by_folder.values()) / len(self.by_folder)

    @property
    def worse_folder(self) -> float:
        return min(figure.value for figure in self.by_folder.values())


@dataclass(frozen=True)
class Decision:
    """Whether a candidate passes the rule against the baseline, and why."""

    passes: bool
    gain: float
    worse_folder_drop: float
    reason: str


def read_standing(name: str, folder: Path, paired: str | None, min_normal_films: int) -> Standing:
    """The figures of the recipe cross-validated in ``folder``."""
    report = _read_json(folder / OOF_REPORT, "its out-of-fold evaluation with --sources (training.evaluate)")
    by_source = report.get("by_source")
    if not by_source:
        raise RuleError(f"{folder / OOF_REPORT} has no per-folder figures: evaluate with --sources")
    crossval = _optional_json(folder / CROSSVAL_REPORT)
    per_fold = None
    if crossval and crossval.get("out_of_fold"):
        scored = crossval["out_of_fold"].get("mirror_average") or crossval["out_of_fold"].get("as_given")
        per_fold = (float(scored["mean"]), float(scored["sd"])) if scored else None
    comparison = _optional_json(folder / paired / OOF_REPORT.name) if paired else None
    difference = comparison["comparison"]["paired"]["mean_auroc_difference"] if comparison else None
    audit = _optional_json(folder / AUDIT_REPORT)
    normals = None
    if audit:
        normals = {group["group"]: float(group["against_these_normal_films"])
                   for group in audit["normal_films_by_group"]
                   if group["n_no_finding"] >= min_normal_films and group["against_these_normal_films"] is not None}
    return Standing(
        name=name, folder=str(folder), pooled=Figure.of(report["metrics"]["headline"]),
        by_folder={source: Figure.of(entry["headline"]) for source, entry in sorted(by_source.items())},
        per_fold=per_fold, paired=Figure.of(difference) if difference else None, against_normals=normals,
    )


def decide(candidate: Standing, baseline: Standing, rule: Rule) -> Decision:
    """The rule applied to one candidate against the baseline."""
    if sorted(candidate.by_folder) != sorted(baseline.by_folder):
        raise RuleError(f"{candidate.name} is scored on folders {sorted(candidate.by_folder)}, "
                        f"{baseline.name} on {sorted(baseline.by_folder)}")
    gain = candidate.deciding - baseline.deciding
    drop = baseline.worse_folder - candidate.worse_folder
    if drop > rule.max_worse_folder_drop:
        return Decision(False, gain, drop, f"worse folder down {drop:.3f}, more than the "
                                           f"{rule.max_worse_folder_drop:.3f} allowed")
    if gain < rule.min_gain:
        return Decision(False, gain, drop, f"{gain:+.4f}, short of +{rule.min_gain:.3f}")
    return Decision(True, gain, drop, f"{gain:+.4f}, at least +{rule.min_gain:.3f}")


def chosen(baseline: Standing, candidates: Sequence[Standing], decisions: Sequence[Decision]) -> Standing:
    """The passing candidate with the highest deciding figure, else the baseline."""
    passing = [c for c, d in zip(candidates, decisions, strict=True) if d.passes]
    return max(passing, key=lambda standing: standing.deciding) if passing else baseline


def standing_markdown(baseline: Standing, candidates: Sequence[Standing], decisions: Sequence[Decision],
                      rule: Rule) -> str:
    """The table of every recipe and each candidate's decision."""
    folders = list(baseline.by_folder)
    groups = list(baseline.against_normals or {})
    header = (["recipe", "per fold", "pooled", *(f"`{f}/`" for f in folders), "mean of the folders",
               f"paired against {baseline.name}"]
              + [f"against `{g}` normal films" for g in groups] + ["decision"])
    rows = [_row(baseline, folders, groups, "baseline")]
    for candidate, decision in zip(candidates, decisions, strict=True):
        rows.append(_row(candidate, folders, groups, ("passes: " if decision.passes else "not adopted: ")
                         + decision.reason))
    best = chosen(baseline, candidates, decisions)
    lines = [
        f"Out-of-fold mean AUROC over the 14 pathologies. A candidate replaces {baseline.name} when "
        f"the mean of its per-folder figures is at least +{rule.min_gain:.3f} above "
        f"{baseline.name}'s and its worse folder is at most {rule.max_worse_folder_drop:.3f} below "
        f"{baseline.name}'s; of several, the highest mean.",
        "",
        *markdown_table(header, rows),
        "",
        f"Chosen: **{best.name}** (mean of the folders {best.deciding:.4f}).",
    ]
    return "\n".join(lines) + "\n"


def _row(standing: Standing, folders: Sequence[str], groups: Sequence[str], decision: str) -> list[str]:
    normals = standing.against_normals or {}
    return [
        standing.name,
        f"{standing.per_fold[0]:.3f} ± {standing.per_fold[1]:.3f}" if standing.per_fold else "—",
        standing.pooled.text(),
        *(standing.by_folder[f].text() for f in folders),
        f"{standing.deciding:.4f}",
        standing.paired.text() if standing.paired else "—",
        *(f"{normals[g]:.3f}" if g in normals else "—" for g in groups),
        decision,
    ]


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise RuleError(f"no {path}: the rule reads {what}")
    return json.loads(path.read_text())


def _optional_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _named(value: str) -> tuple[str, Path]:
    name, sep, folder = value.partition("=")
    if not sep or not name or not folder:
        raise argparse.ArgumentTypeError(f"expected NAME=FOLDER, got {value!r}")
    return name, Path(folder)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.recipe_rule", description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=_named, required=True, metavar="NAME=FOLDER",
                        help="the recipe to beat: its cross-validation folder")
    parser.add_argument("--candidates", type=_named, nargs="+", required=True, metavar="NAME=FOLDER",
                        help="the candidates' cross-validation folders")
    parser.add_argument("--paired", default=None, metavar="SUBFOLDER",
                        help="each candidate's evaluation --compare'd with the baseline's out-of-fold "
                             "predictions, in FOLDER/SUBFOLDER (e.g. oof_vs_g)")
    parser.add_argument("--min-gain", type=float, default=Rule.min_gain)
    parser.add_argument("--max-worse-folder-drop", type=float, default=Rule.max_worse_folder_drop)
    parser.add_argument("--audit-min-normal-films", type=int, default=10,
                        help="audit groups with fewer No-Finding films are left out of the table")
    parser.add_argument("--out", type=Path, required=True, help="folder for standing.md and standing.json")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rule = Rule(args.min_gain, args.max_worse_folder_drop)
    try:
        baseline = read_standing(*args.baseline, None, args.audit_min_normal_films)
        candidates = [read_standing(name, folder, args.paired, args.audit_min_normal_films)
                      for name, folder in args.candidates]
        decisions = [decide(candidate, baseline, rule) for candidate in candidates]
    except RuleError as error:
        print(f"error: {error}")
        return 2
    text = standing_markdown(baseline, candidates, decisions, rule)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "standing.md").write_text(text)
    (args.out / "standing.json").write_text(json.dumps({
        "rule": asdict(rule),
        "baseline": {**asdict(baseline), "deciding": baseline.deciding},
        "candidates": [{**asdict(c), "deciding": c.deciding, "decision": asdict(d)}
                       for c, d in zip(candidates, decisions, strict=True)],
        "chosen": chosen(baseline, candidates, decisions).name,
    }, indent=2) + "\n")
    print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
