"""Images for the review UI: always decoded and re-encoded by the server, never passed through.

The browser only ever gets a JPEG the server made from decoded pixels, so a hostile
upload (SVG with script, polyglot HTML/JPEG) cannot run in the reviewer's origin. A video's
frames are decoded in the decode worker processes (memory cap, time limit), as in a scan: the
item's image is its first frame, and each sampled frame has its own (the page's frame strip).
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable
from typing import Any

from PIL import Image

from moderator.settings import Settings

# How the scorers' evidence names a video frame's place (ScoringBatch.at): "... at 12.5 s)".
_AT = re.compile(r" at ([0-9]+(?:\.[0-9]+)?) s\)")
_SEVERITY = {"allow": 0, "tag": 1, "review": 2, "block": 3}

JPEG_QUALITY = 85


def thumbnail_jpeg(data: bytes, settings: Settings, size: int | None = None) -> bytes:
    """A JPEG of at most `size` pixels on its longest side; raises DecodeError on bad input."""
    from moderator.decode import decode_image
    from moderator.decode.video import sniff

    side = size or settings.thumbnail_size
    if sniff(data):
        return video_frame_jpeg(data, settings, 0, side)
    decoded = decode_image(data, max_pixels=settings.max_image_pixels, max_frames=1, draft_size=side)
    return _jpeg(decoded.frames[0], side)


def video_frame_jpeg(data: bytes, settings: Settings, index: int, size: int | None = None) -> bytes:
    """Sampled frame `index` of a video (as the scan samples it), as a JPEG; raises DecodeError on bad input,
    IndexError past the last frame."""
    from moderator.decode import DecodeError, FrameRequest, decode_frames
    from moderator.decode.video import VideoLimits
    from moderator.engine.prepare import decode_pool

    side = size or settings.thumbnail_size
    limits = VideoLimits(settings.video_frames, settings.video_max_seconds, settings.video_max_frames)
    request = FrameRequest(max_pixels=settings.max_image_pixels, keep_side=side, video=limits)
    with decode_pool(settings) as pool:
        [out] = pool.map(decode_frames, [data], [request])
    if isinstance(out, DecodeError):
        raise out
    frames = out.frames or []
    if not 0 <= index < len(frames):
        raise IndexError(f"the video has {len(frames)} sampled frames")
    return _jpeg(frames[index], side)


def _jpeg(frame: Image.Image, side: int) -> bytes:
    frame = frame.convert("RGB")
    frame.thumbnail((side, side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    frame.save(out, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    return out.getvalue()


def load_thumbnail(uri: str, settings: Settings, size: int | None = None) -> bytes:
    from moderator.sources import read_uri

    return thumbnail_jpeg(read_uri(uri, settings), settings, size)


def load_video_frame(uri: str, settings: Settings, index: int, size: int | None = None) -> bytes:
    from moderator.sources import read_uri

    return video_frame_jpeg(read_uri(uri, settings), settings, index, size)


def frame_strip(meta: dict[str, Any] | None, results: Iterable[Any]) -> list[dict[str, Any]]:
    """A video's sampled frames for the item page: each one's time, and whether it is the worst (the frame
    the most severe fired class names in its evidence). Empty for images."""
    times = (meta or {}).get("frame_times")
    if not isinstance(times, list):
        return []
    fired = [f for r in results for f in (r.fired or [])]
    fired.sort(key=lambda f: (_SEVERITY.get(str(f.get("action")), 0), float(f.get("score") or 0)), reverse=True)
    worst = next((float(m.group(1)) for f in fired if (m := _AT.search(str(f.get("evidence") or "")))), None)
    return [{"at": t, "worst": worst is not None and abs(float(t) - worst) < 1e-6} for t in times]


def why_unavailable(exc: BaseException, uri: str) -> str:
    """One sentence for a reviewer on why the server could not render an item's image (the 404's detail).

    Source messages start with the uri (the page already shows it) and are kept otherwise: they say
    what an operator must fix (e.g. the S3 permission the server lacks)."""
    from moderator.decode import DecodeError
    from moderator.errors import SourceError

    text = " ".join(str(exc).split())
    if text.startswith(f"{uri}: "):
        text = text[len(uri) + 2 :]
    if isinstance(exc, SourceError):
        where = "the S3 object" if uri.startswith("s3://") else "the source"
        return f"the server cannot read {where}: {text}"
    if isinstance(exc, FileNotFoundError):
        return "the file is no longer at this path"
    if isinstance(exc, PermissionError):
        return "the server may not read this file (permission denied)"
    if isinstance(exc, DecodeError):
        return f"its bytes cannot be decoded as an image ({exc.reason}): {text}"
    if isinstance(exc, IndexError):
        return f"no such frame: {text}"
    if isinstance(exc, ValueError) and "no source can read" in text:
        return "the server cannot find it: the file is gone, or no source reads this address"
    return f"the server could not render it ({type(exc).__name__})"


def known_unavailable(status: str | None, error: str | None) -> str | None:
    """Why the image cannot be shown, when the stored item already says so (no read tried)."""
    if status == "deleted":
        return "the source object was deleted" + (f": {error}" if error else "")
    return None
