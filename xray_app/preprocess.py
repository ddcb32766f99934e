"""From a file (path or bytes) to the model's input tensor: the ONE preprocessing definition.

The app, the command line and the training pipeline all go through these functions:

1. :func:`decode_image` reads PNG (8/16-bit, grey, RGB, RGBA, palette), JPEG, TIFF or
   DICOM into a full-resolution greyscale float image in [0, 1], scaled by the image's
   own intensity range (min -> 0, max -> 1).  DICOM gets its Modality LUT (rescale) and
   VOI LUT/window applied, and MONOCHROME1 is inverted so that 1 is always white.
2. :func:`to_model_input` resizes that image to the model's square input size and turns
   it into a normalised 3-channel tensor.  Training applies augmentation between steps 1
   and 2 (and may cache step 1 resized with :func:`resize_gray`), never inside them.

Aspect ratio: images are resized to the square input *without* padding (stretched).  NIH
radiographs are square and most chest films are within 20 % of square, so stretching
loses no field of view and keeps a heatmap's mapping back onto the original a plain
resize; inputs far from square are flagged by the app as probably not chest films.

Bad input raises a subclass of :class:`ImageInputError` whose message starts with the
file's name and says what is wrong.  Sizes are checked from the header before any pixel
is decoded, so a 40000 x 40000 "pixel bomb" costs neither memory nor time.

Privacy: of a DICOM header only modality, body part, view position and photometric
interpretation are ever returned (:data:`SAFE_DICOM_FIELDS`); patient identifiers are
never read into the result, logged or shown.
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
DEFAULT_INPUT_SIZE = 224
DEFAULT_MAX_PIXELS = 50_000_000
DEFAULT_MIN_SIDE = 64
SAFE_DICOM_FIELDS: tuple[str, ...] = (
    "Modality",
    "BodyPartExamined",
    "ViewPosition",
    "PhotometricInterpretation",
)
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601, as PIL's "L"

Source = str | Path | bytes | bytearray | BinaryIO


# --------------------------------------------------------------------------- errors
class ImageInputError(ValueError):
    """An input file cannot be used; ``str(error)`` is a one-line message naming it."""

    def __init__(self, filename: str, problem: str) -> None:
        self.filename = filename
        self.problem = problem
        super().__init__(f"{filename}: {problem}")


class EmptyFileError(ImageInputError):
    """The file has no bytes."""


class NotAnImageError(ImageInputError):
    """The bytes are not a supported image format."""


class TruncatedImageError(ImageInputError):
    """The header is readable but the pixel data is cut short or corrupt."""


class ImageTooSmallError(ImageInputError):
    """A side is shorter than the minimum the model can use."""


class ImageTooLargeError(ImageInputError):
    """More pixels than the budget (checked from the header, before decoding)."""


class NoPixelDataError(ImageInputError):
    """A DICOM file without pixel data (a structured report, a presentation state...)."""


class BlankImageError(ImageInputError):
    """All pixels have the same value: there is nothing to analyse."""


# --------------------------------------------------------------------------- config
@dataclass(frozen=True)
class PreprocessConfig:
    """How a decoded image becomes a model input; stored in each checkpoint's config.json."""

    input_size: int = DEFAULT_INPUT_SIZE
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    max_pixels: int = DEFAULT_MAX_PIXELS
    min_side: int = DEFAULT_MIN_SIDE


@dataclass(frozen=True)
class DecodedImage:
    """A decoded radiograph.

    ``pixels`` is ``(H, W)`` float32 in [0, 1] at the file's own resolution, scaled by its
    own intensity range, 1 = white (bone), whatever the file's photometric convention.
    """

    pixels: np.ndarray
    name: str
    format: str  # "PNG", "JPEG", "TIFF", "DICOM", ...
    mode: str  # PIL mode or e.g. "DICOM 16-bit"
    colourfulness: float  # mean |channel difference| in [0, 1]; 0 for grey images
    dicom: dict[str, str] = field(default_factory=dict)  # only SAFE_DICOM_FIELDS

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def aspect_ratio(self) -> float:
        """Long side over short side, >= 1."""
        return max(self.height, self.width) / min(self.height, self.width)


