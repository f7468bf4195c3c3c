"""Videos (mp4, mov, webm, mkv) with PyAV: the first frame plus frames spread evenly over the duration.

Run only in the decode worker processes (moderator.decode.pool: memory cap, time limit), through
frames.decode_frames, which hands each frame to the same cutting as an image's frames.

Bounded whatever the file claims, each limit checked on the header first and again on the stream:
- only the container formats of CONTAINERS are opened: a file goes to FFmpeg only with one of their
  signatures (sniff), FFmpeg may use no other demuxer (format_whitelist: never, say, a playlist that
  names other files), and the format it reports after probing must be one of them, else nothing is
  decoded; only the codecs of CODECS are decoded;
- pixels per frame (max_pixels) on the stream header and on every decoded frame;
- duration (VideoLimits.max_seconds) on the header and on every packet's timestamp, and frames
  (VideoLimits.max_frames) on the header's count and on the packets counted: a first pass over the
  packets (no decoding) finds the real length, whatever the header says, and plans the decoding;
- work: each sample decodes from the keyframe before it, at most SAMPLE_DECODE_LIMIT frames (a later
  target snaps back to that keyframe, and its own timestamp is the one recorded);
- bytes are the source's limit (max_image_bytes), decode time the pool's (decode_timeout_s).
"""

from __future__ import annotations

import bisect
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from moderator.decode.errors import DecodeError, DecodeFailure
from moderator.decode.image import MEMORY_MESSAGE, DecodedImage, check_pixels

if TYPE_CHECKING:
    from PIL import Image

T = TypeVar("T")

# FFmpeg's demuxer for each signature sniff() knows -> the format name it must report after probing.
CONTAINERS: dict[str, str] = {"mov": "mov,mp4,m4a,3gp,3g2,mj2", "matroska": "matroska,webm"}
_OPEN_OPTIONS = {"format_whitelist": ",".join(CONTAINERS)}
ALLOWED_TEXT = "MP4, MOV, WebM, MKV"
# FFmpeg decoder names (software decoders only) that are run; any other codec is refused.
CODECS = frozenset({"h264", "hevc", "vp8", "vp9", "av1", "libdav1d", "libvpx", "libvpx-vp9", "mpeg4", "mjpeg"})
SAMPLE_DECODE_LIMIT = 600  # frames decoded for one sample at most (from its keyframe)
_ISO_IMAGE_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1", b"avif", b"avis"}
_QUICKTIME_ATOMS = {b"moov", b"mdat", b"wide", b"free", b"skip"}  # old .mov files start without ftyp
_EBML = b"\x1a\x45\xdf\xa3"


@dataclass(frozen=True)
class VideoLimits:
    """How a video is sampled and bounded (settings video_frames, video_max_seconds, video_max_frames)."""

    frames: int = 8  # sampled evenly over the duration, besides the first frame
    max_seconds: float = 3600.0
    max_frames: int = 250_000


def sniff(data: bytes) -> str | None:
    """The demuxer for a video signature (a key of CONTAINERS), or None: not a video (HEIF/AVIF are images)."""
    box = data[4:8]
    if box == b"ftyp":
        return None if data[8:12] in _ISO_IMAGE_BRANDS else "mov"
    if box in _QUICKTIME_ATOMS and int.from_bytes(data[:4], "big") >= 8:
        return "mov"
    if data.startswith(_EBML):
        return "matroska"
    return None


def decode_video_each(
    data: bytes, demuxer: str, each: Callable[[Image.Image], T], *, max_pixels: int, limits: VideoLimits
) -> DecodedImage[T]:
    """Sampled frames of a video, `each` applied to every one as it is decoded. Raises DecodeError only."""
    import av

    def reopen() -> Any:
        return av.open(io.BytesIO(data), options=dict(_OPEN_OPTIONS), metadata_errors="ignore")

    try:
        with reopen() as container:
            decoded = _decode_opened(container, reopen, demuxer, each, max_pixels, limits)
    except DecodeError:
        raise
    except MemoryError:
        raise DecodeError(DecodeFailure.too_large, MEMORY_MESSAGE) from None
    except Exception as e:  # whatever a hostile file provokes in FFmpeg: recorded, never raised through
        raise _failure(e, data) from e
    decoded.format = _format_name(demuxer, data)
    return decoded


@dataclass
class _Packets:
    """The first pass: every video packet's timestamp and keyframe flag, in file (decode) order."""

    pts: list[int]
    keyframe: list[bool]
    start: int  # the smallest timestamp: the stream's time 0
    end: int  # the last timestamp plus its duration


