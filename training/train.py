"""Train the classifier: ``python -m training.train`` (also under ``torchrun``).

    python -m training.train --metadata CSV (--images DIR | --cache DIR) --out RUN \\
        [--epochs N] [--batch-size B] [--lr LR] [--pretrained imagenet|none|PATH] \\
        [--device auto|cpu|cuda] [--limit-batches K] [--resume [CKPT]] [--seed S] [--config YAML]

The run folder it writes, and how a killed run resumes, are described in
:mod:`training.fitting.loop`; ``RUN/best`` is a checkpoint in the app's format
(``python app.py --weights RUN/best``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import torch

from training.data.metadata import MetadataError
from training.data.predictions import PredictionsFileError
from training.data.splits import SplitLeakError
from training.fitting.config import ConfigError, parse_config
from training.fitting.loop import fit
from training.fitting.runtime import TrainingError
from xray_app.model import PretrainedWeightsUnavailable


def main(argv: Sequence[str] | None = None) -> int:
    try:
        cfg = parse_config(argv)
        # fixed input shapes: let cuDNN pick the fastest kernels (entry point only)
        torch.backends.cudnn.benchmark = True
        best = fit(cfg)
    except (ConfigError, TrainingError, MetadataError, SplitLeakError, PretrainedWeightsUnavailable,
            PredictionsFileError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"best checkpoint: {best}  (python app.py --weights {best})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
