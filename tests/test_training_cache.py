"""python -m training.cache: cache build, corrupt/missing report, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from training import cache as cache_stage
from training.data.image_cache import OK, PIXELS_FILE, STATUS_FILE, ImageCache, to_uint8
from xray_app.preprocess import decode_image, resize_gray

IMAGES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nih" / "images"


def _folder_with_corrupt_image(tmp_path: Path, count: int) -> tuple[Path, Path, list[str]]:
    names = sorted(p.name for p in IMAGES.glob("*.png"))[:count]
    folder = tmp_path / "images_001" / "images"
    folder.mkdir(parents=True)
    for name in names:
        (folder / name).symlink_to(IMAGES / name)
    good = (IMAGES / names[0]).read_bytes()
    (folder / "99999999_000.png").write_bytes(good[: len(good) // 3])  # truncated PNG
    metadata = tmp_path / "meta.csv"
    rows = [*names, "99999999_000.png", "99999998_000.png"]  # the last one is not on disk
    pd.DataFrame({"Image Index": rows, "Finding Labels": "No Finding",
                  "Patient ID": range(1, len(rows) + 1)}).to_csv(metadata, index=False)
    return tmp_path, metadata, names


def test_cache_holds_app_decoded_pixels_and_reports_corrupt_and_missing(tmp_path, capsys):
    root, metadata, names = _folder_with_corrupt_image(tmp_path, 6)
    out = tmp_path / "cache"
    code = cache_stage.main(["--images", str(root), "--metadata", str(metadata), "--out", str(out),
                         "--size", "128", "--workers", "2", "--chunk", "2", "--no-progress"])
    assert code == 0, f"expected a corrupt and a missing image not to be fatal, got exit {code}"
    report = json.loads((out / "report.json").read_text())
    assert (report["ok"], report["corrupt"], report["missing"]) == (6, 1, 1), f"unexpected report {report}"
    assert "99999999_000.png" in report["corrupt_images"][0]["error"], "expected the corrupt file named"
    cache = ImageCache(out)
    assert cache.available_names() == set(names), "expected only the decodable images available"
    expected = to_uint8(resize_gray(decode_image(IMAGES / names[2]).pixels, 128))
    assert np.array_equal(cache.read(cache.row_of[names[2]]), expected), "expected the app's decode, resized"
    assert "1 corrupt" in capsys.readouterr().out, "expected the corrupt count printed"


def test_interrupted_build_resumes_only_unfinished_rows(tmp_path):
    root, metadata, names = _folder_with_corrupt_image(tmp_path, 4)
    out = tmp_path / "cache"
    cache_stage.build_cache(root, out, size=64, metadata=metadata, workers=1, progress=False)
    before = ImageCache(out).read(1).copy()
    # simulate a kill after row 0: rows 1.. never written
    status = np.memmap(out / STATUS_FILE, dtype=np.uint8, mode="r+")
    status[1:] = 0
    status.flush()
    pixels = np.memmap(out / PIXELS_FILE, dtype=np.uint8, mode="r+", shape=(5, 64, 64))
    pixels[1:] = 0
    pixels[0] = 7  # a finished row must not be decoded again
    pixels.flush()
    report = cache_stage.build_cache(root, out, size=64, metadata=metadata, workers=1, progress=False)
    cache = ImageCache(out)
    assert (report["ok"], report["corrupt"]) == (4, 1), f"expected 4 rows done, 1 corrupt, got {report}"
    assert (cache.status() == OK).sum() == 4, "expected 4 rows marked done"
    assert np.array_equal(cache.read(1), before), "expected the unfinished row decoded on resume"
    assert (cache.read(0) == 7).all(), "expected a finished row left untouched on resume"
