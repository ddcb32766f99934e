"""Split the NIH metadata by patient into train, validation and test: the pipeline's
first stage.

Command line::

    python -m training.split --metadata CSV [--images DIR [DIR ...]] [--split-lists DIR]
        [--val-fraction F] [--test-fraction F] [--seed S] --out DIR

writes ``train.csv``, ``val.csv``, ``test.csv``, ``prevalence.csv`` and ``splits.txt``
into ``DIR`` (see :mod:`training.data.splits` for the two kinds of split).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from training.data.images import find_images
from training.data.metadata import MetadataError
from training.data.splits import SplitLeakError, prepare_splits, summarise, write_report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.split", description="Write patient-wise splits and prevalence."
    )
    parser.add_argument("--metadata", required=True, type=Path, help="Data_Entry_2017*.csv[.gz]")
    parser.add_argument("--images", type=Path, nargs="+", metavar="DIR",
                        help="image folders (searched recursively); when given, rows without "
                        "an image are left out")
    parser.add_argument("--split-lists", type=Path, help="directory of split list files")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--test-fraction", type=float, default=0.2,
                        help="used by the patient-random split only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    try:
        names = find_images(args.images) if args.images else None
        splits, availability = prepare_splits(
            args.metadata,
            image_names=names,
            split_lists=args.split_lists,
            val_fraction=args.val_fraction,
            test_fraction=args.test_fraction,
            seed=args.seed,
        )
    except (MetadataError, SplitLeakError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    table = write_report(splits, availability, args.out)
    print(summarise(splits, availability))
    with pd.option_context("display.width", 160, "display.max_columns", 12):
        print(table)
    print(f"wrote train.csv, val.csv, test.csv, prevalence.csv to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
