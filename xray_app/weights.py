"""Find the weights to run: an explicit path, the bundled ``weights/`` folder, or the Hub.

Order of resolution (the first that applies wins):

1. an explicit path: ``--weights PATH`` or the environment variable ``XRAY_WEIGHTS``
   (a checkpoint directory, or its ``model.safetensors`` with ``config.json`` beside it);
2. the bundled folder ``weights/`` of this repository, when it holds ``model.safetensors``;
3. the Hugging Face Hub: ``hf_hub_download`` of ``model.safetensors`` and ``config.json``
   from the repository and *pinned* revision named in ``weights/config.json``'s ``hub``
   entry, or in ``XRAY_HUB_REPO`` / ``XRAY_HUB_REVISION`` (``XRAY_HUB_SHA256``).  A
   revision is required (a commit hash; ``main`` could change under a running app), and
   the file's sha256 is verified against the pin when one is given.  ``HF_HUB_OFFLINE=1``
   uses only the local cache.  Only safetensors are read: nothing from the network is
   ever unpickled.

If none applies, :class:`WeightsNotFoundError` lists the three ways to provide weights.
There is no fallback to random weights.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from xray_app.model import CONFIG_FILE, WEIGHTS_FILE, LoadedCheckpoint, load_checkpoint

BUNDLED_DIR = Path(__file__).resolve().parent.parent / "weights"


class WeightsNotFoundError(RuntimeError):
    """No weights could be found; the message says how to provide them."""


@dataclass(frozen=True)
class HubPin:
    """Where the published weights live on the Hugging Face Hub."""

    repo_id: str
    revision: str = "main"
    filename: str = WEIGHTS_FILE
    config_filename: str = CONFIG_FILE
    sha256: str | None = None


@dataclass(frozen=True)
class ResolvedWeights:
    """A checkpoint location: ``config_dir/config.json`` and ``weights_path``."""

    config_dir: Path
    weights_path: Path
    source: str  # "explicit", "env", "bundled" or "hub"
    expected_sha256: str | None = None

    def load(self, device: str = "cpu") -> LoadedCheckpoint:
        return load_checkpoint(
            self.config_dir,
            weights_path=self.weights_path,
            expected_sha256=self.expected_sha256,
            device=device,
        )


def _how_to_provide(bundled_dir: Path) -> str:
    return (
        "no model weights found. Provide them in one of three ways:\n"
        "  1. --weights PATH (or the environment variable XRAY_WEIGHTS=PATH): a checkpoint\n"
        "     directory with model.safetensors and config.json, e.g. a training run's best/;\n"
        f"  2. put model.safetensors and config.json in the bundled folder {bundled_dir};\n"
        "  3. the Hugging Face Hub: set XRAY_HUB_REPO=owner/name and XRAY_HUB_REVISION=<commit>\n"
        "     (or the \"hub\" entry of weights/config.json); HF_HUB_OFFLINE=1 uses the local cache."
    )


_SOURCE_WORDING = {"explicit": "--weights", "env": "XRAY_WEIGHTS", "bundled": "bundled"}


def _local_checkpoint(path: Path, source: str) -> ResolvedWeights:
    """``source`` is ``"explicit"``, ``"env"`` or ``"bundled"`` (see :class:`ResolvedWeights`)."""
    what = _SOURCE_WORDING[source]
    if path.is_dir():
        config_dir, weights_path = path, path / WEIGHTS_FILE
    else:
        config_dir, weights_path = path.parent, path
    if not weights_path.is_file():
        raise WeightsNotFoundError(f"{what} weights {path}: {weights_path.name} not found there")
    if not (config_dir / CONFIG_FILE).is_file():
        raise WeightsNotFoundError(
            f"{what} weights {path}: {CONFIG_FILE} not found beside {weights_path.name} "
            "(it says what the outputs mean; weights without it are not used)"
        )
    return ResolvedWeights(config_dir, weights_path, source)


def _bundled_hub_entry(bundled_dir: Path) -> dict:
    """The ``hub`` entry of ``weights/config.json``, ``{}`` when there is none."""
    config_path = bundled_dir / CONFIG_FILE
    if not config_path.is_file():
        return {}
    try:
        data = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise WeightsNotFoundError(f"{config_path} is not valid JSON: {error}") from None
    hub = data.get("hub") if isinstance(data, dict) else None
    return hub if isinstance(hub, dict) else {}


def hub_pin(bundled_dir: Path, env: Mapping[str, str]) -> HubPin | None:
    """The Hub location from the environment, else from ``weights/config.json``'s ``hub``.

    A revision must be pinned (a commit hash, or at least a tag): ``main`` would
    silently change the model under a running app.  The revision and sha256 of
    ``weights/config.json`` only apply to its own repository.
    """
    pinned = _bundled_hub_entry(bundled_dir)
    repo_id = env.get("XRAY_HUB_REPO") or pinned.get("repo_id")
    if not repo_id:
        return None
    same_repo = repo_id == pinned.get("repo_id")
    revision = env.get("XRAY_HUB_REVISION") or (pinned.get("revision") if same_repo else None)
    if not revision:
        raise WeightsNotFoundError(
            f"the Hub repository {repo_id} is named but no revision is pinned: set "
            "XRAY_HUB_REVISION=<commit hash> (or \"revision\" in the \"hub\" entry of "
            "weights/config.json)"
        )
    same_pin = same_repo and revision == pinned.get("revision")
    sha256 = env.get("XRAY_HUB_SHA256") or (pinned.get("sha256") if same_pin else None)
    return HubPin(
        repo_id=repo_id,
        revision=revision,
        filename=pinned.get("filename", WEIGHTS_FILE) if same_repo else WEIGHTS_FILE,
        config_filename=pinned.get("config_filename", CONFIG_FILE) if same_repo else CONFIG_FILE,
        sha256=sha256,
    )


def download_from_hub(pin: HubPin, *, cache_dir: str | Path | None = None) -> ResolvedWeights:
    """``hf_hub_download`` both files at the pinned revision (offline: local cache only)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        weights = hf_hub_download(pin.repo_id, pin.filename, revision=pin.revision, cache_dir=cache_dir)
        config = hf_hub_download(
            pin.repo_id, pin.config_filename, revision=pin.revision, cache_dir=cache_dir
        )
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as error:
        raise WeightsNotFoundError(
            f"could not get {pin.filename} from the Hub repository {pin.repo_id} at revision "
            f"{pin.revision}: {type(error).__name__}: {str(error).splitlines()[0]}"
        ) from None
    config_dir = Path(config).parent
    if Path(weights).parent != config_dir:
        raise WeightsNotFoundError(f"{pin.repo_id}: config and weights must sit side by side")
    return ResolvedWeights(config_dir, Path(weights), "hub", pin.sha256)


def resolve_weights(
    explicit: str | Path | None = None,
    *,
    bundled_dir: Path = BUNDLED_DIR,
    env: Mapping[str, str] | None = None,
    cache_dir: str | Path | None = None,
) -> ResolvedWeights:
    """Apply the resolution order above; raise :class:`WeightsNotFoundError` if nothing fits."""
    env = os.environ if env is None else env
    if explicit:
        return _local_checkpoint(Path(explicit), "explicit")
    if env.get("XRAY_WEIGHTS"):
        return _local_checkpoint(Path(env["XRAY_WEIGHTS"]), "env")
    if (bundled_dir / WEIGHTS_FILE).is_file():
        resolved = _local_checkpoint(bundled_dir, "bundled")
        pinned = _bundled_hub_entry(bundled_dir)
        return ResolvedWeights(
            resolved.config_dir, resolved.weights_path, "bundled", pinned.get("sha256")
        )
    pin = hub_pin(bundled_dir, env)
    if pin is not None:
        return download_from_hub(pin, cache_dir=cache_dir)
    raise WeightsNotFoundError(_how_to_provide(bundled_dir))