# --------------------------------------------------------------------------- reading
def _read_bytes(source: Source, name: str | None) -> tuple[bytes, str]:
    """Bytes of ``source`` and the name to use in messages (the file's base name)."""
    if isinstance(source, (bytes, bytearray)):
        return bytes(source), name or "<upload>"
    if isinstance(source, (str, Path)):
        path = Path(source)
        label = name or path.name
        try:
            return path.read_bytes(), label
        except FileNotFoundError:
            raise ImageInputError(label, "file not found") from None
        except IsADirectoryError:
            raise ImageInputError(label, "is a directory, not a file") from None
        except OSError as error:
            raise ImageInputError(label, f"cannot be read ({error.strerror})") from None
    data = source.read()
    return data, name or Path(getattr(source, "name", "<upload>")).name


# Signatures of the raster formats Pillow reads here: a file that starts with one of these
# but cannot be opened is a truncated image, not "not an image".
_RASTER_SIGNATURES: dict[bytes, str] = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# The only DICOM elements ever read: pixel geometry, the LUTs, and SAFE_DICOM_FIELDS.
# Reading with ``specific_tags`` means patient identifiers are never even parsed, so
# they cannot leak through a result, an exception or a warning.
_DICOM_TAGS: tuple[str, ...] = (
    "SOPClassUID",
    "SpecificCharacterSet",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "SamplesPerPixel",
    "PlanarConfiguration",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "PixelPaddingValue",
    "RescaleSlope",
    "RescaleIntercept",
    "RescaleType",
    "ModalityLUTSequence",
    "VOILUTSequence",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "ExtendedOffsetTable",
    "ExtendedOffsetTableLengths",
    "PixelData",
    "FloatPixelData",
    "DoubleFloatPixelData",
    *SAFE_DICOM_FIELDS,
)


def _raster_format(data: bytes) -> str | None:
    for signature, fmt in _RASTER_SIGNATURES.items():
        if data.startswith(signature):
            return fmt
    return None


def _looks_like_dicom(data: bytes, name: str) -> bool:
    """DICOM Part 10 magic, or a ``.dcm`` name on bytes that are not a known raster format."""
    if data[128:132] == b"DICM":
        return True
    return name.lower().endswith((".dcm", ".dicom")) and _raster_format(data) is None


def decode_image(
    source: Source,
    *,
    name: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
) -> DecodedImage:
    """Decode any supported file into a :class:`DecodedImage`.

    Raises a subclass of :class:`ImageInputError` naming the file for every unusable input.
    """
    data, label = _read_bytes(source, name)
    if not data:
        raise EmptyFileError(label, "the file is empty (0 bytes)")
    if _looks_like_dicom(data, label):
        return _decode_dicom(data, label, max_pixels=max_pixels, min_side=min_side)
    return _decode_raster(data, label, max_pixels=max_pixels, min_side=min_side)


def _check_size(label: str, width: int, height: int, *, max_pixels: int, min_side: int) -> None:
    if width * height > max_pixels:
        raise ImageTooLargeError(
            label,
            f"{width} x {height} pixels is more than the limit of "
            f"{max_pixels / 1e6:g} megapixels; please downscale the image",
        )
    if min(width, height) < min_side:
        raise ImageTooSmallError(
            label,
            f"{width} x {height} pixels is too small; each side must be at least {min_side} px",
        )


