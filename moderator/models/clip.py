"""open_clip models, loaded once per process, lazily.

Weights come from an open_clip pretrained tag (Hugging Face hub or its offline
cache), a local checkpoint file, or `none` (seeded random weights: tests and
benchmarks only, never a judgement). When weights cannot be had the error is one
line that says how to fix it: no traceback, and no minute of hub retries.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
from PIL import Image

from moderator.models import model_id_for
from moderator.errors import ScorerUnavailable
from moderator.settings import Device, Precision, Settings

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
RANDOM = "none"
HUB_HOST = "huggingface.co"
_RANDOM_SEED = 0

open_clip.add_model_config(CONFIG_DIR)  # registers test-tiny the way open_clip registers its own


def pick_device(device: Device) -> str:
    if device is Device.AUTO:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device is Device.CUDA and not torch.cuda.is_available():
        raise ScorerUnavailable("MODERATOR_DEVICE=cuda but no CUDA device is visible: use MODERATOR_DEVICE=cpu or auto")
    return device.value


def pick_precision(precision: Precision, device: str) -> Precision:
    if precision is Precision.AUTO:
        return Precision.FP16 if device == "cuda" else Precision.FP32
    if precision is Precision.FP16 and device == "cpu":
        raise ScorerUnavailable("MODERATOR_PRECISION=fp16 needs CUDA; on CPU use fp32 or int8")
    if precision is Precision.INT8 and device == "cuda":
        raise ScorerUnavailable("MODERATOR_PRECISION=int8 is a CPU mode; on CUDA use fp16 (the default)")
    return precision


@dataclass
class ClipModel:
    """An open_clip model ready for batched inference."""

    model_id: str
    model: Any
    preprocess: Any  # PIL.Image -> Tensor[3, H, W]
    tokenizer: Any
    device: str
    precision: Precision
    image_size: int
    logit_scale: float
    random_weights: bool

    def __post_init__(self) -> None:
        self._lock = threading.Lock()  # one forward pass at a time per process
        self._resize, normalize = split_transform(self.preprocess)
        if normalize is not None:
            shape = (1, 3, 1, 1)
            self._mean = torch.tensor(normalize.mean, device=self.device).view(shape) * 255
            self._std = torch.tensor(normalize.std, device=self.device).view(shape) * 255

    @property
    def dtype(self) -> torch.dtype:
        return torch.float16 if self.precision is Precision.FP16 else torch.float32

    def preprocess_batch(self, images: list[Image.Image]) -> torch.Tensor:
        """Resized and cropped with open_clip's own transforms, kept as uint8 [N, H, W, 3].

        Scaling and normalising happen in encode_images, on the model's device and per
        batch: cheaper than per image in the decode threads (and a quarter of the bytes).
        """
        if self._resize is None:
            return torch.stack([self.preprocess(im) for im in images])
        return torch.from_numpy(np.stack([np.asarray(self._resize(im), dtype=np.uint8) for im in images]))

    def encode_images(self, pixels: torch.Tensor) -> np.ndarray:
        """preprocess_batch output (or float [N, 3, H, W]) -> float32 L2-normalised embeddings [N, d]."""
        with self._lock, torch.inference_mode():
            if pixels.dtype == torch.uint8:
                x = pixels.to(self.device).permute(0, 3, 1, 2).float()
                pixels = (x - self._mean) / self._std
            features = self.model.encode_image(pixels.to(self.device, self.dtype))
            return _normalise(features)

    def encode_text(self, texts: list[str]) -> np.ndarray:
        """Prompts -> float32 L2-normalised embeddings [N, d]."""
        with self._lock, torch.inference_mode():
            tokens = self.tokenizer(texts).to(self.device)
            return _normalise(self.model.encode_text(tokens))


def split_transform(preprocess: Any) -> tuple[Any, Any]:
    """open_clip's eval transform as (PIL resize/crop/mode part, Normalize), or (None, None)."""
    from torchvision.transforms import Compose, Normalize

    steps = list(getattr(preprocess, "transforms", []))
    names = [type(t).__name__ for t in steps]
    if len(steps) < 3 or not isinstance(steps[-1], Normalize) or names[-2] not in ("ToTensor", "MaybeToTensor"):
        return None, None
    return Compose(steps[:-2]), steps[-1]


