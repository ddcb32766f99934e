"""Publishing: the dry-run folder offline, and the upload path with a recording HfApi."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest

from training import publish
from xray_app.model import load_checkpoint, write_random_init
from xray_app.weights import hub_pin

CARD = "---\nlicense: mit\n---\n# test card\n"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = write_random_init(tmp_path_factory.mktemp("ckpt") / "best", input_size=64)
    (directory / "README.md").write_text(CARD)
    return directory


def test_dry_run_writes_exactly_the_upload_folder(checkpoint: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "upload"
    code = publish.main(["--checkpoint", str(checkpoint), "--repo-id", "team/cxr", "--dry-run",
                         "--out", str(out), "--allow-untrained"])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    sha = _sha(checkpoint / "model.safetensors")
    assert _sha(out / "model.safetensors") == sha, "weights are copied byte for byte"
    assert f"sha256 of model.safetensors: {sha}" in printed, printed
    assert '"hub": {"repo_id": "team/cxr", "revision": "<commit hash' in printed, printed
    assert (out / "README.md").read_text() == CARD, "the card is the checkpoint's README.md"
    config = json.loads((out / "config.json").read_text())
    assert config["hub"] == {"repo_id": "team/cxr", "revision": "main",
                             "filename": "model.safetensors", "sha256": sha}, config["hub"]
    loaded = load_checkpoint(out, expected_sha256=sha)  # the app's loader accepts the folder
    assert loaded.config.labels == load_checkpoint(checkpoint).config.labels, "same label order"


def test_refusals(checkpoint: Path, tmp_path: Path, capsys) -> None:
    base = ["--checkpoint", str(checkpoint), "--repo-id", "team/cxr", "--dry-run"]
    assert publish.main([*base, "--out", str(tmp_path / "a")]) == 2, "untrained refused"
    assert "trained: false" in capsys.readouterr().err
    assert publish.main([*base, "--out", str(tmp_path / "b"), "--allow-untrained",
                         "--card", str(tmp_path / "missing.md")]) == 2, "a card is required"
    assert "python -m training.model_card" in capsys.readouterr().err, "says how to make one"
    full = tmp_path / "c"
    full.mkdir()
    (full / "stray.txt").write_text("x")
    assert publish.main([*base, "--out", str(full), "--allow-untrained"]) == 2, "non-empty out"
    assert "not empty" in capsys.readouterr().err
    assert publish.main([*base, "--allow-untrained"]) == 2, "--dry-run needs --out"


class RecordingApi:
    """Stands in for HfApi: records the calls and what the folder held at upload time."""

    calls: list[tuple[str, dict]] = []
    uploaded: dict[str, str] = {}

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))

    def create_branch(self, repo_id, **kwargs):
        self.calls.append(("create_branch", {"repo_id": repo_id, **kwargs}))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))
        folder = Path(kwargs["folder_path"])
        RecordingApi.uploaded = {p.name: _sha(p) for p in folder.iterdir()}
        return SimpleNamespace(oid="0123456789abcdef0123456789abcdef01234567")


def test_upload_path_and_pin(checkpoint: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    RecordingApi.calls = []
    pin_file = tmp_path / "weights" / "config.json"
    pin_file.parent.mkdir()
    shutil.copyfile(checkpoint / "config.json", pin_file)  # the shipped weights' config
    code = publish.main(["--checkpoint", str(checkpoint), "--repo-id", "team/cxr",
                         "--revision", "v1", "--allow-untrained", "--pin-file", str(pin_file)])
    assert code == 0, capsys.readouterr().err
    names = [name for name, _ in RecordingApi.calls]
    assert names == ["create_repo", "create_branch", "upload_folder"], names
    assert RecordingApi.calls[0][1]["exist_ok"] is True, "an existing repository is reused"
    upload = RecordingApi.calls[2][1]
    assert (upload["repo_id"], upload["revision"]) == ("team/cxr", "v1"), upload
    sha = _sha(checkpoint / "model.safetensors")
    assert set(RecordingApi.uploaded) == {"README.md", "config.json", "model.safetensors"}, (
        f"exactly the three files are uploaded: {RecordingApi.uploaded}")
    assert RecordingApi.uploaded["model.safetensors"] == sha, "the checkpoint's own weights"
    commit = "0123456789abcdef0123456789abcdef01234567"
    assert f"commit {commit}" in capsys.readouterr().out, "the revision to pin is printed"
    # the one edit of weights/config.json is what xray_app.weights reads
    pin = hub_pin(pin_file.parent, env={})
    assert (pin.repo_id, pin.revision, pin.sha256) == ("team/cxr", commit, sha), pin
