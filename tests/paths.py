"""Where the tests find the shared real data (never copied into this repository)."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
NIH_IMAGES = SHARED_DATA / "nih" / "images"
NIH_ORIGINALS = SHARED_DATA / "nih" / "originals"
DICOM_DIR = SHARED_DATA / "dicom"
