"""Model loading: open_clip models once per process (clip.py; ONNX Runtime on CPU: onnx_backend.py),
test-tiny config (configs/), model ids (ids.py), JPEG decoding on the GPU (gpu_decode.py).

This module stays free of torch so that scans needing no CLIP never import it.
"""

from __future__ import annotations

from moderator.models.ids import model_id_for
from moderator.settings import Settings

__all__ = ["load_clip", "model_id_for"]


def load_clip(settings: Settings):  # type: ignore[no-untyped-def]
    """get_clip_model, imported on first use (torch and open_clip take seconds to import)."""
    from moderator.models.clip import get_clip_model

    return get_clip_model(settings)
