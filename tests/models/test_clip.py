"""Model loading: the real loading code, exercised offline with test-tiny and bad inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from moderator.models import model_id_for
from moderator.models.clip import get_clip_model
from moderator.errors import ScorerUnavailable
from moderator.settings import Settings


def tiny(**kw: object) -> Settings:
    return Settings.model_validate({"model": "test-tiny", "pretrained": "none", "device": "cpu", **kw})


def test_test_tiny_is_registered_with_open_clip_and_seeded() -> None:
    import open_clip

    assert "test-tiny" in open_clip.list_models()
    model = get_clip_model(tiny())
    assert model.random_weights and model.model_id == "test-tiny/none"
    emb = model.encode_text(["a photo of a cat", "a photo of a dog"])
    assert emb.shape == (2, 64) and np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # seeded: a fresh load in a fresh cache gives the same weights
    from moderator.models import clip

    clip._cache.clear()
    again = get_clip_model(tiny()).encode_text(["a photo of a cat", "a photo of a dog"])
    assert np.array_equal(emb, again)


def test_missing_weights_offline_are_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ScorerUnavailable) as err:
        get_clip_model(Settings.model_validate({"model": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"}))
    message = str(err.value)
    assert "\n" not in message
    assert "MODERATOR_PRETRAINED=" in message


def test_unknown_tag_and_bad_checkpoint_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ScorerUnavailable, match="neither a checkpoint file nor a pretrained tag"):
        get_clip_model(tiny(pretrained="no_such_tag"))
    broken = tmp_path / "model.safetensors"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(ScorerUnavailable, match="could not load test-tiny weights") as err:
        get_clip_model(tiny(pretrained=str(broken)))
    assert "\n" not in str(err.value)


def test_a_local_checkpoint_loads_and_is_identified_by_file_name(tmp_path: Path) -> None:
    import torch

    source = get_clip_model(tiny())
    path = tmp_path / "tiny-finetune.pt"
    torch.save(source.model.state_dict(), path)
    loaded = get_clip_model(tiny(pretrained=str(path)))
    assert loaded.model_id == model_id_for(tiny(pretrained=str(path))) == "test-tiny/file:tiny-finetune.pt"
    assert not loaded.random_weights
    texts = ["a red car"]
    assert np.allclose(loaded.encode_text(texts), source.encode_text(texts), atol=1e-6)


def test_fp16_on_cpu_and_cuda_without_gpu_are_refused() -> None:
    with pytest.raises(ScorerUnavailable, match="fp16 needs CUDA"):
        get_clip_model(tiny(precision="fp16"))


@pytest.mark.gpu
def test_cuda_defaults_to_half_precision_and_agrees_with_cpu() -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from PIL import Image

    gpu, cpu = get_clip_model(tiny(device="cuda")), get_clip_model(tiny())
    assert gpu.device == "cuda" and gpu.precision.value == "fp16"
    images = [Image.new("RGB", (64, 48), c) for c in ("red", "green", "navy", "white")]
    a, b = gpu.encode_images(gpu.preprocess_batch(images)), cpu.encode_images(cpu.preprocess_batch(images))
    assert (a * b).sum(axis=1).min() > 0.99


def test_int8_embeddings_are_stored_apart_from_fp32() -> None:
    assert model_id_for(tiny(precision="int8")) == "test-tiny/none+int8"
    assert model_id_for(tiny(precision="fp32")) == model_id_for(tiny()) == "test-tiny/none"


def test_batched_preprocessing_matches_open_clips_own_transform() -> None:
    import torch
    from PIL import Image

    model = get_clip_model(tiny())
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((300, 500), (224, 224))]
    reference = torch.stack([model.preprocess(im) for im in images])
    fast = model.preprocess_batch(images)
    assert fast.dtype == torch.uint8 and fast.shape == (2, 224, 224, 3)
    assert np.allclose(model.encode_images(fast), model.encode_images(reference), atol=1e-5)
