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
from typing import TYPE_CHECKING, Any

import numpy as np
import open_clip
import torch
from PIL import Image

from moderator.decode import CropSpec, crop_frame
from moderator.errors import ScorerUnavailable
from moderator.models.ids import model_id_for
from moderator.settings import Backend, Device, Precision, Settings

if TYPE_CHECKING:
    from moderator.models.onnx_backend import OnnxTowers

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
    onnx: OnnxTowers | None = None  # set: both towers run in ONNX Runtime (`model` stays the fp32 PyTorch model)

    @property
    def backend(self) -> str:
        return "onnx" if self.onnx is not None else "torch"

    def __post_init__(self) -> None:
        self._lock = threading.Lock()  # one forward pass at a time per process
        self.crop, normalize = split_transform(self.preprocess)  # crop: picklable, for decode workers
        shape = (1, 3, 1, 1)
        self._mean = torch.tensor(normalize.mean, device=self.device).view(shape) * 255
        self._std = torch.tensor(normalize.std, device=self.device).view(shape) * 255

    @property
    def dtype(self) -> torch.dtype:
        return torch.float16 if self.precision is Precision.FP16 else torch.float32

    def preprocess_batch(self, images: list[Image.Image]) -> torch.Tensor:
        """open_clip's resize + centre crop (decode.crop_frame: work bounded by the output), uint8 [N, H, W, 3].

        Scaling and normalising happen in encode_images, on the model's device and per
        batch: cheaper than per image in the decode workers (and a quarter of the bytes).
        Decode workers make the same crops themselves (FrameRequest.crop = self.crop).
        """
        return torch.from_numpy(np.stack([crop_frame(_rgb(im), self.crop) for im in images]))

    def encode_images(self, pixels: torch.Tensor) -> np.ndarray:
        """preprocess_batch output (or float [N, 3, H, W]) -> float32 L2-normalised embeddings [N, d]."""
        with self._lock, torch.inference_mode():
            if pixels.dtype == torch.uint8:
                x = pixels.to(self.device).permute(0, 3, 1, 2).float()
                pixels = (x - self._mean) / self._std
            if self.onnx is not None:
                return _normalise(torch.from_numpy(self.onnx.image(pixels.float().contiguous().numpy())))
            features = self.model.encode_image(pixels.to(self.device, self.dtype))
            return _normalise(features)

    def encode_text(self, texts: list[str]) -> np.ndarray:
        """Prompts -> float32 L2-normalised embeddings [N, d]."""
        with self._lock, torch.inference_mode():
            tokens = self.tokenizer(texts)
            if self.onnx is not None:
                return _normalise(torch.from_numpy(self.onnx.text(tokens.numpy())))
            return _normalise(self.model.encode_text(tokens.to(self.device)))


def split_transform(preprocess: Any) -> tuple[CropSpec, Any]:
    """open_clip's eval transform as (its resize + centre crop, as numbers; its Normalize).

    open_clip builds three forms (resize_mode shortest, longest, squash); anything else is
    refused rather than run unbounded on whatever image comes.
    """
    from open_clip.transform import CenterCropOrPad, ResizeKeepRatio
    from torchvision.transforms import CenterCrop, Normalize, Resize
    from torchvision.transforms.functional import pil_modes_mapping

    steps = list(getattr(preprocess, "transforms", []))
    names = [getattr(t, "__name__", type(t).__name__) for t in steps]
    refused = ScorerUnavailable(f"the model's image transform is not one moderator can bound: {', '.join(names)}")
    kept = [t for t, name in zip(steps, names, strict=True) if "convert" not in name.lower()]  # frames are RGB
    if len(kept) not in (3, 4) or not isinstance(kept[-1], Normalize):
        raise refused
    if type(kept[-2]).__name__ not in ("ToTensor", "MaybeToTensor"):
        raise refused
    resize, crop, normalize = kept[0], kept[1] if len(kept) == 4 else None, kept[-1]
    resample = pil_modes_mapping.get(getattr(resize, "interpolation", None), Image.Resampling.BICUBIC)
    if isinstance(resize, Resize) and resize.max_size is None:
        size = [resize.size] if isinstance(resize.size, int) else list(resize.size)
        if crop is None and len(size) == 2:
            return CropSpec(width=size[1], height=size[0], rule="squash", resample=resample), normalize
        if isinstance(crop, CenterCrop) and len(size) == 1:
            h, w = crop.size
            return CropSpec(width=w, height=h, rule="short_side", short_side=size[0], resample=resample), normalize
    if (
        isinstance(resize, ResizeKeepRatio)
        and isinstance(crop, CenterCrop | CenterCropOrPad)
        and not (resize.random_scale_prob or resize.random_aspect_prob)
        and tuple(resize.size) == tuple(crop.size)
    ):
        h, w = crop.size
        fill = _rgb_fill(getattr(crop, "fill", 0))
        spec = CropSpec(width=w, height=h, rule="keep_ratio", longest=resize.longest, resample=resample, fill=fill)
        return spec, normalize
    raise refused