# --------------------------------------------------------------------------- PNG/JPEG/TIFF
def _png_header_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` from a PNG's IHDR chunk, or None if it is not there."""
    if data.startswith(_PNG_SIGNATURE) and len(data) >= 24 and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return None


def _decode_raster(data: bytes, label: str, *, max_pixels: int, min_side: int) -> DecodedImage:
    # PNG sizes are checked here, before Pillow: its own bomb guard (a fixed ~179 MP,
    # independent of ``max_pixels``) would otherwise answer first without the size.
    png_size = _png_header_size(data)
    if png_size is not None:
        _check_size(label, *png_size, max_pixels=max_pixels, min_side=min_side)
    signature_format = _raster_format(data)
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise ImageTooLargeError(
            label, f"the header declares more than the limit of {max_pixels / 1e6:g} megapixels"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as error:
        if signature_format is not None:  # a real PNG/JPEG/TIFF cut short in its header
            raise TruncatedImageError(
                label, f"the {signature_format} header is truncated or corrupt"
            ) from None
        if isinstance(error, UnidentifiedImageError):
            raise NotAnImageError(
                label, "not a recognised image (expected PNG, JPEG, TIFF or DICOM)"
            ) from None
        raise NotAnImageError(label, f"not a readable image ({error})") from None
    with image:
        width, height = image.size  # from the header: no pixels decoded yet
        _check_size(label, width, height, max_pixels=max_pixels, min_side=min_side)
        fmt = image.format or "image"
        try:
            image.load()
            image = ImageOps.exif_transpose(image)  # photos from phones carry a rotation
        except (OSError, SyntaxError, ValueError, EOFError, zlib.error) as error:
            raise TruncatedImageError(
                label, f"the {fmt} data is truncated or corrupt ({error})"
            ) from None
        mode = image.mode
        gray, colourfulness = _pil_to_gray(image)
    return DecodedImage(
        pixels=_scale_to_unit(gray, label),
        name=label,
        format=fmt,
        mode=mode,
        colourfulness=colourfulness,
    )


def _pil_to_gray(image: Image.Image) -> tuple[np.ndarray, float]:
    """Greyscale float32 array of any PIL mode, and the image's colourfulness in [0, 1]."""
    mode = image.mode
    if mode in ("1", "L", "I", "F") or mode.startswith("I;16"):
        return np.asarray(image, dtype=np.float32), 0.0
    if mode == "LA":
        return np.asarray(image.getchannel("L"), dtype=np.float32), 0.0
    # palette, RGB(A), CMYK, YCbCr, ...: to 8-bit RGB, alpha dropped (NIH's RGBA files
    # carry an opaque alpha; compositing would only invent a background colour)
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    return rgb @ _LUMA, _colourfulness(rgb / 255.0)


def _colourfulness(rgb: np.ndarray) -> float:
    """Mean over pixels of (max channel - min channel), ``rgb`` in [0, 1]."""
    step = max(1, int(np.sqrt(rgb.shape[0] * rgb.shape[1] / 65536)))  # subsample big images
    sample = rgb[::step, ::step]
    return float(np.mean(sample.max(axis=-1) - sample.min(axis=-1)))


def _scale_to_unit(gray: np.ndarray, label: str) -> np.ndarray:
    """Scale by the image's own range to float32 [0, 1]."""
    gray = np.asarray(gray, dtype=np.float32)
    if not np.isfinite(gray).all():
        gray = np.nan_to_num(gray, nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(gray.min()), float(gray.max())
    if high - low <= 1e-12 * max(1.0, abs(high)):
        raise BlankImageError(label, "every pixel has the same value; there is no image to analyse")
    return np.ascontiguousarray((gray - low) / (high - low), dtype=np.float32)


# --------------------------------------------------------------------------- DICOM
def _decode_dicom(data: bytes, label: str, *, max_pixels: int, min_side: int) -> DecodedImage:
    import pydicom  # only DICOM uploads pay for the import
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    has_magic = data[128:132] == b"DICM"
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True, specific_tags=list(_DICOM_TAGS))
    except Exception as error:  # pydicom's parser raises many types on garbage bytes
        # only the type in the message: pydicom's text could quote header values
        if has_magic:
            raise TruncatedImageError(
                label, f"the DICOM header is truncated or corrupt ({type(error).__name__})"
            ) from None
        raise NotAnImageError(label, f"not a readable DICOM file ({type(error).__name__})") from None
    if not has_magic and not any(key in ds for key in ("SOPClassUID", "Rows", "Modality")):
        # force=True parses any bytes into a dataset of nonsense elements
        raise NotAnImageError(
            label, "not a recognised image (expected PNG, JPEG, TIFF or DICOM)"
        )
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise NoPixelDataError(label, "the DICOM file has no pixel data (not an image object)")
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    _check_size(label, columns, rows * frames, max_pixels=max_pixels, min_side=0)
    _check_size(label, columns, rows, max_pixels=max_pixels, min_side=min_side)
    try:
        pixels = ds.pixel_array
    except Exception as error:  # pydicom raises many types (decoder plugins, numpy)
        raise TruncatedImageError(
            label, f"the DICOM pixel data cannot be decoded ({type(error).__name__}: {error})"
        ) from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if frames > 1:
        pixels = pixels[0]  # first frame of a multi-frame object
    colourfulness = 0.0
    if samples > 1:  # colour DICOM (secondary capture, photographs): pixel_array is RGB
        rgb = np.asarray(pixels, dtype=np.float32)
        span = max(float(rgb.max()), 1.0)
        colourfulness = _colourfulness(rgb / span)
        gray = rgb @ _LUMA
    else:
        gray = apply_modality_lut(pixels, ds)
        gray = apply_voi_lut(gray, ds, index=0)
    scaled = _scale_to_unit(gray, label)
    if photometric == "MONOCHROME1":  # 0 means white: invert so that 1 is always white
        scaled = 1.0 - scaled
    info = {key: str(ds.get(key, "")) for key in SAFE_DICOM_FIELDS if ds.get(key, "") != ""}
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)) or 8)
    return DecodedImage(
        pixels=scaled,
        name=label,
        format="DICOM",
        mode=f"DICOM {bits}-bit {photometric}",
        colourfulness=colourfulness,
        dicom=info,
    )


# --------------------------------------------------------------------------- tensor
def resize_gray(pixels: np.ndarray, size: int) -> np.ndarray:
    """Resize a ``(H, W)`` greyscale image to ``(size, size)``, keeping its dtype.

    Area averaging when shrinking (no aliasing of fine lung texture), bilinear when
    enlarging.  Used by :func:`to_model_input` and by the training cache.
    """
    if pixels.ndim != 2:
        raise ValueError(f"expected a (H, W) greyscale image, got shape {pixels.shape}")
    height, width = pixels.shape
    if (height, width) == (size, size):
        return pixels
    shrinking = size < height or size < width
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(pixels, (size, size), interpolation=interpolation)


def to_model_input(
    gray: np.ndarray,
    input_size: int = DEFAULT_INPUT_SIZE,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> torch.Tensor:
    """``(3, input_size, input_size)`` float32 tensor, normalised with ``mean``/``std``.

    ``gray`` is ``(H, W)``: uint8 in [0, 255] (the training cache) or float in [0, 1]
    (:attr:`DecodedImage.pixels`, possibly augmented).  Values are clipped to [0, 1].
    """
    if gray.ndim != 2:
        raise ValueError(f"expected a (H, W) greyscale image, got shape {gray.shape}")
    if gray.dtype == np.uint8:
        gray = gray.astype(np.float32) * (1.0 / 255.0)
    elif not np.issubdtype(gray.dtype, np.floating):
        # a uint16/int array would be clipped to an all-white image
        raise ValueError(f"expected uint8 in [0, 255] or float in [0, 1], got {gray.dtype}")
    resized = resize_gray(np.asarray(gray, dtype=np.float32), input_size)
    unit = torch.from_numpy(np.clip(resized, 0.0, 1.0))
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (unit.unsqueeze(0).expand(3, -1, -1) - mean_t) / std_t


def preprocess(
    source: Source, config: PreprocessConfig | None = None, *, name: str | None = None
) -> tuple[torch.Tensor, DecodedImage]:
    """Decode ``source`` and build its model input: ``((3, S, S) tensor, DecodedImage)``."""
    config = config or PreprocessConfig()
    decoded = decode_image(
        source, name=name, max_pixels=config.max_pixels, min_side=config.min_side
    )
    return to_model_input(decoded.pixels, config.input_size, config.mean, config.std), decoded
