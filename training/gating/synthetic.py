"""Images generated or varied in code, never stored: augmented variants of real images
(as another hospital or a journal figure shows them), photographs and an MR slice shipped
by installed packages, rendered document pages, and synthetic non-radiographs."""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image, ImageDraw

from xray_app.preprocess import decode_image

GENERATED_KINDS = (
    "colour_field",
    "uniform_noise",
    "gaussian_noise",
    "linear_gradient",
    "radial_gradient",
    "checkerboard",
    "text_page",
    "dead_leaves",
)


# --------------------------------------------------------------------------- augmentation
def augment(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A plausible variant of a decoded ``(H, W)`` float image in [0, 1]: how the same
    kind of image arrives from another hospital or a journal figure."""
    image = pixels.astype(np.float32)
    height, width = image.shape
    if rng.random() < 0.8:  # crop: 70-100 % of each side
        h, w = (int(s * rng.uniform(0.7, 1.0)) for s in (height, width))
        top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        image = image[top : top + h, left : left + w]
    if rng.random() < 0.5:
        image = image[:, ::-1]
    if rng.random() < 0.6:
        angle = rng.uniform(-12, 12)
        h, w = image.shape
        matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
        image = cv2.warpAffine(np.ascontiguousarray(image), matrix, (w, h),
                               borderMode=cv2.BORDER_CONSTANT, borderValue=float(rng.random() < 0.3))
    image = np.clip(image, 0, 1) ** float(np.exp(rng.normal(0, 0.3)))
    low, high = np.sort(rng.uniform(-0.1, 0.15, 2)) + np.array([0.0, 0.85])
    image = np.clip((image - low) / max(high - low, 0.2), 0, 1)
    if rng.random() < 0.3:
        image = cv2.GaussianBlur(image, (0, 0), float(rng.uniform(0.5, 2.5)))
    if rng.random() < 0.3:
        image = _border(image, rng)
    if rng.random() < 0.4:
        image = _annotate(image, rng)
    if rng.random() < 0.6:
        image = _jpeg(image, int(rng.integers(25, 95)))
    return np.ascontiguousarray(image, dtype=np.float32)


def _border(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    pad = [int(s * rng.uniform(0.0, 0.08)) for s in (*image.shape, *image.shape)]
    value = float(rng.random() < 0.5)
    return cv2.copyMakeBorder(np.ascontiguousarray(image), pad[0], pad[1], pad[2], pad[3],
                              cv2.BORDER_CONSTANT, value=value)


def _annotate(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Arrows and letters in white or black, as in journal figures."""
    out = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)  # OpenCV draws text on 8 bit
    h, w = out.shape
    colour = 255 * int(rng.random() < 0.7)
    thickness = max(1, int(min(h, w) / 150))
    for _ in range(int(rng.integers(1, 4))):
        x, y = int(rng.uniform(0.1, 0.9) * w), int(rng.uniform(0.1, 0.9) * h)
        dx, dy = (int(rng.uniform(-0.15, 0.15) * s) for s in (w, h))
        cv2.arrowedLine(out, (x + dx, y + dy), (x, y), colour, thickness, tipLength=0.3)
    letters = "ABCDLRPA0123456789"
    for _ in range(int(rng.integers(0, 3))):
        text = "".join(rng.choice(list(letters), int(rng.integers(1, 4))))
        x, y = int(rng.uniform(0.02, 0.8) * w), int(rng.uniform(0.08, 0.98) * h)
        cv2.putText(out, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, min(h, w) / 400, colour,
                    thickness, cv2.LINE_AA)
    return out.astype(np.float32) / 255.0


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    ok, encoded = cv2.imencode(".jpg", (image * 255).round().astype(np.uint8),
                               [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        return image
    return cv2.imdecode(encoded, cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255.0


# --------------------------------------------------------------------------- "other" images
def sample_photographs() -> list[np.ndarray]:
    """Grey ``(H, W)`` float images of photographs and an MR slice shipped by installed
    packages (matplotlib's sample data, scikit-learn's sample images); never stored here."""
    from matplotlib import cbook
    from sklearn.datasets import load_sample_images

    images = [np.asarray(Image.fromarray(rgb).convert("L"), np.float32) / 255.0
              for rgb in load_sample_images().images]
    for name in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png"):
        with cbook.get_sample_data(name) as handle:
            images.append(decode_image(handle.read(), name=name).pixels)
    with cbook.get_sample_data("s1045.ima.gz") as handle:  # a 256 x 256 MR slice, uint16
        mr = np.frombuffer(handle.read(), np.uint16).reshape(256, 256).astype(np.float32)
    images.append(mr / mr.max())
    return images


def document_page(rng: np.random.Generator, size: int = 512) -> np.ndarray:
    """A rendered page: lines of text, sometimes a table or a chart, on a light background."""
    page = Image.new("L", (size, int(size * rng.uniform(0.9, 1.4))), int(rng.integers(215, 256)))
    draw = ImageDraw.Draw(page)
    letters = list("abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789.,;:()")
    y = int(rng.integers(5, 30))
    while y < page.height - 15:
        if rng.random() < 0.08:  # a table or chart block
            bottom = min(page.height - 5, y + int(rng.integers(40, 140)))
            draw.rectangle((10, y, page.width - 10, bottom), outline=0)
            for x in range(10, page.width - 10, int(rng.integers(30, 120))):
                draw.line((x, y, x, bottom), fill=int(rng.integers(0, 120)))
            y = bottom + 8
            continue
        text = "".join(rng.choice(letters, int(rng.integers(10, 90))))
        draw.text((int(rng.integers(5, 25)), y), text, fill=int(rng.integers(0, 90)))
        y += int(rng.integers(9, 20))
    return np.asarray(page, np.float32) / 255.0


def other_images(n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``n`` grey non-radiographs: document pages, augmented photographs and MR slice,
    and the synthetic scenes of :func:`generate_non_radiographs`."""
    photos = sample_photographs()
    scenes = [decode_image(png).pixels for _, png in
              generate_non_radiographs(max(1, n // 4), seed=int(rng.integers(1 << 31)))]
    images: list[np.ndarray] = []
    for i in range(n):
        choice = i % 3
        if choice == 0:
            images.append(augment(document_page(rng), rng))
        elif choice == 1:
            images.append(augment(photos[int(rng.integers(len(photos)))], rng))
        else:
            images.append(scenes[int(rng.integers(len(scenes)))])
    return images


# --------------------------------------------------------------------------- non-radiographs
def _smooth_field(rng: np.random.Generator, size: int, channels: int, cells: int) -> np.ndarray:
    """Low-frequency random field in [0, 1], ``(size, size, channels)``."""
    coarse = rng.random((cells, cells, channels)).astype(np.float32)
    image = Image.fromarray((coarse * 255).astype(np.uint8).squeeze())
    return np.asarray(image.resize((size, size), Image.Resampling.BICUBIC), np.float32) / 255.0


def _generate_one(kind: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """One ``(size, size, 3)`` uint8 RGB image of the given kind."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if kind == "colour_field":
        rgb = _smooth_field(rng, size, 3, int(rng.integers(3, 12)))
    elif kind == "uniform_noise":
        rgb = rng.random((size, size, 3))
    elif kind == "gaussian_noise":
        grey = np.clip(rng.normal(0.5, 0.2, (size, size, 1)), 0, 1)
        rgb = np.repeat(grey, 3, axis=2)
    elif kind == "linear_gradient":
        angle = rng.uniform(0, 2 * np.pi)
        ramp = (np.cos(angle) * xx + np.sin(angle) * yy)
        ramp = (ramp - ramp.min()) / (np.ptp(ramp) + 1e-6)
        low, high = rng.random(3), rng.random(3)
        rgb = low + ramp[..., None] * (high - low)
    elif kind == "radial_gradient":
        cy, cx = rng.uniform(0.2, 0.8, 2)
        radius = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
        ramp = radius / radius.max()
        low, high = rng.random(3), rng.random(3)
        rgb = low + ramp[..., None] * (high - low)
    elif kind == "checkerboard":
        cells = int(rng.integers(2, 17))
        board = ((np.floor(xx * cells) + np.floor(yy * cells)) % 2)[..., None]
        a, b = rng.random(3), rng.random(3)
        rgb = a + board * (b - a)
    elif kind == "text_page":
        page = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(200, 256, 3)))
        draw = ImageDraw.Draw(page)
        letters = "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789.,"
        for line_y in range(4, size - 10, int(rng.integers(10, 18))):
            text = "".join(rng.choice(list(letters), int(rng.integers(10, size // 6))))
            draw.text((int(rng.integers(2, 12)), line_y), text, fill=(0, 0, 0))
        return np.asarray(page, dtype=np.uint8)
    elif kind == "dead_leaves":  # occluding coloured discs: natural-image-like statistics
        scene = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(scene)
        for _ in range(int(rng.integers(40, 120))):
            r = float(size * rng.uniform(0.02, 0.25) ** 1.5 * 3)
            cx, cy = rng.uniform(0, size, 2)
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
        return np.asarray(scene, dtype=np.uint8)
    else:
        raise ValueError(f"unknown kind {kind!r}; expected one of {GENERATED_KINDS}")
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def generate_non_radiographs(
    n: int, *, seed: int, size: int = 256
) -> list[tuple[str, bytes]]:
    """``n`` PNG-encoded non-radiographs ``(kind, png_bytes)``, cycling through the kinds.

    PNG bytes go through the app's own decoding (colour -> grey, range scaling), so the
    gate is evaluated on what the app would actually see.
    """
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        kind = GENERATED_KINDS[i % len(GENERATED_KINDS)]
        buffer = io.BytesIO()
        Image.fromarray(_generate_one(kind, rng, size)).save(buffer, format="PNG")
        images.append((kind, buffer.getvalue()))
    return images

