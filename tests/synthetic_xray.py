"""Tiny synthetic NIH-style datasets with a learnable pattern (for training tests).

"Effusion" images carry a bright block in the lower left, "Cardiomegaly" images a bright
disc in the centre; "No Finding" images carry neither.  Background brightness and noise
vary per image, so the pattern, not the mean intensity, identifies the label.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd

CHOICES = ("No Finding", "Effusion", "Cardiomegaly", "Cardiomegaly|Effusion")


def draw(findings: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """``(size, size)`` uint8 image for a ``Finding Labels`` string."""
    base = rng.uniform(0.25, 0.45)
    image = base + rng.normal(0.0, 0.06, (size, size))
    labels = set(findings.split("|"))
    if "Effusion" in labels:
        image[int(size * 0.6) : int(size * 0.95), int(size * 0.05) : int(size * 0.4)] += 0.4
    if "Cardiomegaly" in labels:
        yy, xx = np.mgrid[:size, :size]
        disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size * 0.2) ** 2
        image[disc] += 0.4
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def write_dataset(
    root: Path, *, count: int, size: int = 96, seed: int = 0, images_per_patient: int = 1
) -> tuple[Path, Path]:
    """Write ``count`` PNGs under ``root/images_001/images/`` (NIH layout) and a
    ``Data_Entry_2017_v2020.csv``-style metadata file; returns ``(metadata, images)``."""
    rng = np.random.default_rng(seed)
    folder = root / "images_001" / "images"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        patient = i // images_per_patient + 1
        name = f"{patient:08d}_{i % images_per_patient:03d}.png"
        findings = CHOICES[int(rng.integers(len(CHOICES)))]
        cv2.imwrite(str(folder / name), draw(findings, size, rng))
        rows.append({
            "Image Index": name, "Finding Labels": findings, "Follow-up #": i % images_per_patient,
            "Patient ID": patient, "Patient Age": 50, "Patient Gender": "M", "View Position": "PA",
            "OriginalImage[Width": size, "Height]": size,
            "OriginalImagePixelSpacing[x": 0.143, "y]": 0.143,
        })
    metadata = root / "Data_Entry_2017_v2020.csv"
    pd.DataFrame(rows).to_csv(metadata, index=False)
    return metadata, root
