"""Model ids: the identity stored beside every embedding (free of torch, like the package)."""

from __future__ import annotations

import os
from pathlib import Path

from moderator.settings import Settings


def model_id_for(settings: Settings) -> str:
    """The identity stored beside embeddings: name and weights (a checkpoint by file name).

    One id per set of embeddings that agree: PyTorch fp32, fp16 and ONNX Runtime fp32 share
    it (ONNX fp32 is checked against PyTorch to cosine 0.99999 before use: onnx_backend,
    tests/models/test_onnx.py); int8 embeddings (ONNX Runtime's or torch's dynamic
    quantisation, cosine ~0.9998 to fp32) are stored apart.
    """
    weights = settings.pretrained
    if os.path.sep in weights or weights.endswith((".bin", ".pt", ".pth", ".safetensors")):
        weights = "file:" + Path(weights).name
    suffix = "+int8" if settings.precision.value == "int8" else ""
    return f"{settings.model}/{weights}{suffix}"
