"""Do the films carry a pixel signature of where they were copied from?

    python -m training.source_audit --metadata META --folders DIR [DIR ...]
        [--copies CSV] [--predictions OOF_CSV] --out DIR [--sizes 256 160]

The labelled films come from public copies of NIH's images, and some copies were made for
one finding: a repository's ``Pneumonia/`` or ``No_findings/`` folder holds only that
label. If such a copy was also processed differently (resized, re-encoded), its films
carry a pixel signature that goes with their label, and a network can learn the signature
instead of the finding. This audit measures, per **group** of films (a folder, or with
``--copies`` a repository and its folder, from a CSV with ``Image Index``,
``source_repository`` and ``source_path`` such as ``images_extra_sources.csv``):

- the label mix: films, patients, shares of No Finding, Pneumonia and AP view;
- two pixel measures, on the decoded film resized as the training cache and the model
  input are (:func:`xray_app.preprocess.resize_gray`) to each of ``--sizes``: **sharpness**,
  the mean absolute 4-neighbour Laplacian over the film's standard deviation, and
  **brightness**, the mean grey level in [0, 1]; median and quartiles per group;
- within each folder, the AUROC of *low* sharpness and of *high* brightness for No Finding
  (0.5: the measure says nothing about the label), with patient-bootstrap intervals;
- the normal films of each group against the first folder's normal films **of the same
  view** (PA, AP), by each measure at the model's size (the last of ``--sizes``): a copy's
  signature, apart from its view mix;
- with ``--predictions`` (out-of-fold predictions of a recipe), for the No-Finding films
  of each group: the mean over the 14 pathologies of the AUROC of each pathology's films
  (from every group) against that group's No-Finding films. If one group's normal films
  are told from the same abnormal films far better than another's, the network treats
  those normal films as a kind of their own.

Writes ``audit.json`` and ``audit.md`` in ``--out``; every figure gives its film count.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from training.data.images import find_images
from training.data.metadata import FINDINGS, IMAGE, PATIENT, labels_of, read_metadata
from training.data.predictions import read_predictions
from training.data.prevalence import VIEW
from training.metrics.auroc import auroc
from training.metrics.bootstrap import bootstrap_counts, interval, resample_indices
from training.metrics.negatives import auroc_against
from xray_app.labels import LABELS, NO_FINDING, PATHOLOGIES
from xray_app.preprocess import decode_image, resize_gray

N_BOOT = 1000


@dataclass(frozen=True)
class AuditConfig:
    metadata: Path
    folders: tuple[Path, ...]
    out: Path
    copies: Path | None = None
    predictions: Path | None = None
    sizes: tuple[int, ...] = (256, 160)
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.folders:
            raise ValueError("give at least one image folder")
        if any(size < 8 for size in self.sizes):
            raise ValueError(f"sizes must be at least 8 px, got {self.sizes}")


def sharpness(gray: np.ndarray) -> float:
    """Mean absolute 4-neighbour Laplacian of ``gray`` ``(H, W)`` over its standard
    deviation: how much fine detail a film holds for its contrast (0 for a flat image)."""
    a = np.asarray(gray, dtype=np.float64)
    laplacian = 4 * a[1:-1, 1:-1] - a[:-2, 1:-1] - a[2:, 1:-1] - a[1:-1, :-2] - a[1:-1, 2:]
    spread = a.std()
    return float(np.abs(laplacian).mean() / spread) if spread > 0 else 0.0


def film_groups(folder_of: dict[str, str], copies: Path | None) -> dict[str, str]:
    """Each film's group: ``repository:folder`` where the copies CSV names it, else the
    base name of the image folder it was found in (``folder_of``)."""
    groups = dict(folder_of)
    if copies is None:
        return groups
    table = pd.read_csv(copies, dtype=str)
    missing = {IMAGE, "source_repository", "source_path"} - set(table.columns)
    if missing:
        raise ValueError(f"{copies}: missing column(s) {sorted(missing)}")
    for name, repository, source in zip(table[IMAGE], table["source_repository"], table["source_path"], strict=True):
        if name in groups:
            groups[name] = f"{repository}:{Path(source).parent.name}"
    return groups


def brightness(gray: np.ndarray) -> float:
    """Mean grey level of ``gray``, a decoded film in [0, 1]."""
    return float(np.mean(gray, dtype=np.float64))


# each measure, and whether its *low* values are the ones that go with a copy's normal films
MEASURES = {"sharpness": (sharpness, True), "brightness": (brightness, False)}


def film_table(cfg: AuditConfig) -> pd.DataFrame:
    """One row per film found in the folders and listed in the metadata: group, folder,
    patient, labels, view and each measure at each size."""
    found = {folder.name: find_images([folder]) for folder in cfg.folders}
    paths = {name: path for in_folder in found.values() for name, path in in_folder.items()}
    folder_of = {name: folder for folder, in_folder in found.items() for name in in_folder}
    groups = film_groups(folder_of, cfg.copies)
    metadata = read_metadata(cfg.metadata).set_index(IMAGE)
    if VIEW not in metadata.columns:
        raise ValueError(f"{cfg.metadata}: no {VIEW!r} column (NIH's Data_Entry CSV has one)")
    names = sorted(name for name in paths if name in metadata.index)
    rows = []
    for name in names:
        pixels = decode_image(paths[name]).pixels
        entry = {IMAGE: name, "group": groups[name], "folder": folder_of[name],
                 PATIENT: int(metadata.at[name, PATIENT]), FINDINGS: metadata.at[name, FINDINGS],
                 "view": str(metadata.at[name, VIEW])}
        for size in cfg.sizes:
            resized = resize_gray(pixels, size)
            for measure, (function, _) in MEASURES.items():
                entry[f"{measure}_{size}"] = function(resized)
        rows.append(entry)
    return pd.DataFrame(rows)


def group_summary(films: pd.DataFrame, sizes: Sequence[int]) -> list[dict[str, Any]]:
    """Label mix and each measure's quartiles per group, largest group first."""
    out = []
    for group, rows in films.groupby("group"):
        labels = rows[FINDINGS].str.split("|")
        entry = {"group": group, "folder": rows["folder"].iloc[0], "n_films": len(rows),
                 "n_patients": int(rows[PATIENT].nunique()),
                 "no_finding": float((rows[FINDINGS] == NO_FINDING).mean()),
                 "pneumonia": float(labels.map(lambda found: "Pneumonia" in found).mean()),
                 "ap": float((rows["view"] == "AP").mean())}
        for column in _measure_columns(sizes):
            q1, median, q3 = np.quantile(rows[column], [0.25, 0.5, 0.75])
            entry[column] = {"median": float(median), "q1": float(q1), "q3": float(q3)}
        out.append(entry)
    return sorted(out, key=lambda entry: -entry["n_films"])


