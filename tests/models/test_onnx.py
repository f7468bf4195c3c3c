"""The ONNX Runtime backend (the CPU default): same embeddings as PyTorch, a cache that is never wrong.

Real exports of test-tiny (seeded random weights) into a throwaway cache folder per test;
nothing is mocked. Embeddings are compared, never scores.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from moderator.decode import decode_image
from moderator.errors import ScorerUnavailable
from moderator.models import clip, model_id_for, onnx_backend
from moderator.models.clip import get_clip_model, pick_backend
from moderator.models.onnx_backend import OPSET, ExportKey
from moderator.settings import Backend, Settings
from tests.conftest import jpeg_bytes

ROOT = Path(__file__).resolve().parents[2]


def tiny(cache: Path | None = None, **kw: object) -> Settings:
    """test-tiny on CPU; without `cache`, the test session's shared ONNX cache (exported once for all tests)."""
    return Settings.model_validate(
        {"model": "test-tiny", "pretrained": "none", "device": "cpu", "onnx_cache_dir": cache, **kw}
    )


def fresh_process_state() -> None:
    """What a new process starts with: no loaded model, no open session (the disk cache stays)."""
    clip._cache.clear()
    onnx_backend._sessions.clear()


@pytest.fixture(autouse=True)
def _isolated() -> None:
    fresh_process_state()


def noisy_photo(seed: int, size: tuple[int, int]) -> bytes:
    """A smooth scene under sensor-like noise, as a camera JPEG (quality 90)."""
    rng = np.random.default_rng(seed)
    scene = Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)).resize(size, Image.Resampling.BICUBIC)
    noise = rng.integers(-8, 9, (size[1], size[0], 1))
    buf = io.BytesIO()
    Image.fromarray(np.clip(np.asarray(scene, dtype=np.int16) + noise, 0, 255).astype(np.uint8)).save(
        buf, "JPEG", quality=90
    )
    return buf.getvalue()


def real_jpegs() -> list[Image.Image]:
    """JPEG files decoded the way a scan decodes them: flat-colour blocks and noisy photos, several sizes."""
    blobs = [jpeg_bytes(i, size) for i, size in enumerate([(96, 64), (64, 96), (300, 200), (224, 224), (41, 500)])]
    blobs += [noisy_photo(i, size) for i, size in enumerate([(640, 480), (480, 640), (800, 600)])]
    return [decode_image(b, max_pixels=10**8, draft_size=224).frames[0] for b in blobs]


def test_cpu_defaults_to_onnx_and_fp32_keeps_the_pytorch_model_id() -> None:
    onnx = get_clip_model(tiny())
    torch_model = get_clip_model(tiny(backend="torch"))
    assert (onnx.backend, torch_model.backend) == ("onnx", "torch")
    assert onnx.model_id == torch_model.model_id == model_id_for(tiny()) == "test-tiny/none"
    pixels = onnx.preprocess_batch(real_jpegs())
    a, b = onnx.encode_images(pixels), torch_model.encode_images(pixels)
    assert float((b @ b.T).min()) < 0.9  # the images are told apart: agreement below is not trivial
    assert float((a * b).sum(axis=1).min()) >= 0.99999  # every image: what lets them share a model id
    texts = ["a photo of a cat", "a red car", "a never seen query about zebras"]
    t_onnx, t_torch = onnx.encode_text(texts), torch_model.encode_text(texts)
    assert float((t_onnx * t_torch).sum(axis=1).min()) >= 0.99999
    assert onnx.onnx is not None and onnx.onnx.image.path.parent == onnx_backend.default_cache_dir()


def test_batch_sizes_other_than_the_exported_one() -> None:
    model = get_clip_model(tiny())
    pixels = model.preprocess_batch(real_jpegs())
    whole = model.encode_images(pixels)
    singles = np.concatenate([model.encode_images(pixels[i : i + 1]) for i in range(len(pixels))])
    assert whole.shape == (len(pixels), 64)
    assert np.allclose(whole, singles, atol=1e-5)
    assert model.encode_text(["one"]).shape == (1, 64)


