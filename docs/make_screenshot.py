"""Regenerate the README's screenshot of the demo: ``docs/screenshot.png``.

Run from the repository root::

    PYTHONPATH=. python docs/make_screenshot.py --out docs/screenshot.png

It loads the weights the app would load (``--weights``, else ``XRAY_WEIGHTS``, else the
bundled ``weights/``, else the Hub pin), starts the demo in this process on a free
loopback port, opens it in Debian's Chromium through Playwright (the browser at
``/usr/bin/chromium``: ``apt-get install chromium``; never ``playwright install``),
uploads one radiograph, waits until the findings table and all 15 heatmaps are shown,
and writes a full-page PNG. The PNG is optimised with Pillow and, while it is larger than
``--max-kb``, reduced to a palette of 256, 128, then 64 colours.

The default radiograph, ``../shared/data/nih/images/00000075_000.png``, is from the NIH
ChestX-ray14 data set (NIH Clinical Center); it is not redistributed by this repository,
only the screenshot of the app showing it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_IMAGE = REPO.parent / "shared" / "data" / "nih" / "images" / "00000075_000.png"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync"]
PALETTE_SIZES = (256, 128, 64)
TIMEOUT_MS = 180_000  # a shared 2-core CPU: loading the model and the first study take a while


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshot.png", help="PNG to write")
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE, help="radiograph to upload")
    parser.add_argument("--weights", default=None, help="checkpoint directory (default: as app.py)")
    parser.add_argument("--width", type=int, default=1400, help="viewport width in CSS px")
    parser.add_argument("--height", type=int, default=1000, help="viewport height in CSS px")
    parser.add_argument("--max-kb", type=int, default=400, help="quantise the PNG above this size")
    return parser.parse_args(argv)


def check_inputs(args: argparse.Namespace) -> None:
    """Refuse early, with what is missing, instead of failing inside the browser."""
    if not args.image.is_file():
        sys.exit(f"error: radiograph not found: {args.image}")
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        sys.exit(f"error: Chromium not found at {CHROMIUM}: install it with `apt-get install chromium`")


def capture(url: str, image: Path, out: Path, width: int, height: int) -> None:
    """Open ``url``, upload ``image``, wait for findings and heatmaps, screenshot the page."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(url)
            page.wait_for_selector("#upload input[type=file]", state="attached")
            page.locator("#upload input[type=file]").set_input_files(str(image))
            page.wait_for_function(  # all 15 heatmap tiles loaded, not only their captions
                "[...document.querySelectorAll('#heatmaps img')]"
                ".filter(i => i.complete && i.naturalWidth > 0).length === 15"
            )
            page.wait_for_function("document.querySelector('#findings').innerText.includes('▲')"
                                   " || document.querySelector('#findings').innerText.includes('▽')")
            page.wait_for_function(  # the large original/heatmap view
                "[...document.querySelectorAll('#large-view img')]"
                ".some(i => i.complete && i.naturalWidth > 0)"
            )
            page.wait_for_timeout(1000)  # let the slider and table finish painting
            page.screenshot(path=str(out), full_page=True)
        finally:
            browser.close()


def shrink_png(path: Path, max_kb: int, stamp: dict[str, str]) -> None:
    """Re-save ``path`` optimised, with ``stamp`` as PNG text chunks (which weights it
    shows); above ``max_kb`` KB, as a palette image of 256, 128 or 64 colours, the first
    that fits (the last one regardless)."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in stamp.items():
        info.add_text(key, value)
    with Image.open(path) as image:
        rgb = image.convert("RGB")
    rgb.save(path, optimize=True, pnginfo=info)
    for colours in PALETTE_SIZES:
        if path.stat().st_size <= max_kb * 1024:
            return
        rgb.quantize(colors=colours, method=Image.Quantize.MEDIANCUT).save(path, optimize=True, pnginfo=info)


def weights_stamp(checkpoint_dir: Path | None, weights_sha256: str) -> dict[str, str]:
    """The PNG text chunks that tie the screenshot to the weights it shows: the sha256 of
    ``model.safetensors`` and of ``config.json`` (thresholds, calibration, figures)."""
    from xray_app.model import sha256_of

    stamp = {"weights-sha256": weights_sha256}
    if checkpoint_dir is not None and (checkpoint_dir / "config.json").is_file():
        stamp["config-sha256"] = sha256_of(checkpoint_dir / "config.json")
    return stamp


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    check_inputs(args)
    # before gradio is imported: no analytics, and a cache folder of this run's own
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    with tempfile.TemporaryDirectory(prefix="xray-screenshot-") as cache:
        os.environ["GRADIO_TEMP_DIR"] = cache
        try:
            from xray_app import ui
            from xray_app.predictor import Predictor
        except ModuleNotFoundError as error:
            sys.exit(f"error: {error}; run from the repository root with PYTHONPATH=.")

        from xray_app.weights import resolve_weights

        predictor = Predictor.from_weights(args.weights, device="cpu")
        config_dir = resolve_weights(args.weights).config_dir
        demo = ui.build_demo(predictor)
        demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True, **ui.launch_options())
        try:
            start = time.perf_counter()
            args.out.parent.mkdir(parents=True, exist_ok=True)
            capture(demo.local_url, args.image, args.out, args.width, args.height)
        finally:
            demo.close()
    shrink_png(args.out, args.max_kb, weights_stamp(config_dir, predictor.sha256))
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KB) in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