def _rgb_fill(fill: Any) -> tuple[int, int, int]:
    values = [int(fill)] if isinstance(fill, int | float) else [int(v) for v in fill]
    if len(values) == 1:
        values *= 3
    return values[0], values[1], values[2]


def _rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


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
    backend = pick_backend(settings.backend, device)
    key = (settings.model, settings.pretrained, device, precision.value, backend.value)
    with _cache_lock:
        if key not in _cache:
            _cache[key] = _load(settings, device, precision, backend)
        return _cache[key]


def pick_backend(backend: Backend, device: str) -> Backend:
    if backend is Backend.AUTO:
        # Measured on a 2-core CPU (ViT-B-32): ONNX Runtime 2-4x PyTorch eager; on CUDA PyTorch stays.
        return Backend.ONNX if device == "cpu" else Backend.TORCH
    if backend is Backend.ONNX and device != "cpu":
        raise ScorerUnavailable("MODERATOR_BACKEND=onnx runs on CPU; on CUDA use torch (or auto)")
    return backend


def _load(settings: Settings, device: str, precision: Precision, backend: Backend) -> ClipModel:
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
    size = model.visual.image_size
    image_size = int(size[0] if isinstance(size, tuple | list) else size)
    tokenizer = open_clip.get_tokenizer(name)
    towers = _onnx_towers(settings, model, image_size, tokenizer, precision) if backend is Backend.ONNX else None
    if precision is Precision.INT8 and towers is None:
        # Only the image tower: it runs per image; the text tower runs once per policy and
        # open_clip's text path reads its weights' dtype, which quantised layers do not have.
        model.visual = torch.ao.quantization.quantize_dynamic(model.visual, {torch.nn.Linear}, dtype=torch.qint8)
    return ClipModel(
        model_id=model_id_for(settings),
        model=model,
        preprocess=preprocess,
        tokenizer=tokenizer,
        device=device,
        precision=precision,
        image_size=image_size,
        logit_scale=float(model.logit_scale.exp().item()),
        random_weights=random_weights,
        onnx=towers,
    )


def _onnx_towers(settings: Settings, model: Any, image_size: int, tokenizer: Any, precision: Precision) -> Any:
    """Both towers in ONNX Runtime (exported on first use, then cached), or None: PyTorch, said in one line."""
    from moderator.models.onnx_backend import ExportFailed, load_towers

    try:
        return load_towers(
            model,
            model_id_for(settings.model_copy(update={"precision": Precision.FP32})),
            image_size=image_size,
            tokenizer=tokenizer,
            int8=precision is Precision.INT8,
            cache_dir=settings.onnx_cache_dir,
            threads=settings.onnx_threads,
        )
    except ExportFailed as exc:
        logging.getLogger(__name__).warning("%s: %s is running on PyTorch instead of ONNX Runtime", exc, settings.model)
        return None


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
