"""Model loading: open_clip models once per process (clip.py), test-tiny config (configs/).

This module stays free of torch so that scans needing no CLIP never import it.
"""

from __future__ import annotations

import os
from pathlib import Path

from moderator.settings import Settings


def model_id_for(settings: Settings) -> str:
    """The identity stored beside embeddings: name and weights (a checkpoint by file name)."""
    weights = settings.pretrained
    if os.path.sep in weights or weights.endswith((".bin", ".pt", ".pth", ".safetensors")):
        weights = "file:" + Path(weights).name
    # int8 embeddings differ measurably from fp32 (cosine ~0.9998): stored apart. fp16 ones do not.
    suffix = "+int8" if settings.precision.value == "int8" else ""
    return f"{settings.model}/{weights}{suffix}"


def load_clip(settings: Settings):  # type: ignore[no-untyped-def]
    """get_clip_model, imported on first use (torch and open_clip take seconds to import)."""
    from moderator.models.clip import get_clip_model

    return get_clip_model(settings)
