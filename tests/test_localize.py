"""Localisation metrics on hand-made maps and boxes, and the CLI on the real boxed radiographs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from training import crossval, localize
from training.localize import Box, box_mask, iobb, pointing_hit
from xray_app.model import write_random_init

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nih"


def _box(x: float, y: float, w: float, h: float) -> Box:
    return Box("a.png", "Mass", x, y, w, h)


def test_box_mask_uses_pixel_centres() -> None:
    mask = box_mask(_box(4, 2, 4, 4), (10, 10))
    rows, cols = np.nonzero(mask)
    assert sorted(set(rows)) == [2, 3, 4, 5], "rows with centres 2.5..5.5 lie in y in [2, 6]"
    assert sorted(set(cols)) == [4, 5, 6, 7], "cols with centres 4.5..7.5 lie in x in [4, 8]"
    assert mask.sum() == 16, f"a 4 x 4 box covers 16 pixels, got {mask.sum()}"


def test_pointing_game() -> None:
    heatmap = np.zeros((10, 10), dtype=np.float32)
    heatmap[3, 5] = 1.0  # row 3, column 5
    assert pointing_hit(heatmap, _box(4, 2, 4, 4)), "peak at (x 5, y 3) is inside x 4-8, y 2-6"
    assert not pointing_hit(heatmap, _box(0, 5, 4, 4)), "peak outside the box is a miss"
    heatmap[8, 8] = 1.0  # a tie: the first maximum in row-major order counts
    assert pointing_hit(heatmap, _box(4, 2, 4, 4)), "ties resolve to the first maximum"
    assert not pointing_hit(np.zeros((10, 10)), _box(0, 0, 10, 10)), "a blank map points nowhere"


def test_iobb_hand_computed() -> None:
    heatmap = np.full((10, 10), 0.4, dtype=np.float32)  # below half the peak: not highlighted
    heatmap[2:6, 2:6] = 1.0  # highlighted: 16 pixels, rows 2-5, cols 2-5
    box = _box(4, 2, 4, 4)  # rows 2-5, cols 4-7: overlap cols 4-5 = 8 pixels
    assert iobb(heatmap, box) == pytest.approx(8 / 16), "8 of 16 highlighted pixels in the box"
    assert iobb(heatmap, box, threshold=0.3) == pytest.approx(16 / 100), (
        "at 0.3 x max everything is highlighted: 16 box pixels of 100"
    )
    assert iobb(heatmap, _box(0, 0, 10, 10)) == 1.0, "a box over the whole image contains it all"
    assert iobb(np.zeros((10, 10)), box) == 0.0, "a blank map localises nothing"
    score = localize.score_box(heatmap, box)
    assert (score.hit_01, score.hit_05, score.pointing) == (1.0, 1.0, 0.0), (
        f"IoBB 0.5 hits at both levels; first max (2, 2) lies left of the box: {score}"
    )


def test_baseline_maps() -> None:
    centre = localize.centre_map(64)
    row, col = np.unravel_index(np.argmax(centre), centre.shape)
    assert (row, col) in {(31, 31), (31, 32), (32, 31), (32, 32)}, "peak at the image centre"
    corner = np.exp(-0.5 * 2 * (31.5 / 16) ** 2)  # pixel centre 31.5 px off-centre, sigma 16
    assert centre[0, 0] == pytest.approx(corner, rel=1e-5), f"Gaussian with sigma = side / 4: {centre[0, 0]}"
    a = localize.random_map(np.random.default_rng(5), 7, 64)
    b = localize.random_map(np.random.default_rng(5), 7, 64)
    assert a.shape == (64, 64) and np.array_equal(a, b), "seeded draws repeat exactly"


def test_to_box_space_keeps_the_peak_position() -> None:
    small = np.zeros((7, 7), dtype=np.float32)
    small[0, 6] = 1.0  # top-right cell
    big = localize.to_box_space(small, 1024)
    row, col = np.unravel_index(np.argmax(big), big.shape)
    assert row < 1024 / 7 and col > 1024 * 6 / 7, f"peak stays in the top-right cell: {(row, col)}"


def test_read_the_real_box_list() -> None:
    boxes = localize.read_boxes(DATA / "BBox_List_2017.csv")
    assert len(boxes) == 984, f"NIH lists 984 boxes, read {len(boxes)}"
    labels = {b.label for b in boxes}
    assert "Infiltration" in labels and "Infiltrate" not in labels, "BBox 'Infiltrate' is mapped"
    assert len(labels) == 8, f"8 boxed pathologies, got {sorted(labels)}"


def test_read_boxes_rejects_unknown_finding(tmp_path: Path) -> None:
    path = tmp_path / "boxes.csv"
    path.write_text("Image Index,Finding Label,Bbox [x,y,w,h]\na.png,Tumour,1,2,3,4\n")
    with pytest.raises(localize.BoxFileError, match="line 2: unknown finding 'Tumour'"):
        localize.read_boxes(path)


def test_cli_on_the_shared_boxed_radiographs(tmp_path: Path, capsys) -> None:
    checkpoint = write_random_init(tmp_path / "ckpt", input_size=64)
    out = tmp_path / "loc"
    code = localize.main([
        "--checkpoint", str(checkpoint), "--images", str(DATA / "images"),
        "--bboxes", str(DATA / "BBox_List_2017.csv"), "--out", str(out), "--random-draws", "3",
    ])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "loc.json").read_text())
    meta, table = report, report["per_class"]
    assert (meta["boxes"], meta["images"]) == (9, 9), f"9 boxes on 9 shared images: {meta}"
    assert table["all"]["boxes"] == 9 and sum(
        row["boxes"] for name, row in table.items() if name != "all") == 9, "classes add up"
    assert set(meta["absent_classes"]) == {"Effusion", "Pneumothorax"}, meta["absent_classes"]
    # both Cardiomegaly boxes cover the image centre (x 329-785 / 169-831, y 399-782 / 406-824)
    assert table["Cardiomegaly"]["pointing_centre"] == 1.0, table["Cardiomegaly"]
    for name, row in table.items():
        rates = {k: v for k, v in row.items() if k not in ("boxes", "images")}
        assert len(rates) == 12 and all(0.0 <= v <= 1.0 for v in rates.values()), f"{name}: {row}"
    text = (out / "loc.md").read_text()
    assert "9 boxes on 9 images" in text and "| Cardiomegaly | 2 (2) |" in text, text
    assert "UNTRAINED" in text, "a random-init checkpoint is flagged in the report"
    written = (out / "loc.json").read_text()
    assert report["images_dirs"] == ["images"] and str(DATA) not in written, (
        f"expected image folders by name, no machine-local path: {report['images_dirs']}")


def test_out_of_fold_maps_each_boxed_image_with_the_fold_that_held_its_patient_out(tmp_path: Path, capsys) -> None:
    boxed = sorted({box.image for box in localize.read_boxes(DATA / "BBox_List_2017.csv")}
                   & {p.name for p in (DATA / "images").glob("*.png")})
    others = sorted(p.name for p in (DATA / "images").glob("*.png") if p.name not in boxed)[:15]
    folder = tmp_path / "images"
    folder.mkdir()
    for name in boxed + others:
        (folder / name).symlink_to((DATA / "images" / name).resolve())
    cv = tmp_path / "cv"
    assert crossval.main([
        "--folds", "3", "--metadata", str(DATA / "Data_Entry_2017_v2020.csv.gz"), "--images",
        str(folder), "--out", str(cv), "--input-size", "32", "--batch-size", "8", "--epochs", "1",
        "--pretrained", "none", "--architecture", "tiny-resnet", "--num-workers", "0", "--no-progress", "--val-fraction", "0.2",
        "--test-fraction", "0", "--lr", "1e-3",
    ]) == 0, "expected a tiny cross-validation over the boxed radiographs to run"
    out = tmp_path / "loc"
    code = localize.main(["--folds", str(cv), "--images", str(folder), "--bboxes",
                          str(DATA / "BBox_List_2017.csv"), "--out", str(out), "--random-draws", "2"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "loc.json").read_text())
    assert (report["boxes"], report["images"]) == (9, 9), "every boxed image is held out by one fold"
    for box in report["per_box"]:
        fold = cv / box["scored_by"]
        assert box["image"] in set(pd.read_csv(fold / "val.csv")["Image Index"]), (
            f"{box['image']} scored by {fold.name}, which did not hold it out")
        assert box["image"] not in set(pd.read_csv(fold / "train.csv")["Image Index"]), (
            f"{box['image']} scored by {fold.name}, which trained on it")
    assert sum(len(images) for images in report["out_of_fold"].values()) == 9, report["out_of_fold"]
    assert "Out of fold" in (out / "loc.md").read_text()


def test_out_of_fold_refuses_a_folder_without_finished_folds(tmp_path: Path, capsys) -> None:
    argv = ["--folds", str(tmp_path), "--images", str(DATA / "images"), "--bboxes",
            str(DATA / "BBox_List_2017.csv"), "--out", str(tmp_path / "loc")]
    assert localize.main(argv) == 2 and "no fold_K folder" in capsys.readouterr().err
    (tmp_path / "fold_1").mkdir()
    (tmp_path / "fold_1" / "val.csv").write_text("Image Index\n00000075_000.png\n")
    assert localize.main(argv) == 2, "expected an unfinished fold refused with a message"
    assert "is the fold finished?" in capsys.readouterr().err
