"""Builders of test inputs: DICOM files from the shared radiographs, and a PNG pixel bomb.

Everything is built in memory from real NIH images so that tests can state exactly
which pixels a decoder must return.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Mapping

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.paths import NIH_IMAGES

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
PATIENT = {
    "PatientName": "Doe^Janet^Q",
    "PatientID": "PID-7731-XQ",
    "PatientBirthDate": "19491231",
    "PatientSex": "F",
    "PatientAddress": "12 Privacy Lane",
    "OtherPatientIDs": "ALT-55123",
    "AccessionNumber": "ACC-99812",
    "InstitutionName": "Saint Nowhere Hospital",
}
"""Identifying values a decoder must never return, log or show."""


def nih_gray(name: str = "00000075_000.png") -> np.ndarray:
    """A shared 512 x 512 NIH radiograph as ``(H, W)`` uint8."""
    with Image.open(NIH_IMAGES / name) as image:
        return np.asarray(image.convert("L"))


def scaled(values: np.ndarray) -> np.ndarray:
    """``values`` scaled by their own range to float64 [0, 1]: what the decoder must return."""
    values = np.asarray(values, dtype=np.float64)
    return (values - values.min()) / (values.max() - values.min())


def make_dicom(
    stored: np.ndarray,
    *,
    bits_stored: int,
    photometric: str = "MONOCHROME2",
    rescale: tuple[float, float] | None = None,
    window: tuple[float, float] | None = None,
    patient: Mapping[str, str] | None = None,
    with_pixels: bool = True,
) -> Dataset:
    """A CR image object holding ``stored`` (uint8 or uint16) as its stored values.

    ``rescale`` = (slope, intercept); ``window`` = (center, width) in rescaled units.
    """
    stored = np.ascontiguousarray(stored)
    bits_allocated = 8 if stored.dtype == np.uint8 else 16
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CR_IMAGE_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = CR_IMAGE_STORAGE
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    for key, value in (patient or {}).items():
        setattr(ds, key, value)
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
        ds.RescaleType = "US"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if with_pixels:
        ds.PixelData = stored.tobytes()
    return ds


def dicom_bytes(ds: Dataset) -> bytes:
    """``ds`` as a DICOM Part 10 file (preamble, ``DICM``, file meta)."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def png_zero_bomb(side: int = 40_000, rows_per_block: int = 400) -> bytes:
    """A valid ``side`` x ``side`` 8-bit grey PNG of zeros, about 1.5 MB for 40000 px.

    The IDAT is one zlib stream of ``side * (side + 1)`` zero bytes (filter byte + row).
    Compressing 1.6 GB would take seconds, so one block of ``rows_per_block`` rows is
    compressed and ended with a full flush, which resets the compressor: every later
    block compresses to the same bytes and is repeated.  The Adler-32 of n zero bytes is
    ``(n mod 65521) << 16 | 1``.
    """
    if side % rows_per_block:
        raise ValueError("side must be a multiple of rows_per_block")
    block = b"\0" * ((side + 1) * rows_per_block)
    compressor = zlib.compressobj(9)
    first = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    repeated = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    final_block = compressor.flush(zlib.Z_FINISH)[:-4]  # empty last block, minus its Adler
    total = (side + 1) * side
    adler = ((total % 65521) << 16) | 1
    stream = first + repeated * (side // rows_per_block - 1) + final_block + adler.to_bytes(4, "big")
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", stream)
        + _png_chunk(b"IEND", b"")
    )
