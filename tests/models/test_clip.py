"""Model loading: the real loading code, exercised offline with test-tiny and bad inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from moderator.decode import crop_frame
from moderator.errors import ScorerUnavailable
from moderator.models import model_id_for
from moderator.models.clip import get_clip_model, split_transform
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


# --- preprocessing: open_clip's pixels, with work bounded by the output ----------------------------

SIZES = [(500, 300), (300, 500), (224, 224), (225, 224), (7, 3), (1, 1), (640, 480), (1155, 866), (4000, 3000)]
EXTREME = [(5, 700), (10, 1200), (1200, 10), (4000, 50), (50, 4000)]  # past 64:1, and still computable the old way


def _noise(size: tuple[int, int], seed: int = 0) -> Image.Image:
    w, h = size
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _smooth(size: tuple[int, int]) -> Image.Image:
    w, h = size
    return _noise((max(2, w // 8), max(2, h // 8))).resize(size, Image.Resampling.BILINEAR)


def _open_clip_geometry(transform: object, image: Image.Image) -> np.ndarray:
    """open_clip's own transform up to the tensor conversion: its uint8 pixels."""
    from torchvision.transforms import Compose

    steps = transform.transforms  # type: ignore[attr-defined]
    return np.asarray(Compose(steps[:-2])(image))


@pytest.mark.parametrize("mode", ["shortest", "longest", "squash"])
@pytest.mark.parametrize("size", [224, (224, 192)])
def test_preprocessing_gives_open_clips_pixels_exactly(mode: str, size: int | tuple[int, int]) -> None:
    from open_clip.transform import image_transform

    transform = image_transform(size, is_train=False, resize_mode=mode, fill_color=128)
    crop, _ = split_transform(transform)
    for i, image_size in enumerate(SIZES):
        image = _noise(image_size, seed=i)
        assert np.array_equal(crop_frame(image, crop), _open_clip_geometry(transform, image)), (mode, image_size)


def test_the_models_batch_is_open_clips_pixels() -> None:
    model = get_clip_model(tiny())
    images = [_noise(s, seed=i) for i, s in enumerate(SIZES)]
    batch = model.preprocess_batch(images)
    assert batch.dtype == torch.uint8 and tuple(batch.shape) == (len(SIZES), 224, 224, 3)
    for image, pixels in zip(images, batch, strict=True):
        assert np.array_equal(pixels.numpy(), _open_clip_geometry(model.preprocess, image))


@pytest.mark.parametrize("size", EXTREME)
def test_extreme_aspect_ratios_keep_open_clips_geometry(size: tuple[int, int]) -> None:
    """Past 64:1 only the crop's region is resampled; on smooth content that is open_clip's picture
    to within rounding (the order of Pillow's two passes may differ)."""
    model = get_clip_model(tiny())
    image = _smooth(size)
    got = model.preprocess_batch([image])[0].numpy().astype(int)
    want = _open_clip_geometry(model.preprocess, image).astype(int)
    assert np.abs(got - want).max() <= 8 and np.abs(got - want).mean() < 1.0


@pytest.mark.parametrize("size", [(1, 100_000), (100_000, 1), (2, 5_000_000), (5_000_000, 3)])
def test_preprocessing_an_extreme_aspect_ratio_takes_little_memory_and_time(size: tuple[int, int]) -> None:
    """Resized as open_clip does, 1x100000 would be 224 x 22,400,000 pixels (21 GB): here the whole
    preprocessing runs in a decode worker capped at 256 MB and 20 s."""
    from moderator.decode import DecodeError, DecodePool

    model = get_clip_model(tiny())
    with DecodePool(1, memory_mb=256, timeout_s=20.0) as pool:
        (result,) = pool.map(_preprocess_in_worker, [size])
    assert not isinstance(result, DecodeError), str(result)
    assert result == [224, 224, 3]
    assert model.crop.width == 224


def _preprocess_in_worker(size: tuple[int, int]) -> list[int]:
    image = Image.new("RGB", size, (40, 50, 60))
    return list(get_clip_model(tiny()).preprocess_batch([image])[0].shape)


def test_a_transform_that_cannot_be_bounded_is_refused() -> None:
    from torchvision.transforms import Compose, Normalize, RandomResizedCrop, ToTensor

    with pytest.raises(ScorerUnavailable, match="can bound"):
        split_transform(Compose([RandomResizedCrop(224), ToTensor(), Normalize((0.5,) * 3, (0.5,) * 3)]))
