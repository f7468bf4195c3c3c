"""Why a file could not be decoded: a machine reason and a one-line message for people."""

from __future__ import annotations

from enum import StrEnum


class DecodeFailure(StrEnum):
    empty = "empty"
    # More bytes than max_image_bytes (checked by the caller before reading), or more memory
    # than a decode worker may use (decode_memory_mb).
    too_large = "too_large"
    not_an_image = "not_an_image"
    unsupported_format = "unsupported_format"
    too_many_pixels = "too_many_pixels"
    truncated = "truncated"
    corrupt = "corrupt"
    decoder_crashed = "decoder_crashed"  # the decode worker process died on this file
    decode_timeout = "decode_timeout"  # the file took longer than decode_timeout_s
    # Videos (moderator.decode.video).
    no_video_stream = "no_video_stream"  # a video container without a video stream (zero streams, audio only)
    video_too_long = "video_too_long"  # longer than video_max_seconds, by its header or its packets
    too_many_frames = "too_many_frames"  # more frames than video_max_frames, by its header or its packets


class DecodeError(Exception):
    """`reason` for machines, `str(e)` a one-line message for people."""

    def __init__(self, reason: DecodeFailure, message: str) -> None:
        super().__init__(" ".join(message.split()))
        self.reason = reason

    def __reduce__(self) -> tuple[type[DecodeError], tuple[DecodeFailure, str]]:
        return DecodeError, (self.reason, str(self))  # picklable across process pools and task queues