def test_a_second_process_uses_the_cache_without_exporting() -> None:
    model = get_clip_model(tiny())
    first = model.encode_text(["a cat"])
    assert model.onnx is not None
    graphs = {p: p.stat().st_mtime_ns for p in (model.onnx.image.path, model.onnx.text.path)}
    fresh_process_state()
    again = get_clip_model(tiny())
    assert again.backend == "onnx"
    assert {p: p.stat().st_mtime_ns for p in graphs} == graphs  # read, not rewritten
    assert np.array_equal(again.encode_text(["a cat"]), first)


def test_a_cache_file_that_does_not_match_is_rebuilt_never_used(tmp_path: Path) -> None:
    model = get_clip_model(tiny(tmp_path))
    image_graph, text_graph = model.onnx.image.path, model.onnx.text.path  # type: ignore[union-attr]
    pixels = model.preprocess_batch(real_jpegs()[:3])
    expected = model.encode_images(pixels)
    # A whole, loadable graph at the image tower's name, but built for something else (the text tower).
    image_graph.write_bytes(text_graph.read_bytes())
    fresh_process_state()
    rebuilt = get_clip_model(tiny(tmp_path))
    assert rebuilt.backend == "onnx"
    assert np.allclose(rebuilt.encode_images(pixels), expected, atol=1e-6)
    assert image_graph.read_bytes() != text_graph.read_bytes()
    # Garbage (say, a disk that filled up mid-copy) is rebuilt too.
    image_graph.write_bytes(b"\x08\x07not a graph")
    fresh_process_state()
    assert np.allclose(get_clip_model(tiny(tmp_path)).encode_images(pixels), expected, atol=1e-6)
    assert not list(tmp_path.glob("*.tmp"))


def test_other_weights_get_their_own_graph(tmp_path: Path) -> None:
    import torch

    source = get_clip_model(tiny(tmp_path, backend="torch"))
    state = {k: v.clone() for k, v in source.model.state_dict().items()}
    state["text_projection"] *= -1  # a "fine-tune": other text embeddings
    checkpoint = tmp_path / "ckpt" / "tiny-finetune.pt"
    checkpoint.parent.mkdir()
    torch.save(state, checkpoint)
    cache = tmp_path / "cache"
    tuned = get_clip_model(tiny(cache, pretrained=str(checkpoint)))
    tuned_torch = get_clip_model(tiny(cache, pretrained=str(checkpoint), backend="torch"))
    assert len(list(cache.glob("*-text-fp32.onnx"))) == 1
    texts = ["a red car"]
    assert np.allclose(tuned.encode_text(texts), tuned_torch.encode_text(texts), atol=1e-6)
    assert np.allclose(tuned.encode_text(texts), -source.encode_text(texts), atol=1e-5)
    # The same file name with other bytes (weights overwritten in place): other weights digest, other graph.
    state["text_projection"] *= 2
    torch.save(state, checkpoint)
    fresh_process_state()
    retuned = get_clip_model(tiny(cache, pretrained=str(checkpoint)))
    assert len(list(cache.glob("*-text-fp32.onnx"))) == 2
    assert np.allclose(retuned.encode_text(texts), tuned_torch.encode_text(texts), atol=1e-5)  # normalised: same


def test_the_export_key_covers_weights_and_export_settings() -> None:
    base = ExportKey("m/none", "digest", "image", "fp32", onnxruntime_version="1.0")
    others = [
        ExportKey("m/other", "digest", "image", "fp32", onnxruntime_version="1.0"),
        ExportKey("m/none", "other-digest", "image", "fp32", onnxruntime_version="1.0"),
        ExportKey("m/none", "digest", "text", "fp32", onnxruntime_version="1.0"),
        ExportKey("m/none", "digest", "image", "int8", onnxruntime_version="1.0"),
        ExportKey("m/none", "digest", "image", "fp32", opset=OPSET + 1, onnxruntime_version="1.0"),
        ExportKey("m/none", "digest", "image", "fp32", torch_version="0.0", onnxruntime_version="1.0"),
        ExportKey("m/none", "digest", "image", "fp32", onnxruntime_version="2.0"),
    ]
    assert len({k.file_name() for k in [base, *others]}) == len(others) + 1
    assert json.loads(base.text())["weights"] == "digest"


