"""The start-up purge of Gradio's cache: what a crashed server left goes, nothing else."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from xray_app.serve import examples_folder, purge_stale_cache

AGE_S = 600.0
NOW = time.time()
OLD = NOW - 3600  # an hour ago: left by an earlier server


def _file(path: Path, mtime: float, data: bytes = b"radiograph") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))
    return path


def _aged_dir(path: Path, mtime: float) -> Path:
    path.mkdir(parents=True)
    os.utime(path, (mtime, mtime))
    return path


def test_a_crashed_servers_files_go_and_a_running_servers_stay(tmp_path):
    cache = tmp_path / "cache"
    old_upload = _file(cache / "0f3a" / "00000075_000.png", OLD)
    old_heatmap = _file(cache / "xray-1" / "heatmaps" / "01-Effusion.jpg", OLD)
    old_spool = _file(cache / "tmpab12cd", OLD, b"")
    young_upload = _file(cache / "9b2e" / "00000282_000.png", NOW)
    being_filled = _aged_dir(cache / "xray-2", NOW)
    old_empty = _aged_dir(cache / "xray-3", OLD)

    removed = purge_stale_cache(cache, AGE_S, now=NOW)

    assert removed == 3, f"expected the 3 stale files to go, {removed} went"
    for gone in (old_upload, old_heatmap, old_spool, old_upload.parent, old_heatmap.parent.parent, old_empty):
        assert not gone.exists(), f"{gone.relative_to(cache)} was left by a crashed server and must go"
    assert young_upload.read_bytes() == b"radiograph", "a file younger than the age belongs to a running server"
    assert being_filled.is_dir(), "a young empty folder may be being filled by a running server"
    assert cache.is_dir(), "the cache folder itself stays"


def test_the_purge_removes_links_and_never_what_they_point_to(tmp_path):
    cache, outside = tmp_path / "cache", tmp_path / "patient-files"
    kept = _file(outside / "study.dcm", OLD)
    cache.mkdir()
    (cache / "to-folder").symlink_to(outside, target_is_directory=True)
    (cache / "to-file").symlink_to(kept)
    for link in cache.iterdir():
        os.utime(link, (OLD, OLD), follow_symlinks=False)

    purge_stale_cache(cache, AGE_S, now=NOW)

    assert kept.read_bytes() == b"radiograph", "a file outside the cache must never be touched"
    assert not any(cache.iterdir()), "stale links inside the cache are removed themselves"


def test_a_missing_cache_folder_is_nothing_to_purge(tmp_path):
    assert purge_stale_cache(tmp_path / "never-made", AGE_S) == 0



def test_examples_come_from_the_environment_else_the_bundled_folder(tmp_path, monkeypatch):
    bundled = tmp_path / "examples"
    monkeypatch.delenv("XRAY_EXAMPLES_DIR", raising=False)
    assert examples_folder(bundled) is None, "expected no examples when the repository has none"
    bundled.mkdir()
    assert examples_folder(bundled) == bundled, "expected the bundled examples by default"
    monkeypatch.setenv("XRAY_EXAMPLES_DIR", str(tmp_path / "mine"))
    assert examples_folder(bundled) == tmp_path / "mine", "expected XRAY_EXAMPLES_DIR to win"
    monkeypatch.setenv("XRAY_EXAMPLES_DIR", "")
    assert examples_folder(bundled) is None, "expected an empty XRAY_EXAMPLES_DIR to offer none"


def test_a_population_table_the_weights_cannot_take_ends_with_a_message(random_init_checkpoint, tmp_path):
    """XRAY_POPULATION / --population with weights that record no calibration sample: a
    one-line error, never probabilities for a population they were not moved to."""
    from xray_app.serve import predictor_from_command_line

    table = tmp_path / "hospital.json"
    table.write_text('{"name": "hospital", "prevalence": {}}')
    with pytest.raises(SystemExit) as stop:
        predictor_from_command_line(["--weights", str(random_init_checkpoint), "--population", str(table)])
    assert "prevalence table lacks" in str(stop.value.code), f"expected the table's fault named: {stop.value.code}"
