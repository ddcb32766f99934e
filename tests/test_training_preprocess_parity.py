"""One preprocessing definition: the training dataset paths give the app's tensor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from training.cache import build_cache
from training.data.datasets import CachedImages, FileImages, XrayDataset
from training.data.image_cache import ImageCache
from xray_app.preprocess import IMAGENET_STD, decode_image, to_model_input

IMAGES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nih" / "images"


def test_image_folder_and_cache_paths_match_the_app(tmp_path):
    name = "00000075_000.png"
    path = IMAGES / name
    labels = np.zeros((1, 15), dtype=np.float32)
    app = to_model_input(decode_image(path).pixels, 224)

    from_files = XrayDataset(FileImages([path]), labels, input_size=224)[0][0]
    assert torch.equal(from_files, app), "expected the image-folder path to equal the app's tensor exactly"

    source = tmp_path / "one"
    source.mkdir()
    (source / name).symlink_to(path)
    build_cache(source, tmp_path / "cache", size=512, workers=1, progress=False)
    cache = ImageCache(tmp_path / "cache")
    from_cache = XrayDataset(CachedImages(cache, [name]), labels, input_size=224)[0][0]
    # uint8 quantisation: at most half a grey level before resizing, in normalised units
    bound = 0.5 / 255 / min(IMAGENET_STD) + 1e-5
    error = (from_cache - app).abs().max().item()
    assert error <= bound, f"expected the cache path within uint8 quantisation ({bound:.4f}), got {error:.4f}"