def _measure_columns(sizes: Sequence[int]) -> list[str]:
    return [f"{measure}_{size}" for measure in MEASURES for size in sizes]


def _signed(films: pd.DataFrame, column: str) -> np.ndarray:
    """The measure with its sign turned where low values are the signature's."""
    low_is_signature = MEASURES[column.rsplit("_", 1)[0]][1]
    return -films[column].to_numpy() if low_is_signature else films[column].to_numpy()


def bootstrapped_auroc(positive: np.ndarray, score: np.ndarray, patients: np.ndarray,
                       n_boot: int, seed: int) -> dict[str, Any]:
    """AUROC of ``score`` for ``positive`` with a patient-bootstrap interval (None without
    both kinds of film)."""
    y = positive.astype(np.int64)
    if y.min(initial=1) == y.max(initial=0):
        return interval(None, np.zeros(0), reason="needs films of both kinds")
    counts, inverse = bootstrap_counts(patients, n_boot, np.random.default_rng(seed))
    samples = []
    for row in counts:
        rows = resample_indices(row, inverse)
        samples.append(auroc(y[rows], score[rows]) if 0 < y[rows].sum() < rows.size else np.nan)
    return interval(float(auroc(y, score)), np.array(samples))


def signature_for_no_finding(films: pd.DataFrame, sizes: Sequence[int], seed: int) -> dict[str, Any]:
    """Within each folder, the AUROC of each signed measure for No Finding."""
    return {folder: {column: bootstrapped_auroc((rows[FINDINGS] == NO_FINDING).to_numpy(),
                                                _signed(rows, column), rows[PATIENT].to_numpy(),
                                                N_BOOT, seed)
                     for column in _measure_columns(sizes)}
            for folder, rows in films.groupby("folder")}


