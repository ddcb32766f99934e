"""training.data (metadata, images, splits) and training.split: metadata in both NIH forms, image discovery, patient-wise splits."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from training import split
from training.data.images import find_images, keep_available
from training.data.metadata import IMAGE, PATIENT, MetadataError, labels_of, read_metadata
from training.data.splits import (
    SPLIT_NAMES,
    SplitLeakError,
    Splits,
    check_patient_disjoint,
    make_splits,
    read_image_list,
    read_splits,
    split_by_patient,
)
from xray_app.labels import LABELS, NUM_LABELS

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nih"
METADATA = SHARED / "Data_Entry_2017_v2020.csv.gz"
CHEXNET = SHARED / "chexnet_split"

pytestmark = pytest.mark.skipif(not METADATA.is_file(), reason=f"shared data missing: {METADATA}")


@pytest.fixture(scope="module")
def metadata() -> pd.DataFrame:
    return read_metadata(METADATA)


def _assert_disjoint_and_complete(splits: Splits) -> None:
    patients = {name: set(part[PATIENT]) for name, part in splits.items()}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        shared = patients[a] & patients[b]
        assert not shared, f"expected no patient in both {a} and {b}, found {len(shared)}"
    for name, part in splits.items():
        counts = labels_of(part).sum(axis=0)
        absent = [LABELS[i] for i in np.flatnonzero(counts == 0)]
        assert not absent, f"expected every class in the {name} split, missing {absent}"


def test_v2020_metadata_has_all_rows_and_renamed_size_columns(metadata):
    assert len(metadata) == 112_120, f"expected 112,120 images, got {len(metadata)}"
    for column in ("OriginalImageWidth", "OriginalImageHeight", "PixelSpacingX", "PixelSpacingY"):
        assert column in metadata.columns, f"expected renamed column {column!r}"
    assert metadata[PATIENT].nunique() == 30_805, "expected 30,805 NIH patients"
    labels = labels_of(metadata)
    assert labels.shape == (112_120, NUM_LABELS), f"expected (N, 15) labels, got {labels.shape}"


def test_original_2017_csv_with_trailing_comma_reads_the_same(tmp_path):
    header = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
              "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],\n")
    rows = ("00000001_000.png,Cardiomegaly,0,1,58,M,PA,2682,2749,0.143,0.143,\n"
            "00000002_000.png,No Finding,0,2,81,M,PA,2500,2048,0.171,0.171,\n")
    path = tmp_path / "Data_Entry_2017.csv"
    path.write_text(header + rows)
    frame = read_metadata(path)
    assert list(frame.columns[-4:]) == ["OriginalImageWidth", "OriginalImageHeight",
                                        "PixelSpacingX", "PixelSpacingY"], (
        f"expected renamed size/spacing columns and no empty trailing column, got {list(frame.columns)}")
    assert frame["OriginalImageHeight"].tolist() == [2749, 2048], "expected heights parsed per row"


def test_metadata_without_patient_column_names_the_file(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("Image Index,Finding Labels\na.png,Mass\n")
    with pytest.raises(MetadataError, match=r"bad\.csv.*Patient ID"):
        read_metadata(path)


def test_patient_random_split_of_full_metadata_is_fast_disjoint_and_complete(metadata):
    start = time.perf_counter()
    splits = make_splits(metadata, split_lists=None, val_fraction=0.1, test_fraction=0.2, seed=0)
    seconds = time.perf_counter() - start
    assert seconds < 10, f"expected the full split in seconds, took {seconds:.1f} s"
    assert sum(len(p) for _, p in splits.items()) == 112_120, "expected every image in one split"
    _assert_disjoint_and_complete(splits)
    fractions = [len(p) / 112_120 for _, p in splits.items()]
    assert fractions == pytest.approx([0.7, 0.1, 0.2], abs=0.01), f"expected 70/10/20, got {fractions}"


def test_patient_random_split_depends_on_seed_only(metadata):
    small = metadata.head(3000)
    a = split_by_patient(small, val_fraction=0.1, test_fraction=0.2, seed=1)
    b = split_by_patient(small, val_fraction=0.1, test_fraction=0.2, seed=1)
    c = split_by_patient(small, val_fraction=0.1, test_fraction=0.2, seed=2)
    assert a.test[IMAGE].tolist() == b.test[IMAGE].tolist(), "expected same seed, same split"
    assert a.test[IMAGE].tolist() != c.test[IMAGE].tolist(), "expected another seed to differ"


def test_chexnet_lists_split_full_metadata_disjoint_and_complete(metadata):
    splits = make_splits(metadata, split_lists=CHEXNET, val_fraction=0.1, test_fraction=0.2, seed=0)
    sizes = {name: len(part) for name, part in splits.items()}
    expected = {name: len(read_image_list(CHEXNET / f"{name}_list.txt")) for name in SPLIT_NAMES}
    assert sizes == expected, f"expected the list sizes {expected}, got {sizes}"
    _assert_disjoint_and_complete(splits)


def test_official_nih_lists_carve_validation_by_patient(metadata, tmp_path):
    # NIH's format: one name per line; built here from the CheXNet lists (same images)
    train_val = read_image_list(CHEXNET / "train_list.txt") + read_image_list(CHEXNET / "val_list.txt")
    (tmp_path / "train_val_list.txt").write_text("\n".join(train_val) + "\n")
    (tmp_path / "test_list.txt").write_text("\n".join(read_image_list(CHEXNET / "test_list.txt")) + "\n")
    splits = make_splits(metadata, split_lists=tmp_path, val_fraction=0.125, test_fraction=0.0, seed=0)
    assert len(splits.train) + len(splits.val) == len(train_val), "expected train+val == train_val_list"
    assert len(splits.val) / len(train_val) == pytest.approx(0.125, abs=0.01), "expected 12.5 % carved"
    _assert_disjoint_and_complete(splits)


def test_a_patient_in_two_splits_is_refused(metadata):
    rows = metadata[metadata[PATIENT] == 1]
    leak = Splits(rows.head(1), rows.iloc[1:2], rows.iloc[2:3], method="handmade")
    with pytest.raises(SplitLeakError, match="patient 1 appears in both"):
        check_patient_disjoint(leak)


def test_nested_images_found_and_missing_ones_counted(metadata, tmp_path):
    nested = tmp_path / "images_001" / "images"
    nested.mkdir(parents=True)
    present = metadata[IMAGE].head(3).tolist()
    for name in present:
        (nested / name).write_bytes(b"")
    found = find_images(tmp_path)
    assert set(found) == set(present), f"expected the 3 nested images, found {sorted(found)}"
    kept, report = keep_available(metadata, found)
    assert (len(kept), report.missing) == (3, 112_117), (
        f"expected 3 kept and 112,117 missing, got {len(kept)} and {report.missing}")


def test_cli_writes_splits_and_prevalence_for_the_partial_download(tmp_path, capsys):
    code = split.main(["--metadata", str(METADATA), "--images", str(SHARED / "images"),
                      "--seed", "3", "--out", str(tmp_path)])
    assert code == 0, f"expected exit 0, got {code}"
    total = 0
    for name in SPLIT_NAMES:
        part = pd.read_csv(tmp_path / f"{name}.csv")
        assert {IMAGE, PATIENT} <= set(part.columns), f"expected id columns in {name}.csv"
        total += len(part)
    assert total == 500, f"expected the 500 shared images across the splits, got {total}"
    prevalence = pd.read_csv(tmp_path / "prevalence.csv", index_col=0)
    assert list(prevalence.index) == [*LABELS, "images"], "expected one row per label + images"
    assert "111620 missing" in capsys.readouterr().out, "expected the missing images reported"


def test_the_shared_folders_together_keep_patients_in_one_split(tmp_path):
    """Both shared folders, named one by one: 1,753 images, and the 23 patients with
    images in both folders still sit in one split each."""
    code = split.main(["--metadata", str(METADATA), "--images", str(SHARED / "images"),
                      str(SHARED / "images_extra"), "--seed", "0", "--out", str(tmp_path)])
    assert code == 0, f"expected exit 0, got {code}"
    splits = read_splits(tmp_path)  # refuses a patient in two splits
    total = sum(len(part) for _, part in splits.items())
    assert total == 1753, f"expected the 1,753 shared images across the splits, got {total}"
    first = set(p.name for p in (SHARED / "images").glob("*.png"))
    extra = set(p.name for p in (SHARED / "images_extra").glob("*.png"))
    both = {int(n.split("_")[0]) for n in first} & {int(n.split("_")[0]) for n in extra}
    assert len(both) == 23, f"expected 23 patients in both folders, got {len(both)}"
    _assert_disjoint_and_complete(splits)


def test_an_image_name_found_in_two_folders_is_refused_naming_both(tmp_path):
    for folder in ("a", "b/nested"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "00000001_000.png").write_bytes(b"")
    (tmp_path / "a" / "00000002_000.png").write_bytes(b"")
    with pytest.raises(MetadataError, match="found twice") as raised:
        find_images([tmp_path / "a", tmp_path / "b"])
    message = str(raised.value)
    assert str(tmp_path / "a" / "00000001_000.png") in message and \
        str(tmp_path / "b" / "nested" / "00000001_000.png") in message, (
        f"expected both copies named in the message, got {message!r}")


def test_the_shared_parent_folder_is_refused_for_its_1024px_copies():
    """nih/originals/ holds 1024 px copies of images in nih/images/: one parent folder
    would find each of them twice."""
    with pytest.raises(MetadataError, match="originals"):
        find_images(SHARED)


def test_several_folders_are_searched_recursively(tmp_path):
    for folder, name in (("one/deep", "00000001_000.png"), ("two", "00000002_000.jpg")):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / name).write_bytes(b"")
    found = find_images([str(tmp_path / "one"), tmp_path / "two"])
    assert sorted(found) == ["00000001_000.png", "00000002_000.jpg"], f"expected both images, got {found}"
