"""Weight resolution: explicit path > XRAY_WEIGHTS > bundled weights/ > pinned Hub revision."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import huggingface_hub.constants
import pytest

from xray_app.model import CONFIG_FILE, WEIGHTS_FILE, CheckpointError, sha256_of
from xray_app.weights import (
    HubPin,
    WeightsNotFoundError,
    hub_pin,
    resolve_weights,
)

REPO_ID = "xray-team/chest-xray-resnet50"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def checkpoint(random_init_checkpoint) -> Path:
    """A real (untrained) checkpoint, from conftest: loading it exercises every check."""
    return random_init_checkpoint


def fake_checkpoint(directory: Path) -> Path:
    """A folder that looks like a checkpoint; resolution only looks at the files' presence."""
    directory.mkdir(parents=True)
    (directory / WEIGHTS_FILE).write_bytes(b"weights of " + directory.name.encode())
    (directory / CONFIG_FILE).write_text("{}")
    return directory


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory, checkpoint) -> Path:
    """A hand-built Hugging Face cache holding the checkpoint at revision COMMIT.

    Like the real cache: files in ``blobs/`` named by hash, linked from the snapshot.
    """
    cache = tmp_path_factory.mktemp("hf_cache")
    repo = cache / ("models--" + REPO_ID.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        blob = repo / "blobs" / sha256_of(checkpoint / name)
        shutil.copyfile(checkpoint / name, blob)
        (snapshot / name).symlink_to(Path("..", "..", "blobs", blob.name))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return cache


@pytest.fixture
def offline(monkeypatch):
    """HF_HUB_OFFLINE=1: huggingface_hub reads it at import, so its constant is patched too."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture
def no_bundled(tmp_path) -> Path:
    empty = tmp_path / "bundled_empty"
    empty.mkdir()
    return empty


def hub_env(**extra: str) -> dict[str, str]:
    return {"XRAY_HUB_REPO": REPO_ID, "XRAY_HUB_REVISION": COMMIT, **extra}


# --------------------------------------------------------------------------- order
def test_explicit_path_wins_over_env_bundled_and_hub(tmp_path):
    explicit, from_env = fake_checkpoint(tmp_path / "explicit"), fake_checkpoint(tmp_path / "env")
    bundled = fake_checkpoint(tmp_path / "bundled")
    resolved = resolve_weights(explicit, bundled_dir=bundled, env={"XRAY_WEIGHTS": str(from_env), **hub_env()})
    assert (resolved.source, resolved.weights_path) == ("explicit", explicit / WEIGHTS_FILE), (
        f"expected the explicit path, got {resolved}"
    )


def test_env_wins_over_bundled_and_hub(tmp_path):
    from_env, bundled = fake_checkpoint(tmp_path / "env"), fake_checkpoint(tmp_path / "bundled")
    resolved = resolve_weights(bundled_dir=bundled, env={"XRAY_WEIGHTS": str(from_env), **hub_env()})
    assert (resolved.source, resolved.config_dir) == ("env", from_env), f"expected XRAY_WEIGHTS, got {resolved}"


def test_env_is_read_from_the_process_environment_by_default(tmp_path, monkeypatch):
    from_env = fake_checkpoint(tmp_path / "env")
    monkeypatch.setenv("XRAY_WEIGHTS", str(from_env))
    resolved = resolve_weights(bundled_dir=fake_checkpoint(tmp_path / "bundled"))
    assert resolved.config_dir == from_env, f"expected os.environ's XRAY_WEIGHTS, got {resolved}"


def test_bundled_wins_over_hub(tmp_path):
    bundled = fake_checkpoint(tmp_path / "bundled")
    resolved = resolve_weights(bundled_dir=bundled, env=hub_env())
    assert (resolved.source, resolved.config_dir) == ("bundled", bundled), f"expected bundled, got {resolved}"


def test_explicit_weights_file_uses_the_config_beside_it(tmp_path):
    ckpt = fake_checkpoint(tmp_path / "run" / "best")
    resolved = resolve_weights(ckpt / WEIGHTS_FILE, env={})
    assert (resolved.config_dir, resolved.weights_path) == (ckpt, ckpt / WEIGHTS_FILE), (
        f"expected the file and its folder's config.json, got {resolved}"
    )


def test_explicit_weights_without_config_json_are_refused(tmp_path):
    ckpt = fake_checkpoint(tmp_path / "bare")
    (ckpt / CONFIG_FILE).unlink()
    with pytest.raises(WeightsNotFoundError, match="config.json not found"):
        resolve_weights(ckpt, env={})


def test_explicit_path_that_does_not_exist_is_refused_not_skipped(tmp_path, no_bundled):
    bundled = fake_checkpoint(tmp_path / "bundled")
    with pytest.raises(WeightsNotFoundError, match="--weights"):
        resolve_weights(tmp_path / "typo", bundled_dir=bundled, env={})


def test_nothing_found_lists_the_three_ways_and_never_falls_back(no_bundled):
    with pytest.raises(WeightsNotFoundError) as caught:
        resolve_weights(bundled_dir=no_bundled, env={})
    message = str(caught.value)
    for way in ("--weights", "XRAY_WEIGHTS", str(no_bundled), "XRAY_HUB_REPO", "XRAY_HUB_REVISION"):
        assert way in message, f"expected the message to mention {way!r}: {message}"


# --------------------------------------------------------------------------- Hub
def test_hub_download_from_a_local_cache_offline_loads_and_verifies(hub_cache, offline, no_bundled, checkpoint):
    sha = sha256_of(checkpoint / WEIGHTS_FILE)
    resolved = resolve_weights(bundled_dir=no_bundled, env=hub_env(XRAY_HUB_SHA256=sha), cache_dir=hub_cache)
    assert resolved.source == "hub", f"expected the Hub, got {resolved.source}"
    assert COMMIT in str(resolved.weights_path), f"expected the pinned snapshot, got {resolved.weights_path}"
    loaded = resolved.load()
    assert loaded.sha256 == sha and loaded.model.fc.out_features == 15, "expected the pinned weights loaded"


def test_hub_pin_from_bundled_config_json(tmp_path, hub_cache, offline, checkpoint):
    bundled = tmp_path / "weights"
    bundled.mkdir()
    sha = sha256_of(checkpoint / WEIGHTS_FILE)
    pin = {"repo_id": REPO_ID, "revision": COMMIT, "sha256": sha}
    (bundled / CONFIG_FILE).write_text(json.dumps({"hub": pin}))
    resolved = resolve_weights(bundled_dir=bundled, env={}, cache_dir=hub_cache)
    assert (resolved.source, resolved.expected_sha256) == ("hub", sha), f"expected the pinned Hub file, got {resolved}"
    assert sha256_of(resolved.weights_path) == sha, "expected the pinned file from the cache"


def test_hub_sha256_mismatch_is_refused(hub_cache, offline, no_bundled):
    resolved = resolve_weights(bundled_dir=no_bundled, env=hub_env(XRAY_HUB_SHA256="f" * 64), cache_dir=hub_cache)
    with pytest.raises(CheckpointError, match="sha256"):
        resolved.load()


def test_hub_revision_missing_from_the_cache_offline_is_not_found(hub_cache, offline, no_bundled):
    other = "f" * 40
    with pytest.raises(WeightsNotFoundError) as caught:
        resolve_weights(bundled_dir=no_bundled, env=hub_env(XRAY_HUB_REVISION=other), cache_dir=hub_cache)
    assert REPO_ID in str(caught.value) and other in str(caught.value), (
        f"expected the repository and revision named: {caught.value}"
    )


def test_hub_repo_without_a_pinned_revision_is_refused(no_bundled):
    with pytest.raises(WeightsNotFoundError, match="XRAY_HUB_REVISION"):
        resolve_weights(bundled_dir=no_bundled, env={"XRAY_HUB_REPO": REPO_ID})


def test_bundled_pin_does_not_leak_onto_another_repository(tmp_path):
    bundled = tmp_path / "weights"
    bundled.mkdir()
    pin = {"repo_id": REPO_ID, "revision": COMMIT, "sha256": "a" * 64}
    (bundled / CONFIG_FILE).write_text(json.dumps({"hub": pin}))
    same = hub_pin(bundled, {})
    assert same == HubPin(REPO_ID, COMMIT, sha256="a" * 64), f"expected the bundled pin, got {same}"
    with pytest.raises(WeightsNotFoundError, match="no revision is pinned"):
        hub_pin(bundled, {"XRAY_HUB_REPO": "someone/else"})
    other = hub_pin(bundled, {"XRAY_HUB_REPO": "someone/else", "XRAY_HUB_REVISION": "b" * 40})
    assert other.sha256 is None, f"expected the bundled sha256 not applied to another repo, got {other}"
