"""Fit the input gate's view head into a checkpoint and measure it on held-out images.

One command, rerun whenever the bundled model changes (its features change with it)::

    python -m training.fit_gate --checkpoint DIR --images NIH_DIR [NIH_DIR ...] \\
        --metadata Data_Entry_2017_v2020.csv.gz --ood-dir ../shared/data/ood [--seed 0] \\
        [--held-out-fraction 0.4] [--max-nih-fit N] [--max-nih-held-out N] [--device cpu] \\
        [--report FILE.json]

Steps (:func:`fit_gate`):

1. **Images and groups.**  NIH frontal films from ``--images`` (patients from
   ``--metadata``) and, from ``--ood-dir``, ``lateral/``, ``ct/`` and ``frontal/`` (frontal
   films from other hospitals) with ``sources.csv``.  Every image belongs to a group: an
   NIH patient, or an OOD source (the case, paper or collection of ``sources.csv``'s
   ``source`` URL), so that one patient's or one figure's images never sit on both sides
   of a split.
2. **Held-out split** (:func:`~training.gating.items.split_groups`):
   ``--held-out-fraction`` of the groups of each kind (NIH frontal, other frontal,
   lateral, CT), seeded.  Held-out images are only ever scored, at the end.
3. **Fit set** (:func:`~training.gating.features.build_fit_set`): the fit images as given,
   plus augmented variants (:func:`~training.gating.synthetic.augment`: crops, rotations,
   mirror images, gamma and contrast, blur, JPEG re-compression, borders, arrows and text,
   as journal figures have them) and generated "other" images
   (:func:`~training.gating.synthetic.other_images`: rendered document pages, photographs
   and an MR slice shipped with matplotlib and scikit-learn, synthetic scenes), all
   through the app's own preprocessing.  Classes: ``frontal`` (NIH and other hospitals),
   ``lateral``, ``ct``, ``other``.
4. **Levels from out-of-fold scores** (:func:`~training.gating.view_head.choose_levels`): a
   grouped K-fold over the fit set gives each fit image (as given) a view score from a
   head that never saw its group.  ``warn`` is the higher of the 98th percentile of the
   NIH frontal films' scores and the 90th percentile of the other hospitals' frontal
   films' scores; ``refuse`` the higher of ``warn`` and the highest score of any fit
   frontal film, so that no frontal film of the fit set would have been refused out of
   fold.
5. **The head** (:func:`~training.gating.view_head.fit_head`): multinomial logistic
   regression on standardised features (``--c``, classes balanced), fitted on the whole
   fit set, written into the checkpoint (``ood.view.*`` tensors, ``config.json``'s
   ``gate`` entry).
6. **Held-out figures** (:func:`~training.gating.figures.held_out_figures`): per kind, the
   count, AUROC of the view score against the held-out NIH frontal films, and the share
   flagged (warned or refused) and refused, by the view check alone and by the whole gate
   (view + feature distance, as the app applies them).  Stored in the ``gate`` entry,
   rendered by :mod:`training.model_card`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.fitting.provenance import public_name
from training.gating.checkpoint import rewrite_checkpoint
from training.gating.features import build_fit_set, build_held_out_set
from training.gating.figures import held_out_figures
from training.gating.items import (
    CLASSES,
    held_out_items,
    limit_nih,
    nih_items,
    ood_items,
    split_groups,
)
from training.gating.view_head import (
    LEVEL_RULE,
    choose_levels,
    fit_head,
    out_of_fold_scores,
    view_scores,
)
from xray_app.gate import METHOD, N_STATISTICS, ViewGate
from xray_app.model import CheckpointError, LoadedCheckpoint, git_commit, load_checkpoint, utc_now
from xray_app.ood import OodGate
from xray_app.preprocess import ImageInputError


@dataclass(frozen=True)
class GateFitConfig:
    """Everything :func:`fit_gate` needs; written into the ``gate`` entry as ``fit_config``."""

    checkpoint: Path
    images: tuple[Path, ...]
    metadata: Path
    ood_dir: Path
    held_out_fraction: float = 0.4
    max_nih_fit: int | None = None  # subsample the fit NIH films (time), None = all
    max_nih_held_out: int | None = None  # subsample the held-out NIH films, None = all
    augment_copies: int = 6  # augmented variants per fit image from --ood-dir
    nih_augment_share: float = 0.25  # share of fit NIH films that also get one variant
    n_other: int = 160  # generated "other" images
    folds: int = 5
    c: float = 0.05  # inverse L2 strength of the logistic regression
    batch_size: int = 16
    device: str = "cpu"
    seed: int = 0


def fit_gate(cfg: GateFitConfig) -> dict[str, Any]:
    """Fit, choose levels, measure on held-out images and write the gate into the checkpoint.

    Returns the ``gate`` entry written to ``config.json``.
    """
    rng = np.random.default_rng(cfg.seed)
    checkpoint = load_checkpoint(cfg.checkpoint, device=cfg.device)
    items = nih_items(cfg.images, cfg.metadata) + ood_items(cfg.ood_dir)
    fit_items, _ = split_groups(items, cfg.held_out_fraction, cfg.seed)
    fit_items = limit_nih(fit_items, cfg.max_nih_fit, rng)
    held_items = held_out_items(items, cfg.held_out_fraction, cfg.seed, cfg.max_nih_held_out)
    _progress(f"fit images {dict(Counter(i.kind for i in fit_items))}, held out "
              f"{dict(Counter(i.kind for i in held_items))}")
    fit_set = build_fit_set(checkpoint, fit_items, rng, augment_copies=cfg.augment_copies,
                            nih_augment_share=cfg.nih_augment_share, n_other=cfg.n_other,
                            batch_size=cfg.batch_size)
    _progress(f"fit set: {len(fit_set.kinds)} images with variants; out-of-fold scores")
    oof = out_of_fold_scores(fit_set, folds=cfg.folds, c=cfg.c, seed=cfg.seed)
    as_given = ~fit_set.augmented
    kinds = np.array(fit_set.kinds)
    warn, refuse = choose_levels(oof[as_given & (kinds == "nih_frontal")],
                                 oof[as_given & (kinds == "other_frontal")])
    tensors = fit_head(fit_set.features, fit_set.labels, cfg.c, cfg.seed)
    _progress("held-out images")
    held_set = build_held_out_set(checkpoint, held_items, batch_size=cfg.batch_size)
    ood = OodGate.from_checkpoint(checkpoint)
    held_scores = view_scores(tensors, held_set.features)
    fit_figures = held_out_figures(fit_set.subset(as_given), oof[as_given], warn, refuse, ood)
    entry = {
        "method": METHOD,
        "classes": list(CLASSES),
        "features": f"penultimate features of the image as given (2048) + {N_STATISTICS} image "
        "statistics (xray_app.gate.image_statistics), standardised; multinomial logistic "
        "regression, classes balanced",
        "score": "1 - p(frontal)",
        "warn": warn,
        "refuse": refuse,
        "levels": LEVEL_RULE,
        "held_out": held_out_figures(held_set, held_scores, warn, refuse, ood),
        "fit_out_of_fold": fit_figures,
        "fit_images": dict(Counter(i.kind for i in fit_items)),
        "fit_with_variants": dict(Counter(fit_set.kinds)),
        "split": f"by group (NIH patient; OOD source case/paper/collection), "
        f"{cfg.held_out_fraction:.0%} of each kind's groups held out, seed {cfg.seed}",
        "held_out_groups": sorted({i.group for i in held_items if not i.group.startswith("patient:")}),
        # files and folders by name: config.json records no machine-local path
        "fit_config": {k: public_name(str(v)) if isinstance(v, Path) else v
                       for k, v in asdict(cfg).items() if k not in ("checkpoint", "images")},
        "commit": git_commit(),
        "date": utc_now(),
    }
    entry["fit_config"]["images"] = [Path(p).name for p in cfg.images]
    write_gate(checkpoint, tensors, entry)
    return entry


def write_gate(checkpoint: LoadedCheckpoint, tensors: dict[str, torch.Tensor], entry: dict[str, Any]) -> Path:
    """Rewrite the checkpoint with the view head: ``ood.view.*`` tensors + the ``gate`` entry.

    The weights keep their stored dtype and every other ``ood.*`` tensor is kept; the
    gate is read back through the app's loader before returning.
    """
    extra = {**checkpoint.extra_tensors, **tensors}
    reloaded = rewrite_checkpoint(checkpoint, checkpoint.config.with_updates(gate=entry), extra)
    if ViewGate.from_checkpoint(reloaded) is None:
        raise RuntimeError(f"{checkpoint.directory}: the gate entry was not written")
    return checkpoint.directory


def _progress(message: str) -> None:
    print(f"[gate] {message}", file=sys.stderr, flush=True)


def summary_lines(entry: dict[str, Any]) -> list[str]:
    """Readable held-out figures, one line per kind."""
    lines = [f"levels: warn {entry['warn']:.3f}, refuse {entry['refuse']:.3f}"]
    for kind, fig in entry["held_out"].items():
        auc = fig["auroc_vs_nih_frontal"]
        lines.append(
            f"held out {kind:<14} n={fig['n']:>4}  flagged {fig['gate_flagged']:>4} "
            f"({fig['gate_flagged_share']:.1%}), refused {fig['gate_refused']:>4}"
            + ("" if auc is None else f", AUROC {auc:.3f}")
        )
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.fit_gate",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint directory (rewritten)")
    parser.add_argument("--images", required=True, type=Path, nargs="+",
                        help="folders of NIH frontal films (searched recursively)")
    parser.add_argument("--metadata", required=True, type=Path, help="Data_Entry_2017*.csv[.gz]")
    parser.add_argument("--ood-dir", required=True, type=Path,
                        help="folder with lateral/, ct/, frontal/ and sources.csv")
    defaults = GateFitConfig(Path(), (), Path(), Path())
    parser.add_argument("--held-out-fraction", type=float, default=defaults.held_out_fraction)
    parser.add_argument("--max-nih-fit", type=int, default=None,
                        help="use at most N of the fit NIH films (the full NIH set is large)")
    parser.add_argument("--max-nih-held-out", type=int, default=None,
                        help="score at most N of the held-out NIH films")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--augment-copies", type=int, default=defaults.augment_copies)
    parser.add_argument("--n-other", type=int, default=defaults.n_other)
    parser.add_argument("--folds", type=int, default=defaults.folds)
    parser.add_argument("--c", type=float, default=defaults.c)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--report", type=Path, help="also write the gate entry as JSON here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = GateFitConfig(
        checkpoint=args.checkpoint, images=tuple(args.images), metadata=args.metadata,
        ood_dir=args.ood_dir, held_out_fraction=args.held_out_fraction,
        max_nih_fit=args.max_nih_fit, max_nih_held_out=args.max_nih_held_out,
        augment_copies=args.augment_copies, n_other=args.n_other, folds=args.folds, c=args.c,
        batch_size=args.batch_size, device=args.device, seed=args.seed,
    )
    from training.data.metadata import MetadataError

    try:
        entry = fit_gate(cfg)
    except (MetadataError, ImageInputError, CheckpointError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    text = json.dumps(entry, indent=2)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(text + "\n")
    print("\n".join(summary_lines(entry)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
