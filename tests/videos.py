"""Videos built in code with PyAV, and hostile ones made from them (tests and benchmarks/video_decode.py).

Frame i of a clip made by `video()` is flat gray level `level(i)` (or the `frames` given), so a test can
tell which frame was sampled from its pixels.
"""

from __future__ import annotations

import io
import os
import struct
import tempfile
from collections.abc import Sequence
from fractions import Fraction

import av
import numpy as np

CONTAINER = {"mp4": "mp4", "mov": "mov", "webm": "webm", "mkv": "matroska"}
CODEC = {"mp4": "libx264", "mov": "libx264", "webm": "libvpx", "mkv": "libx264"}


def level(i: int) -> int:
    return (i * 8) % 256


def video(
    kind: str = "mp4",
    *,
    n: int = 30,
    fps: int | Fraction = 10,
    size: tuple[int, int] = (64, 48),
    codec: str | None = None,
    frames: Sequence[np.ndarray] | None = None,
    rotation: int = 0,
    faststart: bool = False,
    gop: int | None = None,
) -> bytes:
    """A clip of `n` frames (flat gray level(i), or `frames` as RGB arrays) at `fps`."""
    w, h = size
    pictures = list(frames) if frames is not None else [np.full((h, w, 3), level(i), np.uint8) for i in range(n)]
    if faststart:  # the mp4 muxer moves the index to the front only in a real file
        fd, path = tempfile.mkstemp(suffix=".mp4")
        os.close(fd)
        try:
            _write(path, "mp4", codec or CODEC[kind], pictures, fps, w, h, rotation, {"movflags": "faststart"}, gop)
            with open(path, "rb") as f:
                return f.read()
        finally:
            os.unlink(path)
    buf = io.BytesIO()
    _write(buf, CONTAINER[kind], codec or CODEC[kind], pictures, fps, w, h, rotation, {}, gop)
    return buf.getvalue()


def _write(
    target: io.BytesIO | str,
    fmt: str,
    codec: str,
    pictures: list[np.ndarray],
    fps: int | Fraction,
    w: int,
    h: int,
    rotation: int,
    options: dict[str, str],
    gop: int | None,
) -> None:
    with av.open(target, "w", format=fmt, options=options) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if gop is not None:  # frames between keyframes
            stream.codec_context.gop_size = gop
            stream.codec_context.options = {"x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0"}
        if rotation:
            stream.set_display_rotation(rotation)
        for picture in pictures:
            for packet in stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def audio_only(kind: str = "mp4") -> bytes:
    codec, samples = ("aac", 1024) if kind == "mp4" else ("libopus", 960)
    buf = io.BytesIO()
    with av.open(buf, "w", format=CONTAINER[kind]) as container:
        stream = container.add_stream(codec, rate=48000)
        for _ in range(20):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, samples), np.float32), format="fltp", layout="mono")
            frame.sample_rate = 48000
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def no_streams_mp4() -> bytes:
    """ftyp + moov with a movie header and no track at all (PyAV writes nothing without a stream)."""
    mvhd = (
        struct.pack(">I4sB3xIIII", 108, b"mvhd", 0, 0, 0, 1000, 0)
        + struct.pack(">IH10x", 0x10000, 0x100)
        + struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
        + bytes(24)
        + struct.pack(">I", 1)
    )
    ftyp = struct.pack(">I4s4sI4s", 20, b"ftyp", b"isom", 0x200, b"isom")
    return ftyp + struct.pack(">I4s", 8 + len(mvhd), b"moov") + mvhd


def ten_hours(kind: str = "mp4") -> bytes:
    """A real 10-hour stream: 60 frames, one every ten minutes."""
    return video(kind, n=60, fps=Fraction(1, 600))


def lying_duration_mkv() -> bytes:
    """An MKV whose header says 10 s while its packets run for 10 hours (the Duration element rewritten)."""
    data = bytearray(ten_hours("mkv"))
    at = data.find(b"\x44\x89\x88")  # Segment Info / Duration, an 8-byte float in milliseconds
    assert at > 0
    data[at + 3 : at + 11] = struct.pack(">d", 10_000.0)
    return bytes(data)


def vp9_claiming(side: int) -> bytes:
    """A one-frame VP9 WebM whose keyframe header claims side x side pixels (the bitstream's own size
    fields rewritten: containers' sizes are overridden by FFmpeg from the bitstream)."""
    data = bytearray(video("webm", n=1, codec="libvpx-vp9"))
    with av.open(io.BytesIO(bytes(data))) as container:
        first = next(bytes(p) for p in container.demux(container.streams.video[0]) if p.size)
    at = data.find(first[:16])
    header = bytearray(data[at : at + 12])
    # Profile 0 keyframe: 8 bits of flags, 24 of sync code, 4 of colour, then width-1 and height-1 (16 bits each).
    _set_bits(header, 36, 16, side - 1)
    _set_bits(header, 52, 16, side - 1)
    data[at : at + 12] = header
    return bytes(data)


def mkv_claiming(side: int) -> bytes:
    """A 320x288 H.264 MKV whose Matroska track header claims side x side (PixelWidth/PixelHeight)."""
    data = bytearray(video("mkv", n=5, size=(320, 288)))
    for element in (b"\xb0\x82\x01\x40", b"\xba\x82\x01\x20"):
        at = data.find(element)
        assert at > 0
        data[at + 2 : at + 4] = side.to_bytes(2, "big")
    return bytes(data)


def corrupt_middle(data: bytes, n: int = 200, seed: int = 0) -> bytes:
    out = bytearray(data)
    mid = len(out) // 2
    out[mid : mid + n] = np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()
    return bytes(out)


def _set_bits(buf: bytearray, start: int, n: int, value: int) -> None:
    for k in range(n):
        bit = (value >> (n - 1 - k)) & 1
        byte, off = divmod(start + k, 8)
        buf[byte] = (buf[byte] & ~(1 << (7 - off))) | (bit << (7 - off))
