"""Write the app's example radiographs: ``python -m training.examples``.

    python -m training.examples --images DIR [DIR ...] --splits SPLITS \\
        --names 00000075_000.png ... [--metadata CSV] --out examples

Copies the named NIH radiographs into ``--out`` (as 8-bit grey PNGs of at most 512 px)
with a ``README.md`` that gives each one's NIH labels and the NIH attribution. Only images
of the **test** split are accepted: a clicked example is then a radiograph of a patient
the bundled model never saw, and its output is as honest as any other.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from training.data.images import find_images
from training.data.metadata import FINDINGS, IMAGE, MetadataError
from training.data.splits import read_splits

MAX_SIDE = 512
ATTRIBUTION = (
    "NIH ChestX-ray14 radiographs, provided by the NIH Clinical Center "
    "(https://nihcc.app.box.com/v/ChestXray-NIHCC); cite Wang et al., \"ChestX-ray8: "
    "Hospital-scale Chest X-ray Database and Benchmarks\", CVPR 2017."
)


def write_examples(images: Sequence[Path], splits: Path, names: Sequence[str], out: Path) -> list[Path]:
    """Copy ``names`` (test-split images) into ``out`` with a README; returns the files."""
    test = read_splits(splits).test.set_index(IMAGE)
    outside = [name for name in names if name not in test.index]
    if outside:
        raise MetadataError(f"{outside[0]} is not in the test split of {splits.name}: examples "
                            "must be radiographs of patients the model never saw")
    found = find_images(images)
    out.mkdir(parents=True, exist_ok=True)
    written, lines = [], ["# Example radiographs", "", ATTRIBUTION, "",
                          "Written by `python -m training.examples`; each is from the test "
                          "split of the bundled model (patients it never saw).", "",
                          "| file | NIH labels |", "|---|---|"]
    for name in names:
        if name not in found:
            raise MetadataError(f"{name}: not found under the image folders")
        image = Image.open(found[name]).convert("L")
        image.thumbnail((MAX_SIDE, MAX_SIDE))
        target = out / name
        image.save(target, optimize=True)
        written.append(target)
        lines.append(f"| {name} | {test.loc[name, FINDINGS].replace('|', ', ')} |")
    (out / "README.md").write_text("\n".join(lines) + "\n")
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.examples",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--images", required=True, type=Path, nargs="+", metavar="DIR")
    parser.add_argument("--splits", required=True, type=Path,
                        help="folder with train.csv/val.csv/test.csv of the bundled model")
    parser.add_argument("--names", required=True, nargs="+", help="image names (test split)")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    try:
        written = write_examples(args.images, args.splits, args.names, args.out)
    except (MetadataError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    size = sum(path.stat().st_size for path in written)
    print(f"wrote {len(written)} examples ({size / 1e6:.2f} MB) and README.md to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
