"""Publish a checkpoint to the Hugging Face Hub: ``model.safetensors``, ``config.json``, card.

    python -m training.publish --checkpoint RUN/best --repo-id OWNER/NAME [--revision main]
        [--card RUN/best/README.md] [--private] [--pin-file weights/config.json]
    python -m training.publish --checkpoint RUN/best --repo-id OWNER/NAME --dry-run --out DIR

The upload folder holds exactly three files: ``model.safetensors`` (byte-identical to
the checkpoint's), ``config.json`` (the checkpoint's, validated by loading it, with its
``hub`` entry set: ``repo_id``, ``revision`` (the branch uploaded to), ``filename``,
``sha256``) and ``README.md`` (the model card, from ``python -m training.model_card``).
``--dry-run`` writes that folder to ``--out`` and touches no network; otherwise the folder
is uploaded with ``huggingface_hub.HfApi().upload_folder`` (after ``create_repo(...,
exist_ok=True)``; a branch other than ``main`` is created if needed).  The token comes
from huggingface_hub's usual places (``HF_TOKEN``, ``hf auth login``).

Afterwards the app is pointed at the upload by ONE edit of ``weights/config.json``: its
``hub`` entry becomes the printed line, whose ``revision`` is the commit hash of the
upload (a pinned, immutable revision, never a branch name) and whose ``sha256`` the app
verifies after downloading.  ``--pin-file weights/config.json`` makes that edit.

An untrained (random-init) checkpoint is refused unless ``--allow-untrained`` is given
(for test repositories).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from xray_app.model import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    load_checkpoint,
    read_config,
    write_config,
)

CARD_FILE = "README.md"
UPLOAD_FILES = (WEIGHTS_FILE, CONFIG_FILE, CARD_FILE)


class PublishError(ValueError):
    """The checkpoint, the card or the destination cannot be published as asked."""


def hub_entry(repo_id: str, revision: str, sha256: str) -> dict[str, str]:
    """The ``hub`` entry of ``config.json`` (what :mod:`xray_app.weights` reads)."""
    return {"repo_id": repo_id, "revision": revision, "filename": WEIGHTS_FILE, "sha256": sha256}


def stage(
    checkpoint_dir: Path,
    card: Path,
    out: Path,
    *,
    repo_id: str,
    revision: str,
    allow_untrained: bool = False,
) -> str:
    """Write the upload folder into ``out`` (must be absent or empty); returns the sha256."""
    checkpoint = load_checkpoint(checkpoint_dir)  # labels, head and format checked here
    if not checkpoint.config.trained and not allow_untrained:
        raise PublishError(
            f"{checkpoint_dir / CONFIG_FILE} says trained: false (random weights); refusing to "
            "publish them (use --allow-untrained for a test repository)"
        )
    if not card.is_file():
        raise PublishError(
            f"model card {card} not found; write it with python -m training.model_card "
            f"--checkpoint {checkpoint_dir} ... --out {card}"
        )
    if out.exists() and any(out.iterdir()):
        raise PublishError(f"{out} is not empty; the upload folder must hold exactly {UPLOAD_FILES}")
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(checkpoint_dir / WEIGHTS_FILE, out / WEIGHTS_FILE)
    config = checkpoint.config.with_updates(hub=hub_entry(repo_id, revision, checkpoint.sha256))
    write_config(config, out / CONFIG_FILE)
    shutil.copyfile(card, out / CARD_FILE)
    # what is uploaded must load as it is, with the pinned hash
    load_checkpoint(out, expected_sha256=checkpoint.sha256)
    return checkpoint.sha256


def upload(
    folder: Path, *, repo_id: str, revision: str, private: bool | None, message: str
) -> str:
    """Upload ``folder`` to the Hub; returns the commit hash (the revision to pin)."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    if revision != "main":
        api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
    info = api.upload_folder(
        repo_id=repo_id, folder_path=str(folder), repo_type="model", revision=revision,
        commit_message=message,
    )
    return info.oid


def pin_line(repo_id: str, commit: str, sha256: str) -> str:
    """The one edit of ``weights/config.json``: its ``hub`` entry."""
    return '"hub": ' + json.dumps(hub_entry(repo_id, commit, sha256))


def write_pin(path: Path, repo_id: str, commit: str, sha256: str) -> None:
    """Set the ``hub`` entry of ``path`` (the config.json of the weights the app ships
    with), keeping everything else; written by :func:`xray_app.model.write_config`."""
    config = read_config(path)
    write_config(config.with_updates(hub=hub_entry(repo_id, commit, sha256)), path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.publish",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint directory")
    parser.add_argument("--repo-id", required=True, help="OWNER/NAME on the Hugging Face Hub")
    parser.add_argument("--revision", default="main", help="branch to upload to (default main)")
    parser.add_argument("--card", type=Path, help="model card (default CHECKPOINT/README.md)")
    parser.add_argument("--dry-run", action="store_true",
                        help="write the upload folder to --out; no network")
    parser.add_argument("--out", type=Path, help="the folder to write (required with --dry-run)")
    parser.add_argument("--private", action=argparse.BooleanOptionalAction, default=None,
                        help="visibility of a repository created now")
    parser.add_argument("--message", default=None, help="commit message")
    parser.add_argument("--pin-file", type=Path,
                        help="after uploading, write the hub entry into this config.json (an existing model config)")
    parser.add_argument("--allow-untrained", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.dry_run and args.out is None:
        print("error: --dry-run needs --out DIR", file=sys.stderr)
        return 2
    if "/" not in args.repo_id:
        print(f"error: --repo-id {args.repo_id!r}: expected OWNER/NAME", file=sys.stderr)
        return 2
    card = args.card or args.checkpoint / CARD_FILE
    with tempfile.TemporaryDirectory(prefix="publish-") as tmp:
        folder = args.out if args.out is not None else Path(tmp) / "upload"
        try:
            sha = stage(args.checkpoint, card, folder, repo_id=args.repo_id,
                        revision=args.revision, allow_untrained=args.allow_untrained)
            if args.pin_file:
                read_config(args.pin_file)  # the file to pin must be a model config: checked before uploading
        except (PublishError, CheckpointError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        print(f"sha256 of {WEIGHTS_FILE}: {sha}")
        if args.dry_run:
            print(f"dry run: wrote {', '.join(UPLOAD_FILES)} to {folder}; nothing uploaded")
            print("after the upload, edit weights/config.json: "
                  + pin_line(args.repo_id, "<commit hash printed by the upload>", sha))
            return 0
        message = args.message or f"Upload {WEIGHTS_FILE} (sha256 {sha[:12]}), config and card"
        from huggingface_hub.errors import HfHubHTTPError

        try:
            commit = upload(folder, repo_id=args.repo_id, revision=args.revision,
                            private=args.private, message=message)
        except (HfHubHTTPError, OSError, ValueError) as error:
            print(f"error: upload to {args.repo_id} failed: {error}", file=sys.stderr)
            return 1
    print(f"uploaded to https://huggingface.co/{args.repo_id} ({args.revision}): commit {commit}")
    print("pin it in weights/config.json: " + pin_line(args.repo_id, commit, sha))
    if args.pin_file:
        write_pin(args.pin_file, args.repo_id, commit, sha)
        print(f"wrote the hub entry into {args.pin_file}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
