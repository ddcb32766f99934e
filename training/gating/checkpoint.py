"""A checkpoint rewritten in place with a gate's tensors and ``config.json`` entry: the
weights keep the dtype they were stored in, and the result is read back through the app's
own loader, so that the caller can check the gate is usable as written."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

from xray_app.model import (
    WEIGHTS_FILE,
    LoadedCheckpoint,
    ModelConfig,
    load_checkpoint,
    save_checkpoint,
)

_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}


def stored_weight_dtype(weights_path: Path) -> torch.dtype:
    """dtype of the classification head in ``model.safetensors`` (to re-save unchanged)."""
    with safe_open(str(weights_path), framework="pt") as handle:
        return _DTYPES.get(handle.get_slice("fc.weight").get_dtype(), torch.float32)


def rewrite_checkpoint(
    checkpoint: LoadedCheckpoint, config: ModelConfig, extra_tensors: dict[str, torch.Tensor]
) -> LoadedCheckpoint:
    """Save ``checkpoint``'s model with ``config`` and ``extra_tensors`` (the whole set of
    ``ood.*`` tensors) into its own directory, in the weights' stored dtype; returns the
    checkpoint as the app's loader reads it back."""
    directory = checkpoint.directory
    dtype = stored_weight_dtype(directory / WEIGHTS_FILE)
    save_checkpoint(checkpoint.model, config, directory, dtype=dtype, extra_tensors=extra_tensors)
    return load_checkpoint(directory)
