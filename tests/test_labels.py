"""The 15 outputs: order, NIH spelling, display names, parsing of ``Finding Labels``."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from tests.paths import SHARED_DATA
from xray_app.labels import (
    DISPLAY_NAMES,
    LABEL_INDEX,
    LABELS,
    NO_FINDING_INDEX,
    NUM_LABELS,
    PATHOLOGIES,
    check_label_order,
    display_name,
    encode_finding_labels,
    label_matrix,
    parse_finding_labels,
)

NIH_ORDER = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening",
    "Hernia", "No Finding",
)  # fmt: skip


def test_labels_are_the_14_nih_pathologies_then_no_finding_in_fixed_order():
    assert LABELS == NIH_ORDER, f"expected logit order {NIH_ORDER}, got {LABELS}"
    assert NUM_LABELS == 15, f"expected 15 outputs, got {NUM_LABELS}"
    assert tuple(PATHOLOGIES) == NIH_ORDER[:14], "expected PATHOLOGIES to be the first 14 labels"
    assert NO_FINDING_INDEX == 14, f"expected 'No Finding' at index 14, got {NO_FINDING_INDEX}"
    assert all(LABEL_INDEX[name] == i for i, name in enumerate(LABELS)), (
        "expected LABEL_INDEX[name] to be the name's position in LABELS"
    )


def test_label_spelling_matches_the_nih_metadata_csv():
    with gzip.open(SHARED_DATA / "nih" / "Data_Entry_2017_v2020.csv.gz", "rt") as handle:
        handle.readline()
        names: set[str] = set()
        for line in handle:
            names.update(line.split(",")[1].split("|"))
    assert names == set(LABELS), (
        f"expected the NIH CSV's names to be exactly LABELS; only in CSV: {names - set(LABELS)}, "
        f"only in LABELS: {set(LABELS) - names}"
    )


def test_display_names_are_for_people_and_in_logit_order():
    assert len(DISPLAY_NAMES) == NUM_LABELS, "expected one display name per output"
    assert display_name("Pleural_Thickening") == "Pleural thickening", (
        "expected the underscore replaced for people"
    )
    assert DISPLAY_NAMES[LABEL_INDEX["Pleural_Thickening"]] == "Pleural thickening", (
        "expected DISPLAY_NAMES in logit order"
    )
    assert all("_" not in name for name in DISPLAY_NAMES), (
        f"expected no underscores in display names, got {DISPLAY_NAMES}"
    )


def test_display_name_of_an_unknown_label_raises_naming_it():
    with pytest.raises(ValueError, match="Pneumonitis"):
        display_name("Pneumonitis")


def test_parse_splits_on_pipe_into_exact_names():
    parsed = parse_finding_labels("Effusion|Pleural_Thickening|Mass")
    assert parsed == {"Effusion", "Pleural_Thickening", "Mass"}, (
        f"expected the three names, got {sorted(parsed)}"
    )
    assert parse_finding_labels("No Finding") == {"No Finding"}, "expected 'No Finding' alone"


@pytest.mark.parametrize(
    "text, unknown",
    [
        ("Effusion|Pleural Thickening", "Pleural Thickening"),  # space instead of underscore
        ("effusion", "effusion"),  # case matters
        ("Mass|Nodules", "Nodules"),  # no substring or plural matching
        ("Infiltrate", "Infiltrate"),  # a prefix of "Infiltration" is not it
        ("Effusion||Mass", ""),  # an empty name between pipes
    ],
)
def test_parse_rejects_an_inexact_name_and_names_it(text, unknown):
    with pytest.raises(ValueError) as caught:
        parse_finding_labels(text)
    assert repr(unknown) in str(caught.value), (
        f"expected the message to name {unknown!r}, got {caught.value}"
    )


def test_no_finding_combined_with_a_pathology_is_refused():
    with pytest.raises(ValueError, match="No Finding"):
        parse_finding_labels("No Finding|Mass")


def test_encode_gives_a_multi_hot_vector_in_logit_order():
    vector = encode_finding_labels("Hernia|Atelectasis")
    expected = np.zeros(15, dtype=np.float32)
    expected[[0, 13]] = 1.0
    assert vector.dtype == np.float32, f"expected float32, got {vector.dtype}"
    assert np.array_equal(vector, expected), f"expected ones at 0 and 13, got {vector}"


def test_label_matrix_stacks_rows_and_handles_no_rows():
    matrix = label_matrix(["No Finding", "Cardiomegaly|Edema"])
    assert matrix.shape == (2, 15), f"expected (2, 15), got {matrix.shape}"
    assert matrix[0, 14] == 1 and matrix[0].sum() == 1, "expected row 0 = No Finding only"
    assert matrix[1, [1, 9]].tolist() == [1, 1] and matrix[1].sum() == 2, (
        "expected row 1 = Cardiomegaly and Edema"
    )
    assert label_matrix([]).shape == (0, 15), "expected an empty (0, 15) matrix for no rows"


def test_check_label_order_refuses_a_permutation():
    check_label_order(list(LABELS))  # the project's own order passes
    swapped = list(LABELS)
    swapped[0], swapped[1] = swapped[1], swapped[0]
    with pytest.raises(ValueError, match="order"):
        check_label_order(swapped)
