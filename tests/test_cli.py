"""Command line ``python -m xray_app.predict``: JSON lines, errors, exit codes, heatmap files."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image

from tests.paths import DICOM_DIR, NIH_IMAGES, NIH_ORIGINALS, REPO_ROOT
from xray_app.labels import LABELS
from xray_app.predict import main
from xray_app.predictor import UNTRAINED_WARNING

GOOD = [
    NIH_IMAGES / "00000075_000.png",
    NIH_ORIGINALS / "00000100_000.png",
    DICOM_DIR / "siim_pneumothorax_example.dcm",
    DICOM_DIR / "fake_monochrome1_example.dcm",
]


@pytest.fixture(scope="module")
def json_run(random_init_checkpoint, tmp_path_factory, shared_data):
    """One real ``python -m xray_app.predict --json`` run: 4 good inputs and 2 bad ones."""
    folder = tmp_path_factory.mktemp("cli")
    truncated = folder / "truncated.png"
    truncated.write_bytes(GOOD[0].read_bytes()[:3000])
    files = [GOOD[0], truncated, *GOOD[1:], folder / "missing.dcm"]
    command = [sys.executable, "-m", "xray_app.predict", *map(str, files),
               "--weights", str(random_init_checkpoint), "--json", "--device", "cpu"]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)


def test_json_lines_have_the_exact_shape(json_run, random_init_checkpoint):
    lines = json_run.stdout.splitlines()
    assert len(lines) == 6, f"expected one line per input (6), got {len(lines)}:\n{json_run.stdout}"
    records = [json.loads(line) for line in lines]
    good = [records[0], *records[2:5]]
    for record, path in zip(good, GOOD, strict=True):
        assert list(record) == ["file", "findings", "model", "warnings", "gate"], (
            f"expected keys file/findings/model/warnings/gate, got {list(record)}"
        )
        assert record["gate"] is None, f"weights without a gate give gate null, got {record['gate']}"
        assert record["file"] == path.name, f"expected file {path.name}, got {record['file']}"
        labels = [finding["label"] for finding in record["findings"]]
        assert labels == list(LABELS), f"expected 15 findings in logit order, got {labels}"
        pathology_flagged = any(f["positive"] for f in record["findings"][:-1])
        for finding in record["findings"]:
            assert list(finding) == ["label", "probability", "threshold", "positive"], (
                f"expected finding keys label/probability/threshold/positive, got {list(finding)}"
            )
            assert 0.0 <= finding["probability"] <= 1.0, f"expected a probability, got {finding}"
            above = finding["probability"] >= finding["threshold"]
            expected = above and not pathology_flagged if finding["label"] == "No Finding" else above
            assert finding["positive"] == expected, (
                f"expected the flag rule (No Finding never beside a pathology) in {finding}"
            )
        assert set(record["model"]) == {"name", "sha256"}, f"expected model name/sha256: {record['model']}"
        assert len(record["model"]["sha256"]) == 64, "expected a sha256 hex digest"
        assert UNTRAINED_WARNING in record["warnings"], (
            f"expected the untrained warning for {path.name}, got {record['warnings']}"
        )


def test_bad_inputs_give_error_lines_and_exit_1_without_traceback(json_run):
    records = [json.loads(line) for line in json_run.stdout.splitlines()]
    for index, name, words in [(1, "truncated.png", "truncated"), (5, "missing.dcm", "not found")]:
        assert list(records[index]) == ["file", "error"], (
            f"expected only file/error for {name}, got {records[index]}"
        )
        assert records[index]["file"] == name, f"expected file {name}, got {records[index]}"
        assert words in records[index]["error"], f"expected {words!r} in {records[index]['error']!r}"
        assert "\n" not in records[index]["error"], "expected a one-line error message"
    assert json_run.returncode == 1, f"expected exit 1 when an input fails, got {json_run.returncode}"
    assert "Traceback" not in json_run.stderr, f"expected no traceback, got:\n{json_run.stderr}"


def test_usage_errors_exit_2(random_init_checkpoint, tmp_path, capsys, shared_data):
    for argv in ([], [str(GOOD[0]), "--method", "DeepDream"], [str(GOOD[0]), "--batch-size", "0"]):
        with pytest.raises(SystemExit) as stopped:
            main(argv)
        assert stopped.value.code == 2, f"expected exit 2 for {argv}, got {stopped.value.code}"
    assert main([str(GOOD[0]), "--weights", str(tmp_path / "nowhere")]) == 2, (
        "expected exit 2 for weights that do not exist"
    )
    assert "nowhere" in capsys.readouterr().err, "expected the message to name the missing weights"


def test_table_output_without_json(random_init_checkpoint, capsys, shared_data):
    assert main([str(GOOD[0]), "--weights", str(random_init_checkpoint), "--device", "cpu"]) == 0, (
        "expected exit 0 for a good input"
    )
    out = capsys.readouterr().out
    for text in ("NOT a medical device", "00000075_000.png", "UNTRAINED MODEL", "Pleural thickening",
                 "No finding"):
        assert text in out, f"expected {text!r} in the table:\n{out}"


def test_heatmaps_writes_15_pngs_per_input_at_original_resolution(
    random_init_checkpoint, tmp_path, shared_data
):
    inputs = [GOOD[0], GOOD[2]]  # 512 px PNG and 1024 px DICOM
    code = main([*map(str, inputs), "--weights", str(random_init_checkpoint), "--json",
                 "--heatmaps", str(tmp_path / "maps"), "--device", "cpu"])
    assert code == 0, f"expected exit 0, got {code}"
    for path, side in zip(inputs, (512, 1024), strict=True):
        written = sorted((tmp_path / "maps").glob(f"{path.stem}_*.png"))
        assert len(written) == 15, f"expected 15 PNGs for {path.name}, got {len(written)}"
        for index, png in enumerate(written):
            assert png.name == f"{path.stem}_{index:02d}_{LABELS[index].replace(' ', '_')}.png", (
                f"expected file names in logit order, got {png.name}"
            )
        with Image.open(written[2]) as image:
            assert image.size == (side, side) and image.mode == "RGB", (
                f"expected an RGB overlay of {side} x {side}, got {image.size} {image.mode}"
            )
            assert "Pleural effusion" in image.text.get("Description", ""), (
                f"expected the caption in the PNG text, got {image.text}"
            )


def test_population_table_that_cannot_apply_exits_2_with_the_reason(random_init_checkpoint, tmp_path, capsys):
    table = tmp_path / "hospital.json"
    table.write_text('{"name": "hospital", "prevalence": {"Atelectasis": 0.1}}')
    assert main([str(GOOD[0]), "--weights", str(random_init_checkpoint), "--population", str(table)]) == 2
    assert "lacks" in capsys.readouterr().err, "a table missing labels is named as such"
    table.write_text(json.dumps({"name": "hospital", "prevalence": dict.fromkeys(LABELS, 0.1)}))
    assert main([str(GOOD[0]), "--weights", str(random_init_checkpoint), "--population", str(table)]) == 2
    assert "calibration sample" in capsys.readouterr().err, \
        "weights without a population record cannot be moved to another population"
