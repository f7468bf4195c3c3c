"""MODERATOR_PRECISION=int8: dynamic int8 quantisation, close to fp32, on either backend.

On the onnx backend (the CPU default) the image tower is onnxruntime's dynamic QInt8
quantisation of the exported graph; on the torch backend, torch's dynamic quantisation of
the linear layers. Measured on real (test-tiny, seeded random) forward passes: the model
must really be quantised (its embeddings differ from fp32) and stay within cosine 0.99 of fp32.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from moderator.errors import ScorerUnavailable
from moderator.models.clip import get_clip_model, pick_precision
from moderator.settings import Precision, Settings
from tests.conftest import jpeg_bytes

BACKENDS = pytest.mark.parametrize("backend", ["onnx", "torch"])


def _model(precision: str, backend: str = "auto"):  # type: ignore[no-untyped-def]
    return get_clip_model(
        Settings(model="test-tiny", pretrained="none", device="cpu", precision=precision, backend=backend)
    )


def _quantised(model) -> bool:  # type: ignore[no-untyped-def]
    if model.onnx is None:
        return any("quantized" in type(m).__module__ for m in model.model.visual.modules())
    import onnx

    ops = {node.op_type for node in onnx.load(str(model.onnx.image.path)).graph.node}
    return "DynamicQuantizeLinear" in ops and bool(ops & {"MatMulInteger", "ConvInteger"})


@BACKENDS
def test_int8_embeddings_are_close_to_fp32(backend: str) -> None:
    fp32, int8 = _model("fp32", backend), _model("int8", backend)
    assert int8.precision is Precision.INT8
    assert int8.backend == fp32.backend == backend
    assert _quantised(int8) and not _quantised(fp32)
    images = [Image.open(io.BytesIO(jpeg_bytes(i, (160, 120)))).convert("RGB") for i in range(12)]
    pixels = fp32.preprocess_batch(images)
    a, b = fp32.encode_images(pixels), int8.encode_images(pixels)
    assert not np.array_equal(a, b)  # really another computation
    assert float((a @ a.T).min()) < 0.9  # the images are told apart, so 0.99 below is a real bar
    cosine = (a * b).sum(axis=1)
    assert float(cosine.min()) > 0.99


@BACKENDS
def test_int8_encodes_text_exactly_as_fp32_and_scans(tmp_path, backend: str) -> None:  # type: ignore[no-untyped-def]
    from moderator.pipeline import Pipeline
    from moderator.settings import SHIPPED_POLICIES
    from moderator.store import Store

    texts = ["a photo of a cat", "a photo of a dog"]
    assert np.array_equal(_model("fp32", backend).encode_text(texts), _model("int8", backend).encode_text(texts))
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.jpg").write_bytes(jpeg_bytes(i))
    settings = Settings(
        model="test-tiny",
        pretrained="none",
        device="cpu",
        precision="int8",
        backend=backend,
        database_url=f"sqlite:///{tmp_path / 'store.db'}",
        policies=[SHIPPED_POLICIES / "tags.yaml"],
    )
    summary = Pipeline(settings, Store(settings.database_url)).scan_targets([str(folder)])
    assert (summary.scanned, summary.errors) == (3, 0)


def test_int8_is_a_cpu_mode() -> None:
    with pytest.raises(ScorerUnavailable, match="int8"):
        pick_precision(Precision.INT8, "cuda")
    assert pick_precision(Precision.AUTO, "cpu") is Precision.FP32
