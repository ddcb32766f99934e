"""Programs from Debian packages that some tests drive: find them, or skip (fail under CI).

Without the program the test is skipped with the reason, except under ``CI=true`` where
that is a failure: ``make test`` installs the packages when run as root (``make
dicom-tools``), exactly as it does Chromium for the browser test.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

DCIODVFY = "dciodvfy"  # Debian package dicom3tools
ORTHANC = "Orthanc"  # Debian packages orthanc and orthanc-dicomweb
ORTHANC_DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def require_program(name: str, package: str, extra: Path | None = None) -> str:
    """The path of program ``name``; skips (or fails under ``CI=true``) when it is missing."""
    found = shutil.which(name)
    if found and (extra is None or extra.is_file()):
        return found
    missing = name if not found else str(extra)
    reason = (f"{missing} not found: install it with `apt-get install {package}` "
              "(or `make dicom-tools` as root)")
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}; under CI=true this test must run")
    pytest.skip(reason)


def dciodvfy_report(path: Path) -> tuple[list[str], list[str]]:
    """(errors, warnings) that ``dciodvfy`` reports for the DICOM file at ``path``."""
    program = require_program(DCIODVFY, "dicom3tools")
    run = subprocess.run([program, str(path)], capture_output=True, text=True, timeout=60)
    lines = (run.stdout + run.stderr).splitlines()
    errors = [line for line in lines if re.match(r"^\s*Error\b", line)]
    warnings = [line for line in lines if re.match(r"^\s*Warning\b", line)]
    return errors, warnings
