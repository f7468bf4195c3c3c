"""Images for the review UI: always decoded and re-encoded by the server, never passed through.

The browser only ever gets a JPEG the server made from decoded pixels, so a hostile
upload (SVG with script, polyglot HTML/JPEG) cannot run in the reviewer's origin.
"""

from __future__ import annotations

import io

from PIL import Image

from moderator.settings import Settings

JPEG_QUALITY = 85


def thumbnail_jpeg(data: bytes, settings: Settings, size: int | None = None) -> bytes:
    """A JPEG of at most `size` pixels on its longest side; raises DecodeError on bad input."""
    from moderator.decode import decode_image

    side = size or settings.thumbnail_size
    decoded = decode_image(data, max_pixels=settings.max_image_pixels, max_frames=1, draft_size=side)
    frame = decoded.frames[0].convert("RGB")
    frame.thumbnail((side, side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    frame.save(out, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    return out.getvalue()


def load_thumbnail(uri: str, settings: Settings, size: int | None = None) -> bytes:
    from moderator.sources import read_uri

    return thumbnail_jpeg(read_uri(uri, settings), settings, size)