def _decode_opened(
    container: Any,
    reopen: Callable[[], Any],
    demuxer: str,
    each: Callable[[Image.Image], T],
    max_pixels: int,
    limits: VideoLimits,
) -> DecodedImage[T]:
    fmt = container.format.name
    if fmt != CONTAINERS[demuxer]:  # probed as another format than its signature says
        raise DecodeError(
            DecodeFailure.unsupported_format, f"{fmt} containers are not decoded (allowed: {ALLOWED_TEXT})"
        )
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams})
        what = "no streams at all" if not kinds else f"only {' and '.join(kinds)} streams"
        raise DecodeError(DecodeFailure.no_video_stream, f"no video stream: the {fmt} file has {what}")
    stream = container.streams.video[0]
    ctx = stream.codec_context
    check_pixels((ctx.width, ctx.height), max_pixels)  # the header's size: nothing decoded by us yet
    if ctx.name not in CODECS:
        raise DecodeError(DecodeFailure.unsupported_format, f"{ctx.name} video is not decoded (allowed: {_codecs()})")
    tb = float(stream.time_base) if stream.time_base else 1e-6
    claimed = _claimed_seconds(container, stream, tb)
    _check_length(claimed or 0.0, int(stream.frames or 0), limits, "its header claims")
    packets = _first_pass(container, stream, tb, limits)
    if not packets.pts:
        raise DecodeError(DecodeFailure.truncated, "the video stream holds no frames (the file is cut short or empty)")
    duration = (packets.end - packets.start) * tb
    if claimed and claimed - duration > max(1.0, 0.05 * claimed):
        raise DecodeError(
            DecodeFailure.truncated,
            f"the video stream ends at {duration:.2f} s of the {claimed:.2f} s its header claims: truncated",
        )
    plan = _plan(packets, tb, limits.frames)
    with reopen() as again:  # opened afresh: the second pass sees the very packets the first one counted
        second = again.streams.video[0]
        second.codec_context.thread_count = 1  # one decoder thread per worker: the pool has a worker per core
        frames, times, turned = _decode_planned(again, second, packets, plan, each, max_pixels, tb)
    if not frames:
        raise DecodeError(DecodeFailure.corrupt, "no frame of the video stream could be decoded")
    width, height = (ctx.height, ctx.width) if turned else (ctx.width, ctx.height)
    return DecodedImage(
        frames=frames,
        format=demuxer,
        width=width,  # upright, as images' are
        height=height,
        n_frames=len(packets.pts),
        times=times,
        duration=round(duration, 3),
    )


def _codecs() -> str:
    return ", ".join(sorted(c for c in CODECS if not c.startswith("lib")))


def _claimed_seconds(container: Any, stream: Any, tb: float) -> float | None:
    if stream.duration:
        return float(stream.duration * tb)
    if container.duration and len(container.streams) == 1:  # the container's: of its only stream
        return float(container.duration / 1_000_000)
    return None


def _check_length(seconds: float, frames: int, limits: VideoLimits, whose: str) -> None:
    if seconds > limits.max_seconds:
        raise DecodeError(
            DecodeFailure.video_too_long,
            f"{whose} {seconds:,.0f} s, longer than the limit of {limits.max_seconds:,.0f} s"
            " (MODERATOR_VIDEO_MAX_SECONDS)",
        )
    if frames > limits.max_frames:
        raise DecodeError(
            DecodeFailure.too_many_frames,
            f"{whose} {frames:,} frames, more than the limit of {limits.max_frames:,} (MODERATOR_VIDEO_MAX_FRAMES)",
        )


def _first_pass(container: Any, stream: Any, tb: float, limits: VideoLimits) -> _Packets:
    """Packets only (demuxing, no decoding): the stream's real length, checked as it is read."""
    pts: list[int] = []
    keyframe: list[bool] = []
    start = end = None
    for packet in container.demux(stream):
        if not packet.size:
            continue  # the demuxer's end-of-stream marker
        p = packet.pts if packet.pts is not None else packet.dts
        if p is None:
            p = pts[-1] if pts else 0
        pts.append(p)
        keyframe.append(bool(packet.is_keyframe))
        start = p if start is None else min(start, p)
        end = max(end or p, p + (packet.duration or 0))
        if len(pts) % 64 == 0 or len(pts) > limits.max_frames:
            _check_length((end - start) * tb, len(pts), limits, "its video stream holds")
    if start is None or end is None:
        return _Packets([], [], 0, 0)
    _check_length((end - start) * tb, len(pts), limits, "its video stream holds")
    return _Packets(pts, keyframe, start, end)


