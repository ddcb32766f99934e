"""The demo's API through gradio_client, against a demo launched in this test module.

The server runs in this process (``prevent_thread_lock=True``) on loopback, with the
session's random-init CPU predictor.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from gradio import route_utils
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from tests.dicom_factory import PATIENT, dicom_bytes, make_dicom, nih_gray
from tests.paths import DICOM_DIR, NIH_IMAGES, REPO_ROOT
from tests.test_ui import CAPTION, bad_inputs
from xray_app import predict, ui
from xray_app.labels import LABELS
from xray_app.preprocess import ImageInputError

NIH_PNG = NIH_IMAGES / "00000075_000.png"


@pytest.fixture(scope="module")
def served(cpu_predictor):
    """(demo, client) for a demo launched on 127.0.0.1 for this module."""
    demo = ui.build_demo(cpu_predictor)
    demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True, **ui.launch_options())
    try:
        yield demo, Client(demo.local_url, verbose=False, analytics_enabled=False)
    finally:
        demo.close()


def test_predict_returns_the_cli_json_first_then_the_images(served, random_init_checkpoint, capsys):
    _, client = served
    result, gallery = client.predict(handle_file(str(NIH_PNG)), api_name="/predict")
    capsys.readouterr()
    assert predict.main([str(NIH_PNG), "--json", "--weights", str(random_init_checkpoint)]) == 0
    cli = json.loads(capsys.readouterr().out.strip().splitlines()[0])
    assert result == cli, "/predict's first output must be exactly `python -m xray_app.predict --json`"
    assert len(gallery) == 15, f"expected 15 heatmaps, got {len(gallery)}"
    for item in gallery:
        assert CAPTION.match(item["caption"]), f"caption {item['caption']!r} lacks probability/threshold"
        with Image.open(item["image"]) as image:
            assert max(image.size) <= ui.GALLERY_MAX_SIDE, f"gallery image {image.size} too large"


def test_plain_http_api_gives_the_same_json_as_gradio_client(served):
    """The curl-style path the load benchmark times: upload, /gradio_api/call/predict, SSE."""
    import httpx

    from benchmarks.bench_app_load import http_predict

    demo, client = served
    expected, _ = client.predict(handle_file(str(NIH_PNG)), api_name="/predict")
    with httpx.Client(timeout=60) as http:
        result, gallery, *_ = http_predict(http, demo.local_url, NIH_PNG)  # then the (hidden) state
    assert result == expected, "expected the HTTP API's JSON to equal gradio_client's"
    assert [item["caption"] for item in gallery] == [
        item["caption"] for item in client.predict(handle_file(str(NIH_PNG)), api_name="/predict")[1]
    ], "expected the same 15 captioned heatmaps in the same order"


def test_dicom_through_the_api(served):
    _, client = served
    result, gallery = client.predict(
        handle_file(str(DICOM_DIR / "siim_pneumothorax_example.dcm")), api_name="/predict"
    )
    assert result["file"] == "siim_pneumothorax_example.dcm", result["file"]
    assert [f["label"] for f in result["findings"]] == list(LABELS), "15 findings in logit order"
    assert len(gallery) == 15, "a DICOM gets its 15 heatmaps too"


def test_each_bad_file_is_a_clear_error_and_the_server_keeps_serving(served, cpu_predictor, tmp_path):
    _, client = served
    for name, path in bad_inputs(tmp_path).items():
        with pytest.raises(ImageInputError) as core:
            cpu_predictor.predict(path, name=name)
        with pytest.raises(AppError) as shown:
            client.predict(handle_file(str(path)), api_name="/predict")
        assert str(core.value) in str(shown.value), f"{name}: expected {core.value}, got {shown.value}"
        result, gallery = client.predict(handle_file(str(NIH_PNG)), api_name="/predict")
        assert result["file"] == NIH_PNG.name and len(gallery) == 15, f"good file after {name} must work"


def test_no_dicom_identifier_in_api_output_or_server_log(served, tmp_path, capfd):
    _, client = served
    path = tmp_path / "identified.dcm"
    path.write_bytes(dicom_bytes(make_dicom(nih_gray(), bits_stored=8, patient=PATIENT)))
    capfd.readouterr()
    result, gallery = client.predict(handle_file(str(path)), api_name="/predict")
    log = "".join(capfd.readouterr())
    shown = json.dumps(result) + json.dumps(gallery) + log
    for key, value in PATIENT.items():
        if len(value) >= 4:  # skip e.g. PatientSex "F"
            assert value not in shown, f"DICOM {key} appeared in the API output or the server log"


def test_batch_endpoint_returns_a_table_and_a_csv(served, tmp_path):
    _, client = served
    bad = tmp_path / "empty.png"
    bad.write_bytes(b"")
    files = [handle_file(str(NIH_PNG)), handle_file(str(bad))]
    table, csv_path = client.predict(files, api_name="/predict_batch")
    statuses = [row[1] for row in table["data"]]
    assert statuses == ["ok", "error"], f"one row per file with its status, got {table['data']}"
    with open(csv_path, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0][3:] == list(LABELS) and len(rows) == 3, "header + one row per file"


def test_uploads_and_outputs_are_registered_for_cache_cleanup(served):
    demo, client = served
    client.predict(handle_file(str(NIH_PNG)), api_name="/predict")
    tracked = [Path(f) for files in demo.temp_file_sets for f in files]
    assert any(p.name == NIH_PNG.name for p in tracked), "the upload must be tracked for delete_cache"
    assert sum(p.suffix in {".jpg", ".jpeg"} for p in tracked) >= 15, (
        "the 15 gallery images must be tracked for delete_cache"
    )
    route_utils.delete_files_created_by_app(demo, age=None)  # what delete_cache runs
    left = [p for p in tracked if p.exists()]
    assert not left, f"files survive the cache clean-up: {left[:3]}"


# --------------------------------------------------------------------------- app.py
def test_app_without_weights_prints_how_to_provide_them_and_exits_1(tmp_path, monkeypatch):
    import app

    missing = tmp_path / "no-such-checkpoint"
    monkeypatch.setattr(sys, "argv", ["app.py"])
    monkeypatch.setenv("XRAY_WEIGHTS", str(missing))
    with pytest.raises(SystemExit) as stopped:
        app.main()
    message = stopped.value.code
    # sys.exit(<str>): Python prints the string to stderr and the process exits with status 1
    assert isinstance(message, str), f"expected a message (exit status 1), got exit code {message!r}"
    assert str(missing) in message and "not found" in message, message


@pytest.fixture(scope="module")
def app_process(random_init_checkpoint, tmp_path_factory):
    """``python app.py`` on a free loopback port, started once for this module, with
    XRAY_EXAMPLES_DIR set and, in its temp dir, the files an earlier server that crashed
    left in the app's cache and another Gradio app's file: yields (its /config, those two)."""
    tmp = tmp_path_factory.mktemp("app-process")
    hour_ago = time.time() - 3600
    left_behind = tmp / "xray-app" / "0f3a" / "00000075_000.png"  # <TMPDIR>/xray-app: the default
    other_app = tmp / "gradio" / "5c1d" / "photo.png"  # Gradio's shared folder: not ours
    for path in (left_behind, other_app):
        path.parent.mkdir(parents=True)
        path.write_bytes(NIH_PNG.read_bytes())
        os.utime(path, (hour_ago, hour_ago))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XRAY_", "GRADIO_"))}
    env.update(GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port), TMPDIR=str(tmp),
               XRAY_WEIGHTS=str(random_init_checkpoint), XRAY_EXAMPLES_DIR=str(NIH_IMAGES))
    server = subprocess.Popen([sys.executable, "app.py"], cwd=REPO_ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        config = None
        deadline = time.monotonic() + 120
        while config is None and time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=2) as reply:
                    config = json.loads(reply.read())
            except OSError:
                time.sleep(0.5)
        assert config is not None, f"app.py did not serve on port {port} (exit status {server.poll()})"
        yield config, left_behind, other_app
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_app_serves_on_the_configured_port_with_examples_from_the_environment(app_process):
    config, _, _ = app_process
    text = json.dumps(config)
    shown = ui.example_files(NIH_IMAGES)
    assert all(Path(p).name in text for p in shown), "examples must come from XRAY_EXAMPLES_DIR"
    assert "UNTRAINED WEIGHTS" in text, "the random-init weights must get the untrained banner"


def test_app_removes_at_start_what_a_crashed_server_left_in_its_own_cache(app_process):
    _, left_behind, other_app = app_process
    assert not left_behind.exists(), "an upload a crashed server left must be gone once the app serves"
    assert other_app.exists(), "another Gradio app's cached file is not the app's to delete"


def test_the_app_listens_on_this_machine_only_unless_the_environment_or_a_space_says_otherwise():
    from xray_app.serve import server_address

    assert server_address({}) == {"server_name": "127.0.0.1", "server_port": 7860}, (
        "expected loopback on port 7860 by default: uploads are radiographs")
    assert server_address({"SPACE_ID": "owner/xray"}) == {"server_name": "0.0.0.0", "server_port": 7860}, (
        "expected all interfaces on a Hugging Face Space, whose proxy must reach the app")
    told = {"SPACE_ID": "owner/xray", "GRADIO_SERVER_NAME": "10.1.2.3", "GRADIO_SERVER_PORT": "8123"}
    assert server_address(told) == {"server_name": "10.1.2.3", "server_port": 8123}, (
        "expected GRADIO_SERVER_NAME and GRADIO_SERVER_PORT to win, on a Space too")
    assert server_address({"GRADIO_SERVER_NAME": "0.0.0.0"})["server_name"] == "0.0.0.0", (
        "expected GRADIO_SERVER_NAME=0.0.0.0 to open a plain server to the network")