def normal_copies_against_reference(films: pd.DataFrame, reference: str, size: int,
                                    seed: int) -> list[dict[str, Any]]:
    """Each other group's normal films against the reference folder's normal films of the
    same view, by each signed measure at ``size``."""
    normal = films[films[FINDINGS] == NO_FINDING]
    out = []
    for group, rows in normal.groupby("group"):
        if group == reference:
            continue
        for view in ("PA", "AP"):
            mine = rows[rows["view"] == view]
            theirs = normal[(normal["group"] == reference) & (normal["view"] == view)]
            if len(mine) < 10 or len(theirs) < 10:
                continue
            both = pd.concat([mine, theirs])
            positive = (both["group"] == group).to_numpy()
            out.append({"group": group, "view": view, "n_group": len(mine), "n_reference": len(theirs),
                        **{measure: bootstrapped_auroc(positive, _signed(both, f"{measure}_{size}"),
                                                       both[PATIENT].to_numpy(), N_BOOT, seed)
                           for measure in MEASURES}})
    return out


def normal_films_by_group(films: pd.DataFrame, predictions: Path) -> list[dict[str, Any]]:
    """Per group holding No-Finding films with predictions: the mean over the 14
    pathologies of the AUROC of each pathology's films (every group) against the group's
    No-Finding films."""
    scored = read_predictions(predictions)
    frame = films.set_index(IMAGE)
    keep = [i for i, name in enumerate(scored.images) if name in frame.index]
    names = [scored.images[i] for i in keep]
    probs = scored.probs[keep]
    y_true = labels_of(frame.loc[names].reset_index())
    groups = frame.loc[names, "group"].to_numpy()
    normal = y_true[:, LABELS.index(NO_FINDING)] == 1
    out = []
    for group in sorted(set(groups[normal].tolist())):
        negative = normal & (groups == group)
        per_class = []
        for name in PATHOLOGIES:
            if name not in scored.labels:
                continue
            column = scored.labels.index(name)
            value = auroc_against(y_true[:, LABELS.index(name)] == 1, negative, probs[:, column])
            if value is not None:
                per_class.append(value)
        out.append({"group": group, "n_no_finding": int(negative.sum()),
                    "n_abnormal": int((~normal).sum()),
                    "against_these_normal_films": float(np.mean(per_class)) if per_class else None})
    return out


def audit(cfg: AuditConfig) -> dict[str, Any]:
    films = film_table(cfg)
    if films.empty:
        raise ValueError("no film of the folders is listed in the metadata")
    report: dict[str, Any] = {
        "data": {"metadata": cfg.metadata.name, "folders": [f.name for f in cfg.folders],
                 "copies": cfg.copies.name if cfg.copies else None, "n_films": len(films),
                 "sizes": list(cfg.sizes)},
        "groups": group_summary(films, cfg.sizes),
        "signature_for_no_finding": signature_for_no_finding(films, cfg.sizes, cfg.seed),
        "normal_films_against_reference": {
            "reference": cfg.folders[0].name, "size": cfg.sizes[-1],
            "groups": normal_copies_against_reference(films, cfg.folders[0].name, cfg.sizes[-1], cfg.seed)},
    }
    if cfg.predictions is not None:
        report["data"]["predictions"] = cfg.predictions.name
        report["normal_films_by_group"] = normal_films_by_group(films, cfg.predictions)
    cfg.out.mkdir(parents=True, exist_ok=True)
    (cfg.out / "audit.json").write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    (cfg.out / "audit.md").write_text(render_markdown(report))
    return report


