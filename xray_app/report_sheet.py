"""A one-page PNG report sheet for one study: radiograph, top findings, all 15 heatmaps.

Drawn with Pillow only (no matplotlib figure): it is built for every study the web demo
analyses, so it has to cost tens of milliseconds, not a second.  The sheet repeats the
demo's caveats (research demo, not a medical device; UNTRAINED weights when they are)
because it leaves the page on its own.  Of a DICOM header it shows only the safe fields
that :mod:`xray_app.preprocess` returns.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from xray_app import explain
from xray_app.flags import percent
from xray_app.report import DISCLAIMER

if TYPE_CHECKING:
    from xray_app.predictor import Prediction

SHEET_WIDTH = 1500
MARGIN = 30
RADIOGRAPH_SIDE = 640
TILE_SIDE = 276  # 5 heatmap tiles per row
GRID_COLUMNS = 5
CAPTION_HEIGHT = 44
TOP_FINDINGS = 8
WRAP_CHARS = 130  # header lines at 18 px fit the sheet's width

_RED = (180, 20, 20)
_INK = (25, 25, 25)
_MUTED = (95, 95, 95)
_POSITIVE = (200, 60, 20)
_BAR = (70, 110, 170)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _gray_to_rgb(pixels: np.ndarray, side: int) -> np.ndarray:
    """``(H, W)`` float [0, 1] -> ``(h, w, 3)`` uint8 with the long side ``side``."""
    height, width = pixels.shape
    scale = side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = cv2.resize(pixels.astype(np.float32), size, interpolation=cv2.INTER_AREA)
    gray = np.clip(small * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2)


def _header_lines(prediction: Prediction, model_info: Mapping[str, Any]) -> list[tuple[str, tuple]]:
    lines: list[tuple[str, tuple]] = []
    if not model_info.get("trained", False):
        lines.append(("UNTRAINED WEIGHTS: outputs are meaningless (software test only)", _RED))
    lines.append((DISCLAIMER, _RED))
    lines.append((f"Model: {model_info.get('name', '?')}   sha256 {str(model_info.get('sha256', ''))[:12]}", _INK))
    data = f"Trained on: {model_info.get('data') or 'not stated in the weights config'}"
    lines.extend((part, _MUTED) for part in textwrap.wrap(data, width=WRAP_CHARS))
    image = prediction.image
    study = f"File: {prediction.name}   {image.width} x {image.height} px, {image.format}"
    if image.dicom:
        study += "   DICOM " + ", ".join(f"{k} {v}" for k, v in image.dicom.items())
    lines.append((study, _INK))
    lines.append((f"Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC", _MUTED))
    for warning in prediction.warnings:
        for part in textwrap.wrap(f"WARNING: {warning}", width=WRAP_CHARS):
            lines.append((part, _RED))
    return lines


def render_report_sheet(prediction: Prediction, model_info: Mapping[str, Any]) -> Image.Image:
    """The sheet as an RGB :class:`PIL.Image.Image` (``SHEET_WIDTH`` px wide)."""
    header = _header_lines(prediction, model_info)
    header_height = MARGIN + 40 + 26 * len(header) + 20
    grid_rows = -(-len(prediction.probabilities) // GRID_COLUMNS)
    tile_pitch = TILE_SIDE + CAPTION_HEIGHT
    height = header_height + RADIOGRAPH_SIDE + 50 + grid_rows * tile_pitch + 40 + MARGIN
    sheet = Image.new("RGB", (SHEET_WIDTH, height), "white")
    draw = ImageDraw.Draw(sheet)

    draw.text((MARGIN, MARGIN - 6), "Chest X-ray findings: research report", fill=_INK, font=_font(30))
    y = MARGIN + 40
    for text, colour in header:
        draw.text((MARGIN, y), text, fill=colour, font=_font(18))
        y += 26

    # radiograph (left) and the top findings with their thresholds (right)
    y = header_height
    radiograph = Image.fromarray(_gray_to_rgb(prediction.image.pixels, RADIOGRAPH_SIDE))
    sheet.paste(radiograph, (MARGIN, y))
    _draw_findings(draw, prediction, MARGIN + RADIOGRAPH_SIDE + 40, y)

    # every class's heatmap, sorted by probability like the demo's gallery
    y += RADIOGRAPH_SIDE + 20
    draw.text((MARGIN, y), "Heatmaps (Grad-CAM), highest probability first", fill=_INK, font=_font(20))
    y += 30
    caption_font = _font(15)
    gray = explain.shrink(prediction.image.pixels, TILE_SIDE)  # once, not for each of the 15 tiles
    for position, finding_index in enumerate(_order(prediction)):
        finding = prediction.findings[finding_index]
        row, column = divmod(position, GRID_COLUMNS)
        x0 = MARGIN + column * (TILE_SIDE + 11)
        y0 = y + row * tile_pitch
        tile = explain.overlay(
            gray,
            prediction.cams[finding_index],
            strength=explain.display_strength(finding.probability, finding.threshold),
            max_side=TILE_SIDE,
        )
        sheet.paste(Image.fromarray(tile), (x0, y0))
        colour = _POSITIVE if finding.positive else _INK
        draw.text((x0, y0 + tile.shape[0] + 3), finding.display_name, fill=colour, font=caption_font)
        mark = "FLAGGED" if finding.positive else "-"
        draw.text(
            (x0, y0 + tile.shape[0] + 21),
            f"{percent(finding.probability)} (thr {percent(finding.threshold)}) {mark}",
            fill=colour,
            font=caption_font,
        )
    draw.text((MARGIN, height - MARGIN - 10), DISCLAIMER, fill=_RED, font=_font(16))
    return sheet




def _order(prediction: Prediction) -> list[int]:
    return [int(i) for i in np.argsort(-np.asarray(prediction.probabilities), kind="stable")]


def _draw_findings(draw: ImageDraw.ImageDraw, prediction: Prediction, x: int, y: int) -> None:
    bar_width = 300
    draw.text((x, y), f"Top {TOP_FINDINGS} of {len(prediction.findings)} outputs", fill=_INK, font=_font(22))
    draw.text((x, y + 32), "finding / probability / operating point (|)", fill=_MUTED, font=_font(15))
    y += 64
    for finding_index in _order(prediction)[:TOP_FINDINGS]:
        finding = prediction.findings[finding_index]
        colour = _POSITIVE if finding.positive else _INK
        mark = "FLAGGED" if finding.positive else "below"
        draw.text((x, y), finding.display_name, fill=colour, font=_font(20))
        draw.text(
            (x + 250, y),
            f"{percent(finding.probability)}  (thr {percent(finding.threshold)})  {mark}",
            fill=colour,
            font=_font(18),
        )
        bar_y = y + 28
        draw.rectangle((x, bar_y, x + bar_width, bar_y + 10), outline=_MUTED)
        draw.rectangle((x, bar_y, x + round(bar_width * finding.probability), bar_y + 10), fill=_BAR)
        tick = x + round(bar_width * finding.threshold)
        draw.line((tick, bar_y - 4, tick, bar_y + 14), fill=_RED, width=3)
        y += 66


def save_report_sheet(prediction: Prediction, model_info: Mapping[str, Any], path: str | Path) -> Path:
    """Render the sheet and write it as PNG to ``path``; returns the path."""
    path = Path(path)
    render_report_sheet(prediction, model_info).save(path, format="PNG", compress_level=1)
    return path
