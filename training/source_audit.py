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
- **sharpness**: the mean absolute 4-neighbour Laplacian over the image's standard
  deviation, on the decoded film resized as the training cache and the model input are
  (:func:`xray_app.preprocess.resize_gray`) to each of ``--sizes``; median and quartiles;
- within each folder, the AUROC of *low* sharpness for No Finding (0.5: the signature
  says nothing about the label), with its patient-bootstrap interval;
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


def film_table(cfg: AuditConfig) -> pd.DataFrame:
    """One row per film found in the folders and listed in the metadata: group, folder,
    patient, labels and sharpness at each size."""
    paths = find_images(list(cfg.folders))
    folder_of = {name: folder.name for folder in cfg.folders for name in find_images([folder])}
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
                 "ap": str(metadata.at[name, VIEW]) == "AP"}
        for size in cfg.sizes:
            entry[f"sharpness_{size}"] = sharpness(resize_gray(pixels, size))
        rows.append(entry)
    return pd.DataFrame(rows)


def group_summary(films: pd.DataFrame, sizes: Sequence[int]) -> list[dict[str, Any]]:
    """Label mix and sharpness quartiles per group, largest group first."""
    out = []
    for group, rows in films.groupby("group"):
        labels = rows[FINDINGS].str.split("|")
        entry = {"group": group, "folder": rows["folder"].iloc[0], "n_films": len(rows),
                 "n_patients": int(rows[PATIENT].nunique()),
                 "no_finding": float((rows[FINDINGS] == NO_FINDING).mean()),
                 "pneumonia": float(labels.map(lambda found: "Pneumonia" in found).mean()),
                 "ap": float(rows["ap"].mean())}
        for size in sizes:
            q1, median, q3 = np.quantile(rows[f"sharpness_{size}"], [0.25, 0.5, 0.75])
            entry[f"sharpness_{size}"] = {"median": float(median), "q1": float(q1), "q3": float(q3)}
        out.append(entry)
    return sorted(out, key=lambda entry: -entry["n_films"])


def smoothness_auroc(films: pd.DataFrame, size: int, n_boot: int, seed: int) -> dict[str, Any]:
    """AUROC of low sharpness for No Finding over ``films``, with a patient-bootstrap
    interval (None where the films lack either kind)."""
    normal = (films[FINDINGS] == NO_FINDING).to_numpy().astype(np.int64)
    score = -films[f"sharpness_{size}"].to_numpy()
    if normal.min() == normal.max():
        return interval(None, np.zeros(0), reason="needs both No-Finding and other films")
    counts, inverse = bootstrap_counts(films[PATIENT].to_numpy(), n_boot, np.random.default_rng(seed))
    samples = []
    for row in counts:
        rows = resample_indices(row, inverse)
        y = normal[rows]
        samples.append(auroc(y, score[rows]) if 0 < y.sum() < y.size else np.nan)
    return interval(float(auroc(normal, score)), np.array(samples))


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
        "smoothness_auroc_for_no_finding": {
            folder: {str(size): smoothness_auroc(rows, size, N_BOOT, cfg.seed) for size in cfg.sizes}
            for folder, rows in films.groupby("folder")},
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
    sizes = report["data"]["sizes"]
    lines = ["# Pixel signature of the films' sources", "",
             f"{report['data']['n_films']} films of {', '.join(report['data']['folders'])}; "
             f"metadata {report['data']['metadata']}. Sharpness: mean absolute Laplacian over "
             "the image's standard deviation, median (quartiles), at each size.", "",
             "| group | folder | films | patients | No Finding | Pneumonia | AP | "
             + " | ".join(f"sharpness at {s} px" for s in sizes) + " |",
             "|---|---|---|---|---|---|---|" + "---|" * len(sizes)]
    for g in report["groups"]:
        sharp = " | ".join(f"{g[f'sharpness_{s}']['median']:.3f} ({g[f'sharpness_{s}']['q1']:.3f}–"
                           f"{g[f'sharpness_{s}']['q3']:.3f})" for s in sizes)
        lines.append(f"| {g['group']} | {g['folder']} | {g['n_films']} | {g['n_patients']} | "
                     f"{g['no_finding']:.0%} | {g['pneumonia']:.0%} | {g['ap']:.0%} | {sharp} |")
    lines += ["", "AUROC of low sharpness for No Finding within each folder (0.5: none), "
              "95% patient-bootstrap interval:", "",
              "| folder | " + " | ".join(f"{s} px" for s in sizes) + " |", "|---|" + "---|" * len(sizes)]
    for folder, by_size in report["smoothness_auroc_for_no_finding"].items():
        lines.append(f"| {folder} | " + " | ".join(_figure(by_size[str(s)]) for s in sizes) + " |")
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