def _figure(entry: dict[str, Any]) -> str:
    if entry["value"] is None:
        return "—"
    if entry["ci_low"] is None:
        return f"{entry['value']:.3f}"
    return f"{entry['value']:.3f} ({entry['ci_low']:.3f}–{entry['ci_high']:.3f})"


def render_markdown(report: dict[str, Any]) -> str:
    columns = _measure_columns(report["data"]["sizes"])
    heads = [column.replace("_", " at ") + " px" for column in columns]
    lines = ["# Pixel signature of the films' sources", "",
             f"{report['data']['n_films']} films of {', '.join(report['data']['folders'])}; "
             f"metadata {report['data']['metadata']}. Sharpness: mean absolute Laplacian over "
             "the film's standard deviation; brightness: mean grey level in [0, 1]; median "
             "(quartiles) at each size.", "",
             "| group | folder | films | patients | No Finding | Pneumonia | AP | " + " | ".join(heads) + " |",
             "|---|---|---|---|---|---|---|" + "---|" * len(columns)]
    for g in report["groups"]:
        measured = " | ".join(f"{g[c]['median']:.3f} ({g[c]['q1']:.3f}–{g[c]['q3']:.3f})" for c in columns)
        lines.append(f"| {g['group']} | {g['folder']} | {g['n_films']} | {g['n_patients']} | "
                     f"{g['no_finding']:.0%} | {g['pneumonia']:.0%} | {g['ap']:.0%} | {measured} |")
    lines += ["", "Within each folder, AUROC for No Finding of low sharpness and of high "
              "brightness (0.5: none), 95% patient-bootstrap interval:", "",
              "| folder | " + " | ".join(heads) + " |", "|---|" + "---|" * len(columns)]
    for folder, by_column in report["signature_for_no_finding"].items():
        lines.append(f"| {folder} | " + " | ".join(_figure(by_column[c]) for c in columns) + " |")
    against = report["normal_films_against_reference"]
    lines += ["", f"Normal films of each group against the normal films of {against['reference']} "
              f"of the same view, at {against['size']} px: AUROC of low sharpness and of high "
              "brightness for the group (0.5: no signature):", "",
              "| group | view | normal films | reference's | sharpness | brightness |",
              "|---|---|---|---|---|---|"]
    for g in against["groups"]:
        lines.append(f"| {g['group']} | {g['view']} | {g['n_group']} | {g['n_reference']} | "
                     f"{_figure(g['sharpness'])} | {_figure(g['brightness'])} |")
    if "normal_films_by_group" in report:
        lines += ["", f"Predictions {report['data']['predictions']}: each pathology's films (all "
                  "groups) against one group's No-Finding films, mean AUROC over the 14:", "",
                  "| No-Finding films of | films | mean AUROC against them |", "|---|---|---|"]
        for g in report["normal_films_by_group"]:
            value = g["against_these_normal_films"]
            lines.append(f"| {g['group']} | {g['n_no_finding']} | "
                         f"{'—' if value is None else f'{value:.3f}'} |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.source_audit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--metadata", type=Path, required=True, help="NIH Data_Entry CSV")
    parser.add_argument("--folders", type=Path, nargs="+", required=True, metavar="DIR",
                        help="image folders, each a group unless --copies names a film's copy")
    parser.add_argument("--copies", type=Path, help="CSV: Image Index, source_repository, source_path")
    parser.add_argument("--predictions", type=Path, help="out-of-fold predictions CSV of a recipe")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 160], metavar="PX")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = AuditConfig(metadata=args.metadata, folders=tuple(args.folders), out=args.out,
                      copies=args.copies, predictions=args.predictions, sizes=tuple(args.sizes),
                      seed=args.seed)
    report = audit(cfg)
    print(render_markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
