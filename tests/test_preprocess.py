"""The one preprocessing definition: decoding every supported format, refusing bad input."""

from __future__ import annotations

import io
import logging
import struct
import tracemalloc
import zlib

import numpy as np
import pydicom
import pytest
import tifffile
import torch
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from tests.dicom_factory import (
    PATIENT,
    dicom_bytes,
    make_dicom,
    nih_gray,
    png_zero_bomb,
    scaled,
)
from tests.paths import DICOM_DIR, NIH_IMAGES, NIH_ORIGINALS
from xray_app.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SAFE_DICOM_FIELDS,
    DecodedImage,
    EmptyFileError,
    ImageInputError,
    ImageTooLargeError,
    ImageTooSmallError,
    NoPixelDataError,
    NotAnImageError,
    PreprocessConfig,
    TruncatedImageError,
    decode_image,
    preprocess,
    resize_gray,
    to_model_input,
)

EXACT = 1e-6  # float32 rounding of a lossless decode


def png_bytes(image: Image.Image, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **params)
    return buffer.getvalue()


def jpeg_bytes(gray: np.ndarray, quality: int = 95) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(gray).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def max_error(decoded: DecodedImage, expected: np.ndarray) -> float:
    return float(np.abs(decoded.pixels.astype(np.float64) - expected).max())


@pytest.fixture(scope="module")
def gray() -> np.ndarray:
    return nih_gray()


@pytest.fixture(scope="module")
def gray16(gray) -> np.ndarray:
    """A 16-bit image whose low byte carries information: 8-bit truncation would show."""
    rng = np.random.default_rng(7)
    return (gray.astype(np.uint16) << 8) | rng.integers(0, 256, gray.shape, dtype=np.uint16)


# --------------------------------------------------------------------------- rasters
def test_8bit_png_decodes_at_full_resolution_scaled_by_its_own_range():
    path = NIH_IMAGES / "00000211_000.png"
    raw = np.asarray(Image.open(path))
    decoded = decode_image(path)
    assert decoded.pixels.shape == (512, 512), f"expected (512, 512), got {decoded.pixels.shape}"
    assert decoded.pixels.dtype == np.float32, f"expected float32, got {decoded.pixels.dtype}"
    assert decoded.pixels.min() == 0.0 and decoded.pixels.max() == 1.0, (
        "expected the image's own min -> 0 and max -> 1"
    )
    assert max_error(decoded, scaled(raw)) < EXACT, "expected (x - min) / (max - min) exactly"
    assert decoded.name == "00000211_000.png", f"expected the file's name, got {decoded.name}"
    assert decoded.format == "PNG" and decoded.colourfulness == 0.0, "expected a grey PNG"


def test_path_and_bytes_decode_to_the_same_pixels():
    path = NIH_IMAGES / "00000075_000.png"
    from_path = decode_image(path).pixels
    from_bytes = decode_image(path.read_bytes(), name="upload.png").pixels
    assert np.array_equal(from_path, from_bytes), "expected identical pixels from path and bytes"


def test_16bit_png_keeps_all_16_bits(gray16):
    data = png_bytes(Image.fromarray(gray16))
    assert data[24] == 16, f"test setup: expected a 16-bit PNG, IHDR says {data[24]} bits"
    decoded = decode_image(data, name="sixteen.png")
    error = max_error(decoded, scaled(gray16))
    assert error < 1e-5, f"expected the 16-bit values scaled exactly (8-bit would err ~4e-3), got {error}"


def test_16bit_png_with_a_narrow_value_range_is_stretched_to_unit_range(gray):
    narrow = (gray.astype(np.uint16) * 4 + 30_000).astype(np.uint16)  # 30000..31020
    decoded = decode_image(png_bytes(Image.fromarray(narrow)), name="narrow.png")
    assert max_error(decoded, scaled(narrow)) < 1e-5, (
        "expected a 1020-level range inside 16 bits to be scaled to [0, 1] by its own range"
    )


def test_rgb_png_of_a_grey_image_decodes_to_the_grey_pixels(gray):
    rgb = Image.fromarray(np.stack([gray] * 3, axis=-1))
    decoded = decode_image(png_bytes(rgb), name="rgb.png")
    assert decoded.mode == "RGB", f"test setup: expected an RGB file, got {decoded.mode}"
    assert max_error(decoded, scaled(gray)) < 1e-5, "expected R=G=B to decode to the grey pixels"
    assert decoded.colourfulness == 0.0, f"expected colourfulness 0, got {decoded.colourfulness}"


