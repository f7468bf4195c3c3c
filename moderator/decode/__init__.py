"""The decode layer: bytes -> frames and model crops, safely, whatever the bytes are.

- image: the allow-listed formats, pixel limits from the header, RGB conversion, orientation;
- jpeg: scans shorter than their header says (libjpeg would pad them silently);
- frames: model crops and scorer frames, with work bounded by the output size;
- pool: all of it in worker processes under a memory cap and a time limit, so that a file
  that crashes, spins or exhausts its decoder costs only itself.
"""

from moderator.decode.errors import DecodeError, DecodeFailure
from moderator.decode.frames import CropSpec, DecodedFrames, FrameRequest, crop_frame, decode_frames, frame_for_scorers
from moderator.decode.image import (
    ALLOWED_FORMATS,
    BACKGROUND,
    DecodedImage,
    decode_each,
    decode_image,
    frame_indices,
    to_rgb,
)
from moderator.decode.pool import DecodePool, shared_pool

__all__ = [
    "ALLOWED_FORMATS",
    "BACKGROUND",
    "CropSpec",
    "DecodeError",
    "DecodeFailure",
    "DecodePool",
    "DecodedFrames",
    "DecodedImage",
    "FrameRequest",
    "crop_frame",
    "decode_each",
    "decode_frames",
    "decode_image",
    "frame_for_scorers",
    "frame_indices",
    "shared_pool",
    "to_rgb",
]
