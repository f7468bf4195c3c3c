"""Safe image decoding: bytes -> upright RGB frames, or a DecodeError saying why not.

Only an allowlist of formats is ever opened (nothing that runs an external program,
such as EPS through Ghostscript); the pixel count is checked as soon as the header is
parsed, before any pixel is read; a JPEG whose scans are shorter than its header says is
refused before decoding (moderator.decode.jpeg); every failure, expected or not, comes
out as a DecodeError with a reason, so one bad file never stops a batch. No Pillow global
is written (LOAD_TRUNCATED_IMAGES stays False): decode may run in several threads at once.
What no check can catch (a decoder that crashes, spins or eats memory) is contained by
running this in worker processes (moderator.decode.pool).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
import pillow_heif
from PIL import ExifTags, Image, ImageFile, UnidentifiedImageError

from moderator.decode import jpeg
from moderator.decode.errors import DecodeError, DecodeFailure

# Pillow's names for the formats that are opened; everything else is refused. HEIF (HEIC phone photos)
# is pillow-heif's plugin, AVIF Pillow's own; both give the size from the header, before decoding.
ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "HEIF", "AVIF")
_ALLOWED_TEXT = "JPEG, PNG, WebP, GIF, BMP, TIFF, HEIC/HEIF, AVIF"
# Registered once, at import (before any decode thread or worker exists). No embedded thumbnail is ever
# decoded instead of the picture, nor depth or auxiliary images; one thread per decode (the pool has a
# worker per core). libheif applies the file's own rotation (irot/imir) and reports EXIF orientation 1.
pillow_heif.register_heif_opener(thumbnails=False, depth_images=False, aux_images=False, decode_threads=1)
T = TypeVar("T")
MEMORY_MESSAGE = (
    "decoding this file needs more memory than a decoder may use (MODERATOR_DECODE_MEMORY_MB); "
    "raise it only for files you trust"
)

# Transparent areas are composited onto mid-gray: light and dark content both stay
# visible (on white a white sticker would vanish, on black black text would).
BACKGROUND: tuple[int, int, int] = (128, 128, 128)

# EXIF orientation -> the transposition that makes the image upright (as ImageOps.exif_transpose).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_SIDES = {5, 6, 7, 8}


@dataclass
class DecodedImage(Generic[T]):
    frames: list[T]  # decode_image: RGB, upright, independent of the source bytes; decode_each: what `each` made
    format: str  # Pillow's format name (MPO for multi-picture JPEGs)
    width: int  # full-resolution size, upright (before any draft reduction)
    height: int
    n_frames: int  # frames (or pages) in the file; `frames` holds a sample of them
    times: list[float] | None = None  # videos: each sampled frame's timestamp (seconds from the start)
    duration: float | None = None  # videos: seconds, as the stream's packets say


def decode_image(
    data: bytes, *, max_pixels: int, max_frames: int = 4, draft_size: int | None = None
) -> DecodedImage[Image.Image]:
    """Decode up to `max_frames` frames, evenly spread, to RGB. Raises DecodeError only.

    `draft_size`: the shortest side wanted; JPEGs are then decoded at the smallest
    DCT scale (1/2, 1/4, 1/8) that still keeps both sides >= draft_size.
    """
    return decode_each(data, _same, max_pixels=max_pixels, max_frames=max_frames, draft_size=draft_size)


def decode_each(
    data: bytes,
    each: Callable[[Image.Image], T],
    *,
    max_pixels: int,
    max_frames: int = 4,
    draft_size: int | None = None,
) -> DecodedImage[T]:
    """decode_image, with `each` applied to every frame as soon as it is decoded (`frames` holds what it
    returns): only one full-size frame is in memory at a time. Whatever `each` raises becomes a DecodeError."""
    if not data:
        raise DecodeError(DecodeFailure.empty, "the file is empty (0 bytes)")
    try:
        readable = jpeg.checked(data) if data.startswith(jpeg.SIGNATURE) else data
        with Image.open(io.BytesIO(readable), formats=ALLOWED_FORMATS) as img:
            return _decode_opened(img, _pixel_limit(max_pixels), max_frames, draft_size, each)
    except DecodeError:
        raise
    except UnidentifiedImageError:
        raise _unidentified(data) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DecodeError(
            DecodeFailure.too_many_pixels, f"refused as a possible decompression bomb before reading pixels: {e}"
        ) from e
    except MemoryError:
        raise DecodeError(DecodeFailure.too_large, MEMORY_MESSAGE) from None  # no traceback holding the frames
    except Exception as e:  # anything else a hostile file provokes: recorded, never raised through
        raise _failure(e, data) from e


def _same(frame: Image.Image) -> Image.Image:
    return frame


def frame_indices(n_frames: int, max_frames: int) -> list[int]:
    """Up to max_frames indices spread evenly over n_frames, first and last included."""
    k = max(1, min(max_frames, n_frames))
    if k == 1:
        return [0]
    return sorted({round(i * (n_frames - 1) / (k - 1)) for i in range(k)})


def to_rgb(img: Image.Image) -> Image.Image:
    """A new RGB image: deep and float modes scaled into 0..255, transparency composited onto BACKGROUND."""
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        # Pillow's own convert() clips these at 255 (16-bit mid-gray would turn white).
        return Image.fromarray(_scale_to_uint8(np.asarray(img), img.mode)).convert("RGB")
    try:
        if img.has_transparency_data:
            base = Image.new("RGBA", img.size, (*BACKGROUND, 255))
            return Image.alpha_composite(base, img.convert("RGBA")).convert("RGB")
        return img.convert("RGB")
    except ValueError as e:  # a mode Pillow cannot convert
        raise DecodeError(DecodeFailure.unsupported_format, f"{img.mode} images cannot be converted to RGB: {e}") from e


def _scale_to_uint8(a: np.ndarray, mode: str) -> np.ndarray:
    if a.size and mode != "F" and a.min() >= 0 and a.max() <= 0xFFFF:
        # 16-bit samples (I;16*, or the 32-bit I that holds them): keep the high byte.
        return (a >> 8).astype(np.uint8)
    f = np.nan_to_num(a.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if not f.size:
        return f.astype(np.uint8)
    lo, hi = float(f.min()), float(f.max())
    if mode == "F" and lo >= 0.0 and hi <= 1.0:  # normalised floats
        lo, hi = 0.0, 1.0
    scaled = (f - lo) * (255.0 / (hi - lo or 1.0)) + 0.5  # otherwise stretch the range found
    return np.clip(scaled, 0, 255).astype(np.uint8)


def _pixel_limit(max_pixels: int) -> int:
    # Pillow warns (DecompressionBombWarning) above Image.MAX_IMAGE_PIXELS and raises above
    # twice that. Making the warning an error with warnings.catch_warnings is not thread-safe
    # before Python 3.14 (it swaps the process-wide filter list, and decode runs in several
    # threads), and writing MAX_IMAGE_PIXELS races the same way. So we only read it: refusing
    # everything above min(max_pixels, Pillow's limit) refuses every image Pillow warns about.
    pillow = Image.MAX_IMAGE_PIXELS
    return max_pixels if pillow is None else min(max_pixels, pillow)


def check_pixels(size: tuple[int, int], limit: int) -> None:
    w, h = size
    if w * h > limit:
        raise DecodeError(
            DecodeFailure.too_many_pixels,
            f"{w}x{h} is {w * h:,} pixels, more than the limit of {limit:,}; refused as a possible "
            "decompression bomb before reading pixels (MODERATOR_MAX_IMAGE_PIXELS; PIL.Image.MAX_IMAGE_PIXELS "
            "caps it)",
        )


def _decode_opened(
    img: ImageFile.ImageFile, limit: int, max_frames: int, draft_size: int | None, each: Callable[[Image.Image], T]
) -> DecodedImage[T]:
    check_pixels(img.size, limit)  # header only: no pixel has been read yet
    width, height = img.size
    n_frames = int(getattr(img, "n_frames", 1))
    if draft_size and draft_size > 0 and img.format in ("JPEG", "MPO"):
        img.draft("RGB", (draft_size, draft_size))
    # An MPO's other pictures are stereo views or previews of the same photo, and Pillow
    # cannot seek to them after a draft: only the primary picture is decoded.
    indices = [0] if img.format == "MPO" else frame_indices(n_frames, max_frames)
    frames: list[T] = []
    orientation = 1
    for index in indices:
        if index:
            img.seek(index)
            check_pixels(img.size, limit)  # GIF frames may grow the canvas, TIFF pages differ
        img.load()  # before getexif(), which may load (and swallow a load error) itself
        if index == 0:
            orientation = _orientation(img)
        frame = to_rgb(img)
        if orientation in _UPRIGHT:
            frame = frame.transpose(_UPRIGHT[orientation])
        frames.append(each(frame))
        del frame  # before the next frame is decoded
    if orientation in _SWAPS_SIDES:
        width, height = height, width
    return DecodedImage(frames=frames, format=img.format or "", width=width, height=height, n_frames=n_frames)


def _orientation(img: Image.Image) -> int:
    # Read from the opened file rather than calling ImageOps.exif_transpose on the RGB frame:
    # converted frames lose TIFF tags, and we need it once for every sampled frame.
    try:
        value = img.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # malformed EXIF: the pixels are still good, keep them as stored
        return 1
    return value if isinstance(value, int) else 1


def _failure(e: BaseException, data: bytes) -> DecodeError:
    text = " ".join(str(e).split()) or type(e).__name__
    lowered = text.lower()
    if isinstance(e, EOFError) or any(w in lowered for w in ("truncated", "requires a buffer", "end of file")):
        return DecodeError(DecodeFailure.truncated, f"the file is truncated (the data ends early): {text}")
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and int.from_bytes(data[4:8], "little") + 8 > len(data):
        # libwebp only says it "could not create decoder object"; the RIFF header tells why.
        return DecodeError(DecodeFailure.truncated, "the WebP file is shorter than its header says: truncated")
    return DecodeError(DecodeFailure.corrupt, f"corrupt image data: {type(e).__name__}: {text}")


def _unidentified(data: bytes) -> DecodeError:
    prefix = data[:16]
    allowed = _accepting(prefix, ALLOWED_FORMATS)
    if allowed:
        # The signature is right but Pillow could not parse the header; Image.open hides
        # why, so ask the format's own parser again to tell truncation from corruption.
        factory, _ = Image.OPEN[allowed[0]]
        try:
            factory(io.BytesIO(data), "").close()
        except Exception as e:
            return _failure(e, data)
        return DecodeError(DecodeFailure.corrupt, f"{allowed[0]} header could not be read")
    other = _accepting(prefix, None) or _non_pillow_format(data)
    if other:
        return DecodeError(
            DecodeFailure.unsupported_format, f"{other[0]} files are not decoded (allowed: {_ALLOWED_TEXT})"
        )
    return DecodeError(
        DecodeFailure.not_an_image, f"not an image: no {_ALLOWED_TEXT} signature (the file starts with {prefix[:8]!r})"
    )


def _accepting(prefix: bytes, formats: tuple[str, ...] | None) -> list[str]:
    """Pillow formats (all registered ones when None) whose signature check accepts prefix."""
    Image.init()
    found = []
    for name, (_, accept) in list(Image.OPEN.items()):
        if (formats is not None and name not in formats) or accept is None:
            continue  # a plugin without a signature check would claim anything
        try:
            if accept(prefix):
                found.append(name)
        except Exception:
            continue
    return found


def _non_pillow_format(data: bytes) -> list[str]:
    """Formats Pillow does not register a reader for, recognised to say so plainly."""
    head = data[:2048].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith(b"%pdf-"):
        return ["PDF"]
    if data[4:8] == b"ftyp" and data[8:12] in (b"heic", b"heix", b"heim", b"heis", b"hevc", b"mif1", b"msf1"):
        return ["HEIF"]
    if head.startswith(b"<") and b"<svg" in head and b"<html" not in head:
        return ["SVG"]
    return []