def _plan(packets: _Packets, tb: float, n: int) -> list[tuple[int, int]]:
    """(first packet to decode, target timestamp) per sample, in timestamp order: the first frame and the
    middles of n equal spans of the duration, each decoded from the keyframe before it."""
    span = packets.end - packets.start
    targets = sorted({packets.start, *(packets.start + round(span * (i + 0.5) / n) for i in range(n))})
    order = sorted(range(len(packets.pts)), key=packets.pts.__getitem__)  # presentation order
    by_pts = [packets.pts[i] for i in order]
    keys = [i for i, k in enumerate(packets.keyframe) if k] or [0]
    plan = []
    for target in targets:
        at = bisect.bisect_left(by_pts, target)
        index = order[min(at, len(order) - 1)]  # the packet of the first frame at or after the target
        key = keys[max(0, bisect.bisect_right(keys, index) - 1)]
        if index - key > SAMPLE_DECODE_LIMIT:  # too far from its keyframe: the keyframe stands for it
            target = packets.pts[key]
        plan.append((key, target))
    return sorted(set(plan), key=lambda p: (p[1], p[0]))


def _decode_planned(
    container: Any,
    stream: Any,
    packets: _Packets,
    plan: list[tuple[int, int]],
    each: Callable[[Image.Image], T],
    max_pixels: int,
    tb: float,
) -> tuple[list[T], list[float], bool]:
    """The second pass: only the packets the plan needs are decoded; each target takes the first frame
    at or after it (or, at the end of the stream, the last one decoded)."""
    ctx = stream.codec_context
    out: list[T] = []
    times: list[float] = []
    taken: set[int] = set()
    turned = False  # a quarter turn to display (phone videos): sides swapped
    j = 0
    fed = -2
    last: Any = None

    def take(frame: Any) -> None:
        nonlocal j
        while j < len(plan) and frame.pts is not None and frame.pts >= plan[j][1]:
            j += 1
            _keep(frame)

    def _keep(frame: Any) -> None:
        nonlocal turned
        if frame.pts in taken:
            return  # two targets met by the same frame
        taken.add(frame.pts)
        check_pixels((frame.width, frame.height), max_pixels)  # a stream may change size midway
        image = _upright(frame.to_image(), frame)
        turned = image.size != (frame.width, frame.height)
        out.append(each(image))
        times.append(round((frame.pts - packets.start) * tb, 3))

    index = -1
    budget = len(plan) * (SAMPLE_DECODE_LIMIT + 64)  # packets decoded at most, whatever the decoder outputs
    for packet in container.demux(stream):
        if j >= len(plan) or budget <= 0:
            break
        if not packet.size:
            continue  # not counted by the first pass either
        index += 1
        if index < plan[j][0]:
            continue
        if fed != index - 1:
            ctx.flush_buffers()  # a jump to another keyframe: nothing decoded before it is referenced
        fed = index
        budget -= 1
        for frame in ctx.decode(packet):
            last = frame
            take(frame)
    if j < len(plan):
        for frame in ctx.decode(None):  # the frames the decoder still holds
            last = frame
            take(frame)
    if j < len(plan) and last is not None:
        _keep(last)
    return out, times, turned


def _upright(image: Image.Image, frame: Any) -> Image.Image:
    """The display rotation (phone videos) applied: frame.rotation is counter-clockwise degrees."""
    from PIL import Image as PILImage

    rotation = round(getattr(frame, "rotation", 0) or 0) % 360
    turn = {90: PILImage.Transpose.ROTATE_90, 180: PILImage.Transpose.ROTATE_180, 270: PILImage.Transpose.ROTATE_270}
    return image.transpose(turn[rotation]) if rotation in turn else image


def _format_name(demuxer: str, data: bytes) -> str:
    if demuxer == "matroska":
        return "WEBM" if b"webm" in data[:64] else "MKV"  # the EBML header's DocType
    return "MOV" if data[8:12] == b"qt  " or data[4:8] != b"ftyp" else "MP4"


def _failure(e: BaseException, data: bytes) -> DecodeError:
    text = " ".join(str(e).split()) or type(e).__name__
    lowered = text.lower()
    if isinstance(e, EOFError) or "end of file" in lowered or _box_cut_short(data):
        return DecodeError(DecodeFailure.truncated, f"the video file is truncated (the data ends early): {text}")
    return DecodeError(DecodeFailure.corrupt, f"corrupt video data: {type(e).__name__}: {text}")


def _box_cut_short(data: bytes) -> bool:
    """An MP4/MOV whose top-level boxes run past the end of the file (FFmpeg only says "invalid data")."""
    if sniff(data) != "mov":
        return False
    pos = 0
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos : pos + 4], "big")
        if size == 1 and pos + 16 <= len(data):
            size = int.from_bytes(data[pos + 8 : pos + 16], "big")
        elif size == 0:  # the last box, to the end of the file
            return False
        if size < 8:
            return False  # not a box structure: corrupt, not cut
        pos += size
    return pos > len(data)
