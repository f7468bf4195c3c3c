"""MODERATOR_PRECISION=int8: dynamic int8 quantisation of the linear layers, close to fp32.

Measured on real (test-tiny, seeded random) forward passes: the model must really be
quantised (its embeddings differ from fp32) and stay within cosine 0.99 of fp32.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from moderator.models.clip import get_clip_model, pick_precision
from moderator.errors import ScorerUnavailable
from moderator.settings import Precision, Settings
from tests.conftest import jpeg_bytes


def _model(precision: str):  # type: ignore[no-untyped-def]
    return get_clip_model(Settings(model="test-tiny", pretrained="none", device="cpu", precision=precision))


def test_int8_embeddings_are_close_to_fp32() -> None:
    fp32, int8 = _model("fp32"), _model("int8")
    assert int8.precision is Precision.INT8
    assert any("quantized" in type(m).__module__ for m in int8.model.visual.modules())
    images = [Image.open(io.BytesIO(jpeg_bytes(i, (160, 120)))).convert("RGB") for i in range(12)]
    pixels = fp32.preprocess_batch(images)
    a, b = fp32.encode_images(pixels), int8.encode_images(pixels)
    assert not np.array_equal(a, b)  # really another computation
    assert float((a @ a.T).min()) < 0.9  # the images are told apart, so 0.99 below is a real bar
    cosine = (a * b).sum(axis=1)
    assert float(cosine.min()) > 0.99


def test_int8_encodes_text_exactly_as_fp32_and_scans(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from moderator.pipeline import Pipeline
    from moderator.settings import SHIPPED_POLICIES
    from moderator.store import Store

    texts = ["a photo of a cat", "a photo of a dog"]
    assert np.array_equal(_model("fp32").encode_text(texts), _model("int8").encode_text(texts))
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.jpg").write_bytes(jpeg_bytes(i))
    settings = Settings(
        model="test-tiny",
        pretrained="none",
        device="cpu",
        precision="int8",
        database_url=f"sqlite:///{tmp_path / 'store.db'}",
        policies=[SHIPPED_POLICIES / "tags.yaml"],
    )
    summary = Pipeline(settings, Store(settings.database_url)).scan_targets([str(folder)])
    assert (summary.scanned, summary.errors) == (3, 0)


def test_int8_is_a_cpu_mode() -> None:
    with pytest.raises(ScorerUnavailable, match="int8"):
        pick_precision(Precision.INT8, "cuda")
    assert pick_precision(Precision.AUTO, "cpu") is Precision.FP32
