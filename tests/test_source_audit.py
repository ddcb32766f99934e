"""training.source_audit: a copy's pixel signature and how a network treats its normal films."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from training.data.metadata import FINDINGS, IMAGE, read_metadata
from training.source_audit import main, sharpness
from xray_app.labels import LABELS, NO_FINDING
from xray_app.preprocess import decode_image

from .paths import NIH_IMAGES, SHARED_DATA

METADATA = SHARED_DATA / "nih" / "Data_Entry_2017_v2020.csv.gz"


def test_sharpness_falls_with_blur_and_ignores_contrast():
    film = (decode_image(sorted(NIH_IMAGES.glob("*.png"))[0]).pixels * 255).astype(np.float64)
    assert sharpness(cv2.GaussianBlur(film, (0, 0), 1.0)) < 0.8 * sharpness(film), "expected blur to lower it"
    assert sharpness(0.5 * film + 20) == pytest.approx(sharpness(film)), "expected contrast not to matter"
    assert sharpness(np.full((32, 32), 7.0)) == 0.0, "expected a flat image to have none"


@pytest.fixture(scope="module")
def copied_films(tmp_path_factory) -> tuple[Path, Path, list[str], list[str]]:
    """A folder of 8 No-Finding films, blurred as one repository's copy would be, beside 8
    films with a pathology as they are; a copies CSV naming the blurred ones."""
    folder = tmp_path_factory.mktemp("copies") / "extra"
    folder.mkdir()
    metadata = read_metadata(METADATA).set_index(IMAGE)
    names = sorted(p.name for p in NIH_IMAGES.glob("*.png"))
    normal = [n for n in names if metadata.at[n, FINDINGS] == NO_FINDING][:8]
    abnormal = [n for n in names if metadata.at[n, FINDINGS] != NO_FINDING][:8]
    for name in normal + abnormal:
        film = (decode_image(NIH_IMAGES / name).pixels * 255).astype(np.uint8)
        if name in normal:
            film = cv2.GaussianBlur(film, (0, 0), 4.0)
        cv2.imwrite(str(folder / name), film)
    copies = folder.parent / "sources.csv"
    pd.DataFrame({IMAGE: normal, "source_repository": "someone/covid",
                  "source_path": [f"data/No_findings/{n}" for n in normal]}).to_csv(copies, index=False)
    return folder, copies, normal, abnormal


def test_audit_finds_a_blurred_copy_and_names_its_group(copied_films, tmp_path):
    folder, copies, normal, abnormal = copied_films
    assert main(["--metadata", str(METADATA), "--folders", str(folder), "--copies", str(copies),
                 "--out", str(tmp_path), "--sizes", "128"]) == 0
    report = json.loads((tmp_path / "audit.json").read_text())
    groups = {g["group"]: g for g in report["groups"]}
    assert set(groups) == {"someone/covid:No_findings", "extra"}, f"unexpected groups {set(groups)}"
    assert groups["someone/covid:No_findings"]["no_finding"] == 1.0 and groups["extra"]["no_finding"] == 0.0
    assert (groups["someone/covid:No_findings"]["sharpness_128"]["q3"]
            < groups["extra"]["sharpness_128"]["q1"]), "expected the blurred copy less sharp"
    assert report["signature_for_no_finding"]["extra"]["sharpness_128"]["value"] == 1.0, (
        "expected low sharpness to pick out every No-Finding film of the blurred copy")


def test_normal_films_by_group_shows_which_normals_a_network_tells_apart(copied_films, tmp_path):
    """Predictions that score the abnormal films between two groups' normal films: the
    group scored below them is told apart perfectly (1.0), the one above not at all (0.0)."""
    folder, copies, normal, abnormal = copied_films
    other = tmp_path / "images"
    other.mkdir()
    metadata = read_metadata(METADATA).set_index(IMAGE)
    plain_normal = [n for n in sorted(p.name for p in NIH_IMAGES.glob("*.png"))
                    if metadata.at[n, FINDINGS] == NO_FINDING][8:12]
    for name in plain_normal:
        (other / name).symlink_to(NIH_IMAGES / name)
    score = {**{n: 0.1 for n in normal}, **{n: 0.5 for n in abnormal}, **{n: 0.9 for n in plain_normal}}
    predictions = pd.DataFrame({IMAGE: list(score)})
    for label in LABELS:
        predictions[f"prob_{label}"] = list(score.values())
    predictions.to_csv(tmp_path / "oof.csv", index=False)
    main(["--metadata", str(METADATA), "--folders", str(folder), str(other), "--copies", str(copies),
          "--predictions", str(tmp_path / "oof.csv"), "--out", str(tmp_path / "audit"), "--sizes", "64"])
    report = json.loads((tmp_path / "audit" / "audit.json").read_text())
    by_group = {g["group"]: g["against_these_normal_films"] for g in report["normal_films_by_group"]}
    assert by_group == {"someone/covid:No_findings": 1.0, "images": 0.0}, f"got {by_group}"


def test_a_brightened_copy_of_normal_films_stands_apart_from_the_same_view(tmp_path):
    """Normal PA films, half copied with a tone curve that lifts the greys: against the
    reference folder's normal PA films, high brightness picks out nearly every copy (> 0.9), while
    sharpness, which the curve barely touches, does not."""
    metadata = read_metadata(METADATA).set_index(IMAGE)
    names = [n for n in sorted(p.name for p in NIH_IMAGES.glob("*.png"))
             if metadata.at[n, FINDINGS] == NO_FINDING and metadata.at[n, "View Position"] == "PA"][:24]
    reference, copied = tmp_path / "images", tmp_path / "extra"
    reference.mkdir(), copied.mkdir()
    for name in names[:12]:
        (reference / name).symlink_to(NIH_IMAGES / name)
    for name in names[12:]:
        film = decode_image(NIH_IMAGES / name).pixels
        cv2.imwrite(str(copied / name), (np.clip(film, 0, 1) ** 0.3 * 255).astype(np.uint8))
    main(["--metadata", str(METADATA), "--folders", str(reference), str(copied),
          "--out", str(tmp_path / "audit"), "--sizes", "160"])
    report = json.loads((tmp_path / "audit" / "audit.json").read_text())
    against = report["normal_films_against_reference"]
    assert against["reference"] == "images" and len(against["groups"]) == 1, f"got {against}"
    row = against["groups"][0]
    assert (row["group"], row["view"], row["n_group"], row["n_reference"]) == ("extra", "PA", 12, 12)
    assert row["brightness"]["value"] > 0.9, f"expected brightness to pick out the copy, got {row['brightness']}"
    assert row["sharpness"]["value"] < 0.9, f"expected sharpness not to, got {row['sharpness']}"