def _normalise(features: torch.Tensor) -> np.ndarray:
    features = features.float()
    features = features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return features.cpu().numpy().astype(np.float32)


_cache: dict[tuple[str, ...], ClipModel] = {}
_cache_lock = threading.Lock()


def get_clip_model(settings: Settings) -> ClipModel:
    """The process's model for these settings, loaded on first use."""
    device = pick_device(settings.device)
    precision = pick_precision(settings.precision, device)
    key = (settings.model, settings.pretrained, device, precision.value)
    with _cache_lock:
        if key not in _cache:
            _cache[key] = _load(settings, device, precision)
        return _cache[key]


def _load(settings: Settings, device: str, precision: Precision) -> ClipModel:
    name, pretrained = settings.model, settings.pretrained
    if name not in open_clip.list_models():
        raise ScorerUnavailable(f"unknown open_clip model {name!r} (MODERATOR_MODEL); see open_clip.list_models()")
    random_weights = pretrained.lower() == RANDOM
    if random_weights:
        torch.manual_seed(_RANDOM_SEED)  # the same random model in every process
        weights: str | None = None
    else:
        weights = _resolve_weights(name, pretrained)
    logging.disable(logging.WARNING)  # open_clip's "initialized randomly" warning: the CLI says it once, clearly
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=weights, device=device, precision="fp16" if precision is Precision.FP16 else "fp32"
        )
    except Exception as exc:  # open_clip raises RuntimeError/OSError/ValueError for bad checkpoints
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ScorerUnavailable(f"could not load {name} weights {pretrained!r}: {first_line}") from None
    finally:
        logging.disable(logging.NOTSET)
    model.eval()
    if precision is Precision.INT8:
        # Only the image tower: it runs per image; the text tower runs once per policy and
        # open_clip's text path reads its weights' dtype, which quantised layers do not have.
        model.visual = torch.ao.quantization.quantize_dynamic(model.visual, {torch.nn.Linear}, dtype=torch.qint8)
    size = model.visual.image_size
    return ClipModel(
        model_id=model_id_for(settings),
        model=model,
        preprocess=preprocess,
        tokenizer=open_clip.get_tokenizer(name),
        device=device,
        precision=precision,
        image_size=int(size[0] if isinstance(size, tuple | list) else size),
        logit_scale=float(model.logit_scale.exp().item()),
        random_weights=random_weights,
    )


def _resolve_weights(name: str, pretrained: str) -> str:
    """A local file, or a pretrained tag whose weights are cached or reachable; else one clear line."""
    fix = (
        "put an open_clip checkpoint on disk and set MODERATOR_PRETRAINED=/path/to/open_clip_model.safetensors, "
        "or fill the Hugging Face cache on a connected machine and copy it here (HF_HUB_OFFLINE=1)"
    )
    if Path(pretrained).expanduser().is_file():
        return str(Path(pretrained).expanduser())
    if pretrained.startswith("hf-hub:"):
        if not _hub_reachable() and not _hf_cached(pretrained.removeprefix("hf-hub:"), "open_clip_config.json"):
            raise ScorerUnavailable(f"CLIP weights {pretrained} are not cached and the hub is unreachable: {fix}")
        return pretrained
    cfg = open_clip.get_pretrained_cfg(name, pretrained)
    if not cfg:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
        raise ScorerUnavailable(
            f"{pretrained!r} is neither a checkpoint file nor a pretrained tag of {name} (tags: {tags}); {fix}"
        )
    hub = (cfg.get("hf_hub") or "").rstrip("/")
    cached = bool(hub) and any(
        _hf_cached(hub, f) for f in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
    )
    if not cached and not _hub_reachable():
        raise ScorerUnavailable(f"CLIP weights {name}/{pretrained} are not cached and cannot be downloaded here: {fix}")
    return pretrained


def _hf_cached(repo: str, filename: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id=repo, filename=filename)
    return isinstance(found, str)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick check, so an offline machine gets one line instead of a minute of retries."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}:
        return False
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False


logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