def test_an_unwritable_cache_falls_back_to_pytorch_in_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("a file where the cache folder should be")
    with caplog.at_level(logging.WARNING):
        model = get_clip_model(tiny(not_a_folder))
    assert model.backend == "torch"
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "\n" not in message and "PyTorch" in message and "ONNX" in message
    assert model.encode_text(["still works"]).shape == (1, 64)


def test_onnx_is_a_cpu_backend() -> None:
    assert pick_backend(Backend.AUTO, "cpu") is Backend.ONNX
    assert pick_backend(Backend.AUTO, "cuda") is Backend.TORCH
    assert pick_backend(Backend.TORCH, "cpu") is Backend.TORCH
    with pytest.raises(ScorerUnavailable, match="MODERATOR_BACKEND=onnx"):
        pick_backend(Backend.ONNX, "cuda")


CHILD = """
import sys
from moderator.models.clip import get_clip_model
from moderator.settings import Settings
model = get_clip_model(Settings(model="test-tiny", pretrained="none", device="cpu", onnx_cache_dir=sys.argv[1]))
assert model.backend == "onnx", model.backend
sys.stdout.write(model.encode_text(["a cat", "a dog"]).tobytes().hex())
"""


@pytest.mark.slow
def test_concurrent_processes_export_once_and_never_read_a_partial_file(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    children = [
        subprocess.Popen([sys.executable, "-c", CHILD, str(cache)], stdout=subprocess.PIPE, env=env, cwd=ROOT)
        for _ in range(2)
    ]
    outputs = [child.communicate(timeout=300)[0] for child in children]
    assert [c.returncode for c in children] == [0, 0]
    assert outputs[0] == outputs[1] != b""
    assert sorted(p.name.rsplit("-", 2)[1] for p in cache.glob("*.onnx")) == ["image", "text"]
    assert not list(cache.glob("*.tmp"))
    expected = get_clip_model(tiny(cache, backend="torch")).encode_text(["a cat", "a dog"])
    got = np.frombuffer(bytes.fromhex(outputs[0].decode()), dtype=np.float32).reshape(expected.shape)
    assert np.allclose(got, expected, atol=1e-6)


def test_scan_through_onnx_stores_embeddings_under_the_fp32_id(tmp_path: Path) -> None:
    from moderator.pipeline import Pipeline
    from moderator.settings import SHIPPED_POLICIES
    from moderator.store import Store

    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.jpg").write_bytes(jpeg_bytes(i))
    settings = tiny(database_url=f"sqlite:///{tmp_path / 'store.db'}", policies=[SHIPPED_POLICIES / "tags.yaml"])
    store = Store(settings.database_url)
    try:
        summary = Pipeline(settings, store).scan_targets([str(folder)])
        assert (summary.scanned, summary.errors) == (3, 0)
        shas = [hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())]
        stored = store.load_embeddings(shas, "test-tiny/none")
    finally:
        store.close()
    torch_model = get_clip_model(tiny(backend="torch"))
    images = [Image.open(io.BytesIO(p.read_bytes())).convert("RGB") for p in sorted(folder.iterdir())]
    reference = torch_model.encode_images(torch_model.preprocess_batch(images))
    for sha, ref in zip(shas, reference, strict=True):
        emb = stored[sha].astype(np.float32).reshape(-1)
        assert float(emb @ ref / np.linalg.norm(emb)) > 0.999  # stored as float16