def test_colour_photo_has_positive_colourfulness(gray):
    rgb = np.stack([gray, gray // 2, 255 - gray], axis=-1)
    decoded = decode_image(png_bytes(Image.fromarray(rgb)), name="photo.png")
    assert decoded.colourfulness > 0.2, f"expected a clearly colourful image, got {decoded.colourfulness}"


@pytest.mark.parametrize("name", ["00000100_000.png", "00004934_000.png", "00005224_000.png"])
def test_nih_rgba_original_decodes_to_its_grey_content(name):
    path = NIH_ORIGINALS / name
    rgba = np.asarray(Image.open(path))
    assert rgba.shape == (1024, 1024, 4), f"test setup: expected an RGBA original, got {rgba.shape}"
    decoded = decode_image(path)
    assert decoded.pixels.shape == (1024, 1024), "expected the original 1024 px resolution"
    assert max_error(decoded, scaled(rgba[..., 0])) < 1e-5, (
        "expected the RGBA file to decode to its grey channel, alpha ignored"
    )
    assert decoded.colourfulness == 0.0, "expected a grey RGBA image to count as grey"


def test_palette_png_decodes_through_its_palette(gray):
    # indices are a permutation of grey levels: only a decoder that applies the palette
    # recovers the image
    levels = np.arange(256, dtype=np.uint8)
    palette_of_index = np.random.default_rng(3).permutation(levels)
    index_of_level = np.argsort(palette_of_index).astype(np.uint8)
    image = Image.fromarray(index_of_level[gray], mode="P")
    image.putpalette(np.repeat(palette_of_index, 3).tolist())
    decoded = decode_image(png_bytes(image), name="palette.png")
    assert decoded.mode == "P", f"test setup: expected a palette file, got {decoded.mode}"
    assert max_error(decoded, scaled(gray)) < 1e-5, "expected palette colours, not indices"


def test_grey_alpha_png_decodes_to_its_grey_channel(gray):
    la = Image.fromarray(np.stack([gray, np.full_like(gray, 255)], axis=-1), mode="LA")
    decoded = decode_image(png_bytes(la), name="la.png")
    assert max_error(decoded, scaled(gray)) < 1e-5, "expected the L channel of an LA image"


def test_jpeg_decodes_close_to_the_original(gray):
    decoded = decode_image(jpeg_bytes(gray), name="x.jpg")
    assert decoded.format == "JPEG", f"expected JPEG, got {decoded.format}"
    error = float(np.abs(decoded.pixels - scaled(gray)).mean())
    assert error < 0.01, f"expected a quality-95 JPEG within 0.01 mean error, got {error}"


@pytest.mark.parametrize("bits", [8, 16])
def test_tiff_decodes_exactly(gray, gray16, bits):
    pixels = gray if bits == 8 else gray16
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, pixels)
    decoded = decode_image(buffer.getvalue(), name=f"x{bits}.tif")
    assert decoded.format == "TIFF", f"expected TIFF, got {decoded.format}"
    assert max_error(decoded, scaled(pixels)) < 1e-5, f"expected the {bits}-bit TIFF exactly"


# --------------------------------------------------------------------------- DICOM
@pytest.fixture(scope="module")
def siim() -> DecodedImage:
    return decode_image(DICOM_DIR / "siim_pneumothorax_example.dcm")


def test_shared_jpeg_baseline_dicom_decodes_with_safe_fields_only(siim):
    raw = pydicom.dcmread(DICOM_DIR / "siim_pneumothorax_example.dcm").pixel_array
    assert siim.pixels.shape == (1024, 1024), f"expected 1024 x 1024, got {siim.pixels.shape}"
    assert max_error(siim, scaled(raw)) < 1e-5, "expected the JPEG-decoded values, scaled"
    assert siim.dicom.get("PhotometricInterpretation") == "MONOCHROME2", f"got {siim.dicom}"
    assert set(siim.dicom) <= set(SAFE_DICOM_FIELDS), f"expected only safe fields, got {siim.dicom}"


def test_shared_monochrome1_dicom_is_the_inverse_of_the_monochrome2_one(siim):
    mono1 = decode_image(DICOM_DIR / "fake_monochrome1_example.dcm")
    error = float(np.abs(mono1.pixels - (1.0 - siim.pixels)).max())
    assert error < 1e-6, f"expected MONOCHROME1 decoded as 1 - the MONOCHROME2 image, error {error}"


def test_shared_dicoms_never_expose_their_patient_identifiers(siim):
    header = pydicom.dcmread(DICOM_DIR / "siim_pneumothorax_example.dcm", stop_before_pixels=True)
    for value in (str(header.PatientName), str(header.PatientID)):
        assert value not in repr(siim), f"expected {value!r} absent from the DecodedImage"


def test_12bit_dicom_keeps_all_12_bits(gray):
    stored = (gray.astype(np.uint16) << 4) | (np.arange(gray.size).reshape(gray.shape) % 16).astype(np.uint16)
    decoded = decode_image(dicom_bytes(make_dicom(stored, bits_stored=12)), name="twelve.dcm")
    assert decoded.format == "DICOM" and "12-bit" in decoded.mode, f"got {decoded.mode}"
    assert max_error(decoded, scaled(stored)) < 1e-5, "expected the 12-bit values, scaled"


def test_16bit_dicom_applies_rescale_then_window(gray16):
    slope, intercept = 0.5, -1024.0
    hu = gray16.astype(np.float64) * slope + intercept
    center, width = float(np.percentile(hu, 50)), float(np.percentile(hu, 75) - np.percentile(hu, 25))
    ds = make_dicom(gray16, bits_stored=16, rescale=(slope, intercept), window=(center, width))
    decoded = decode_image(dicom_bytes(ds), name="windowed.dcm")
    expected = np.clip((hu - center) / width + 0.5, 0.0, 1.0)
    error = max_error(decoded, expected)
    assert error < 2e-3, f"expected the window [{center - width / 2}, {center + width / 2}] applied, error {error}"
    clipped = float(np.mean((decoded.pixels == 0.0) | (decoded.pixels == 1.0)))
    assert 0.4 < clipped < 0.6, f"expected about half the pixels clipped by the window, got {clipped}"


def test_voi_lut_sequence_is_applied(gray):
    stored = (gray.astype(np.uint16) * 16).astype(np.uint16)  # 12-bit
    ds = make_dicom(stored, bits_stored=12)
    curve = np.sqrt(np.arange(4096) / 4095.0)  # a non-linear display curve
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.add_new(0x00283006, "OW", (curve * 65535).round().astype("<u2").tobytes())  # LUTData
    ds.VOILUTSequence = [item]
    decoded = decode_image(dicom_bytes(ds), name="voilut.dcm")
    expected = scaled(curve[stored])
    error = max_error(decoded, expected)
    assert error < 1e-4, f"expected the VOI LUT's square-root curve applied, error {error}"


def test_signed_16bit_dicom_decodes_by_its_own_range(gray16):
    signed = (gray16.astype(np.int32) - 32768).astype(np.int16)
    ds = make_dicom(gray16, bits_stored=16)
    ds.PixelRepresentation = 1
    ds.PixelData = signed.tobytes()
    decoded = decode_image(dicom_bytes(ds), name="signed.dcm")
    assert max_error(decoded, scaled(signed)) < 1e-5, "expected negative values read as signed"


def test_rescale_without_window_is_scaled_by_its_own_range(gray16):
    ds = make_dicom(gray16, bits_stored=16, rescale=(2.0, -3000.0))
    decoded = decode_image(dicom_bytes(ds), name="rescaled.dcm")
    assert max_error(decoded, scaled(gray16)) < 1e-5, "expected a linear rescale to scale away"


def test_monochrome1_with_inverted_pixels_decodes_like_the_monochrome2_original(gray):
    stored = (gray.astype(np.uint16) * 16).astype(np.uint16)
    mono2 = decode_image(dicom_bytes(make_dicom(stored, bits_stored=12)), name="m2.dcm")
    inverted = (4095 - stored).astype(np.uint16)
    mono1 = decode_image(
        dicom_bytes(make_dicom(inverted, bits_stored=12, photometric="MONOCHROME1")), name="m1.dcm"
    )
    error = float(np.abs(mono1.pixels - mono2.pixels).max())
    assert error < 1e-5, f"expected inverted MONOCHROME1 to decode like MONOCHROME2, error {error}"
    assert mono1.dicom["PhotometricInterpretation"] == "MONOCHROME1", "expected the field exposed"


@pytest.mark.parametrize(
    "syntax, plugin",
    [(RLELossless, None), (JPEG2000Lossless, "pylibjpeg")],
    ids=["rle", "jpeg2000"],
)
def test_compressed_dicom_decodes_like_the_uncompressed_one(gray16, syntax, plugin):
    stored = gray16 >> 4  # 12-bit
    plain = decode_image(dicom_bytes(make_dicom(stored, bits_stored=12)), name="plain.dcm")
    ds = make_dicom(stored, bits_stored=12)
    ds.compress(syntax, **({"encoding_plugin": plugin} if plugin else {}))
    data = dicom_bytes(ds)
    assert pydicom.dcmread(io.BytesIO(data)).file_meta.TransferSyntaxUID == syntax, (
        f"test setup: expected a file in {syntax.name}"
    )
    decoded = decode_image(data, name="compressed.dcm")
    assert np.array_equal(decoded.pixels, plain.pixels), f"expected {syntax.name} to decode losslessly"


def test_jpeg_ls_dicom_decodes_with_the_apps_own_decoder(gray, monkeypatch):
    """Encoded with pyjpegls (a test-only dependency), decoded by pylibjpeg-libjpeg alone,
    the plugin requirements.txt ships: pyjpegls is removed from pydicom's decoders."""
    from pydicom.pixels.decoders import JPEGLSLosslessDecoder

    ds = make_dicom(gray.astype(np.uint16) * 16, bits_stored=12)
    ds.compress(JPEGLSLossless, encoding_plugin="pyjpegls")
    data = dicom_bytes(ds)
    assert pydicom.dcmread(io.BytesIO(data)).file_meta.TransferSyntaxUID == JPEGLSLossless, "test setup"
    plugins = dict(JPEGLSLosslessDecoder._available)
    monkeypatch.setattr(JPEGLSLosslessDecoder, "_available", {k: v for k, v in plugins.items() if k == "pylibjpeg"})
    assert JPEGLSLosslessDecoder.available_plugins == ("pylibjpeg",), "expected only the app's decoder left"
    decoded = decode_image(data, name="jpegls.dcm")
    assert max_error(decoded, scaled(gray)) < 1e-5, "expected JPEG-LS lossless to decode exactly"


def test_jpeg_lossless_process_14_dicom_decodes_exactly(gray16):
    """JPEG Lossless, first-order prediction (1.2.840.10008.1.2.4.70), the syntax many CR
    and DX archives use: encoded with imagecodecs (libjpeg-turbo, a test-only dependency),
    decoded by the app's pylibjpeg-libjpeg."""
    import imagecodecs
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLosslessSV1

    stored = gray16 >> 4  # 12-bit
    plain = decode_image(dicom_bytes(make_dicom(stored, bits_stored=12)), name="plain.dcm")
    frame = imagecodecs.jpeg8_encode(stored, lossless=True, predictor=1, bitspersample=12)
    ds = make_dicom(stored, bits_stored=12)
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    decoded = decode_image(dicom_bytes(ds), name="lossless.dcm")
    assert np.array_equal(decoded.pixels, plain.pixels), "expected JPEG Lossless SV1 to decode exactly"


def test_dicom_without_pixel_data_is_refused(gray):
    ds = make_dicom(gray, bits_stored=8, with_pixels=False)
    with pytest.raises(NoPixelDataError) as caught:
        decode_image(dicom_bytes(ds), name="report.dcm")
    assert str(caught.value).startswith("report.dcm:"), f"expected the file named, got {caught.value}"


def test_patient_identifiers_never_appear_in_results_errors_or_logs(gray, caplog):
    caplog.set_level(logging.DEBUG)  # every logger, every level
    good = make_dicom(gray, bits_stored=8, patient=PATIENT)
    decoded = decode_image(dicom_bytes(good), name="patient.dcm")
    no_pixels = make_dicom(gray, bits_stored=8, patient=PATIENT, with_pixels=False)
    with pytest.raises(NoPixelDataError) as caught:
        decode_image(dicom_bytes(no_pixels), name="patient.dcm")
    exposed = " ".join(
        [repr(decoded), str(decoded.dicom), decoded.mode, decoded.name, str(caught.value)]
        + [record.getMessage() for record in caplog.records]
    )
    leaked = [value for value in PATIENT.values() if value in exposed]
    assert not leaked, f"expected no patient identifier exposed, found {leaked}"
    assert decoded.dicom == {
        "Modality": "CR",
        "BodyPartExamined": "CHEST",
        "ViewPosition": "PA",
        "PhotometricInterpretation": "MONOCHROME2",
    }, f"expected exactly the four safe fields, got {decoded.dicom}"


def test_dicom_named_file_holding_a_png_is_decoded_as_png(gray):
    decoded = decode_image(png_bytes(Image.fromarray(gray)), name="mislabelled.dcm")
    assert decoded.format == "PNG", f"expected the PNG signature to win over the name, got {decoded.format}"


# --------------------------------------------------------------------------- bad input
def bad_inputs(gray: np.ndarray) -> dict[str, tuple[bytes, type[ImageInputError]]]:
    png = png_bytes(Image.fromarray(gray))
    jpeg = jpeg_bytes(gray)
    return {
        "empty.png": (b"", EmptyFileError),
        "notes.png": (b"Patient was seen on Tuesday.\n" * 20, NotAnImageError),
        "noise.png": (np.random.default_rng(0).bytes(4096), NotAnImageError),
        "text.dcm": (b"this is not a DICOM file\n" * 20, NotAnImageError),
        "half.png": (png[: len(png) // 2], TruncatedImageError),
        "header_only.png": (png[:40], TruncatedImageError),
        "half.jpg": (jpeg[: len(jpeg) // 2], TruncatedImageError),
        "short.jpg": (jpeg[:300], TruncatedImageError),
        "half.dcm": (dicom_bytes(make_dicom(gray, bits_stored=8))[:-5000], TruncatedImageError),
        "tiny.png": (png_bytes(Image.fromarray(gray[:63, :200])), ImageTooSmallError),
    }


@pytest.mark.parametrize(
    "name",
    ["empty.png", "notes.png", "noise.png", "text.dcm", "half.png", "header_only.png",
     "half.jpg", "short.jpg", "half.dcm", "tiny.png"],
)  # fmt: skip
def test_bad_input_raises_its_specific_error_naming_the_file(gray, name):
    data, expected = bad_inputs(gray)[name]
    with pytest.raises(ImageInputError) as caught:
        decode_image(data, name=name)
    assert type(caught.value) is expected, f"expected {expected.__name__}, got {caught.value!r}"
    assert str(caught.value).startswith(f"{name}: "), f"expected the message to start with the name, got {caught.value}"


def test_empty_file_on_disk_is_refused_by_its_name(tmp_path):
    path = tmp_path / "blank_upload.png"
    path.write_bytes(b"")
    with pytest.raises(EmptyFileError, match="^blank_upload.png: "):
        decode_image(path)


def test_missing_file_is_refused_by_its_name(tmp_path):
    with pytest.raises(ImageInputError, match="^nowhere.png: file not found"):
        decode_image(tmp_path / "nowhere.png")


def test_64_px_is_enough_and_63_px_is_too_small(gray):
    assert decode_image(png_bytes(Image.fromarray(gray[:64, :64])), name="ok.png").pixels.shape == (64, 64), (
        "expected a 64 x 64 image to be accepted"
    )
    with pytest.raises(ImageTooSmallError, match="63"):
        decode_image(png_bytes(Image.fromarray(gray[:100, :63])), name="narrow.png")


def test_pixel_budget_is_configurable(gray):
    with pytest.raises(ImageTooLargeError, match="^budget.png: 512 x 512"):
        decode_image(png_bytes(Image.fromarray(gray)), name="budget.png", max_pixels=200_000)


@pytest.fixture(scope="module")
def png_bomb(tmp_path_factory):
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    path.write_bytes(png_zero_bomb(40_000))
    return path


def test_png_bomb_is_a_real_40000_px_png(png_bomb):
    data = png_bomb.read_bytes()
    width, height, depth = struct.unpack(">IIB", data[16:25])
    assert (width, height, depth) == (40_000, 40_000, 8), f"expected 40000 x 40000 8-bit, got {width, height, depth}"
    idat = data[41 : 41 + int.from_bytes(data[33:37], "big")]
    inflater = zlib.decompressobj()
    head = inflater.decompress(idat, 1 << 20)
    assert head == b"\0" * (1 << 20), "expected the IDAT to inflate to zero bytes"


def test_png_bomb_is_refused_from_its_header_without_decoding(png_bomb):
    tracemalloc.start()
    try:
        with pytest.raises(ImageTooLargeError) as caught:
            decode_image(png_bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    file_size = png_bomb.stat().st_size
    assert peak < file_size + 8_000_000, (
        f"expected no pixel allocation (1.6 GB): peak {peak / 1e6:.1f} MB for a {file_size / 1e6:.1f} MB file"
    )
    assert str(caught.value).startswith("bomb.png: 40000 x 40000"), f"expected name and size, got {caught.value}"


def test_jpeg_declaring_40000_px_is_refused_from_its_header(gray):
    data = bytearray(jpeg_bytes(gray))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 40_000, 40_000)
    tracemalloc.start()
    try:
        with pytest.raises(ImageTooLargeError, match="^big.jpg: "):
            decode_image(bytes(data), name="big.jpg")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8_000_000, f"expected no pixel allocation, peak {peak / 1e6:.1f} MB"


def test_dicom_declaring_40000_px_is_refused_before_decoding(gray):
    ds = make_dicom(gray, bits_stored=8)
    ds.Rows = ds.Columns = 40_000  # the pixel data stays small: pydicom would fail later
    with pytest.raises(ImageTooLargeError, match="^big.dcm: 40000 x 40000"):
        decode_image(dicom_bytes(ds), name="big.dcm")


# --------------------------------------------------------------------------- tensors
def test_mid_grey_maps_to_its_imagenet_normalised_value():
    for gray_image in (np.full((300, 200), 0.5, dtype=np.float32), np.full((64, 64), 0.5)):
        tensor = to_model_input(gray_image)
        for channel, (mean, std) in enumerate(zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)):
            expected = (0.5 - mean) / std
            error = float((tensor[channel] - expected).abs().max())
            assert error < 1e-5, f"expected channel {channel} == {expected:.5f}, error {error}"


def test_uint8_cache_and_float_pixels_give_the_same_tensor(gray):
    from_uint8 = to_model_input(gray)
    from_float = to_model_input(gray.astype(np.float32) / 255.0)
    assert torch.allclose(from_uint8, from_float, atol=1e-5), "expected uint8/255 == float input"


def test_other_integer_arrays_are_refused_instead_of_clipped_to_white(gray16):
    with pytest.raises(ValueError, match="uint16"):
        to_model_input(gray16)


def test_preprocess_returns_normalised_tensor_and_full_resolution_grey():
    path = NIH_ORIGINALS / "00000075_000.png"
    tensor, decoded = preprocess(path, PreprocessConfig(input_size=224))
    assert tensor.shape == (3, 224, 224) and tensor.dtype == torch.float32, (
        f"expected (3, 224, 224) float32, got {tuple(tensor.shape)} {tensor.dtype}"
    )
    assert decoded.pixels.shape == (1024, 1024), "expected the full-resolution grey image back"
    expected = torch.from_numpy(resize_gray(decoded.pixels, 224))
    for channel, (mean, std) in enumerate(zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)):
        unit = tensor[channel] * std + mean
        assert torch.allclose(unit, expected, atol=1e-5), (
            f"expected channel {channel} to be the resized grey image, normalised"
        )


def test_non_square_image_is_stretched_to_the_square_input(gray):
    tensor, decoded = preprocess(png_bytes(Image.fromarray(gray[:, :256])), name="half_width.png")
    assert tensor.shape == (3, 224, 224), f"expected a square input, got {tuple(tensor.shape)}"
    assert decoded.aspect_ratio == 2.0, f"expected the original aspect 2.0 kept on the decoded image, got {decoded.aspect_ratio}"


def test_resize_gray_averages_when_shrinking():
    checker = np.indices((448, 448)).sum(axis=0) % 2  # finest possible texture
    small = resize_gray(checker.astype(np.float32), 224)
    assert small.shape == (224, 224), f"expected (224, 224), got {small.shape}"
    assert np.allclose(small, 0.5, atol=1e-6), "expected area averaging (no aliasing) when halving"
