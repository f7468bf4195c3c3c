"""Frames cut to what their users need, with work bounded by the output, not by the file.

- `crop_frame`: a model's input (open_clip's eval resize + centre crop, described by a
  CropSpec). Where the resized image would be at most RESIZED_LIMIT crops, open_clip's own
  steps (the same pixels, exactly); beyond, the crop is computed in source coordinates: only
  the region under it is resampled, straight to the output size. So a 1x100000 image costs a
  224x224 resample, not a 224x22,400,000 one (21 GB).
- `frame_for_scorers`: the frame kept for IMAGE scorers (open_nsfw squashes it to 256x256,
  pHash to 32x32): reduced by a whole factor while its shorter side stays >= `side`, and an
  extreme aspect ratio squeezed, so no kept frame is much larger than `side`^2.
- `decode_frames`: bytes -> both of these, the one function decode workers run, for images and
  videos alike (moderator.decode.video: sampled frames, each cut here as an image's frames are).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from PIL import Image

from moderator.decode.image import DecodedImage, decode_each
from moderator.decode.video import VideoLimits, decode_video_each, sniff

MAX_ASPECT = 8  # a kept frame's longer side is at most this many times `side`
# Resized images up to this many crops are made as open_clip makes them; beyond (aspect ratios
# past 64:1 for a square crop) only the crop's region is resampled.
RESIZED_LIMIT = 64

ResizeRule = Literal["short_side", "keep_ratio", "squash"]


@dataclass(frozen=True)
class CropSpec:
    """A model's input geometry, as numbers (picklable, for decode workers).

    rule "short_side": torchvision Resize(int) (shorter side to `short_side`, the longer truncated);
    "keep_ratio": open_clip's ResizeKeepRatio (`longest` 0 = fit the shorter side, 1 = the longer);
    "squash": Resize((h, w)). Then a centre crop to width x height, padding with `fill` where the
    resized image is smaller (CenterCrop pads with black, CenterCropOrPad with its fill).
    """

    width: int
    height: int
    rule: ResizeRule
    short_side: int = 0
    longest: float = 0.0
    resample: int = Image.Resampling.BICUBIC
    fill: tuple[int, int, int] = (0, 0, 0)

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """The size open_clip's resize step would give a width x height image."""
        if self.rule == "squash":
            return self.width, self.height
        if self.rule == "short_side":
            s = self.short_side
            if width <= height:
                return s, int(s * height / width)
            return int(s * width / height), s
        ratio_h, ratio_w = height / self.height, width / self.width
        ratio = max(ratio_h, ratio_w) * self.longest + min(ratio_h, ratio_w) * (1.0 - self.longest)
        return max(1, round(width / ratio)), max(1, round(height / ratio))


def crop_frame(frame: Image.Image, spec: CropSpec) -> np.ndarray:
    """uint8 [height, width, 3]: `spec` applied to an RGB frame, with work bounded by the output size."""
    w, h = frame.size
    rw, rh = spec.resized_size(w, h)
    left, out_w, pad_x = _axis(rw, spec.width)
    top, out_h, pad_y = _axis(rh, spec.height)
    if rw * rh <= RESIZED_LIMIT * spec.width * spec.height:
        # open_clip's own steps (PIL resize, then crop): the same pixels, exactly.
        resized = frame if (rw, rh) == (w, h) else frame.resize((rw, rh), spec.resample)
        region = resized.crop((left, top, left + out_w, top + out_h))
    else:
        # Resampling the crop's region only, straight to the output: the same geometry; the order of
        # Pillow's two passes may differ from a full resize, so pixels may differ by rounding.
        box = (w * left / rw, h * top / rh, w * (left + out_w) / rw, h * (top + out_h) / rh)
        region = frame.resize((out_w, out_h), spec.resample, box=box)
    if (out_w, out_h) != (spec.width, spec.height):
        canvas = Image.new("RGB", (spec.width, spec.height), spec.fill)
        canvas.paste(region, (pad_x, pad_y))
        region = canvas
    return np.asarray(region, dtype=np.uint8)


def _axis(resized: int, out: int) -> tuple[int, int, int]:
    """(offset, length) of the centre crop in resized pixels, and the padding before it (torchvision's)."""
    if resized >= out:
        return int(round((resized - out) / 2.0)), out, 0
    return 0, resized, (out - resized) // 2


def frame_for_scorers(frame: Image.Image, side: int) -> Image.Image:
    """The frame reduced for IMAGE scorers: shorter side kept >= `side`, longer <= MAX_ASPECT * side."""
    factor = min(frame.size) // side if side > 0 else 0
    if factor >= 2:
        frame = frame.reduce(factor)  # box filter by a whole factor, as JPEG draft mode scales
    cap = MAX_ASPECT * max(side, 1)
    w, h = frame.size
    if max(w, h) > cap:
        frame = frame.resize((min(w, cap), min(h, cap)), Image.Resampling.BOX)
    return frame


@dataclass(frozen=True)
class FrameRequest:
    """What to make from one file's bytes (picklable: it travels to decode workers)."""

    max_pixels: int
    max_frames: int = 4
    draft_size: int | None = None  # shorter side wanted from JPEG draft mode
    crop: CropSpec | None = None  # model input wanted: crops of every sampled frame
    keep_side: int | None = None  # frames wanted for IMAGE scorers, reduced to this shorter side
    video: VideoLimits = field(default_factory=VideoLimits)  # how videos are sampled and bounded


@dataclass
class DecodedFrames:
    format: str
    width: int  # full-resolution size, upright
    height: int
    n_frames: int  # frames in the file; the outputs hold a sample of them
    crops: np.ndarray | None  # uint8 [sampled frames, height, width, 3] when a crop was asked for
    frames: list[Image.Image] | None  # reduced RGB frames when keep_side was given
    seconds: dict[str, float] = field(default_factory=dict)  # "decode", "preprocess": for the stage timer
    times: list[float] | None = None  # videos: the timestamp (s) of each sampled frame
    duration: float | None = None  # videos: seconds


def decode_frames(data: bytes, request: FrameRequest) -> DecodedFrames:
    """Decode, cutting each sampled frame to the request as soon as it is decoded; raises DecodeError only."""
    crop, side = request.crop, request.keep_side
    cutting = 0.0

    def cut(frame: Image.Image) -> tuple[np.ndarray | None, Image.Image | None]:
        nonlocal cutting
        start = time.perf_counter()
        out = (
            crop_frame(frame, crop) if crop is not None else None,
            frame_for_scorers(frame, side) if side is not None else None,
        )
        cutting += time.perf_counter() - start
        return out

    start = time.perf_counter()
    demuxer = sniff(data)
    decoded: DecodedImage[tuple[np.ndarray | None, Image.Image | None]]
    if demuxer is not None:
        decoded = decode_video_each(data, demuxer, cut, max_pixels=request.max_pixels, limits=request.video)
    else:
        decoded = decode_each(
            data, cut, max_pixels=request.max_pixels, max_frames=request.max_frames, draft_size=request.draft_size
        )
    seconds = {"decode": time.perf_counter() - start - cutting, "preprocess": cutting}
    crops = [c for c, _ in decoded.frames if c is not None]
    kept = [f for _, f in decoded.frames if f is not None]
    return DecodedFrames(
        format=decoded.format,
        width=decoded.width,
        height=decoded.height,
        n_frames=decoded.n_frames,
        crops=np.stack(crops) if crop is not None else None,
        frames=kept if side is not None else None,
        seconds=seconds,
        times=decoded.times,
        duration=decoded.duration,
    )
