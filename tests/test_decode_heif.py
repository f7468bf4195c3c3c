"""HEIC/HEIF (pillow-heif) and AVIF (Pillow's own plugin), written in code, under the decode rules."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from moderator.decode import ALLOWED_FORMATS, DecodeError, FrameRequest, decode_frames, decode_image
from moderator.decode.errors import DecodeFailure

LIMIT = 89_478_485
FORMATS = ["HEIF", "AVIF"]


def left_white(w: int = 80, h: int = 40) -> Image.Image:
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 2] = 255
    return Image.fromarray(a)


def encoded(fmt: str, image: Image.Image, orientation: int | None = None) -> bytes:
    buf = io.BytesIO()
    extra = {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        extra["exif"] = exif.tobytes()
    image.save(buf, format=fmt, quality=90, **extra)
    return buf.getvalue()


def test_both_are_on_the_allow_list() -> None:
    assert {"HEIF", "AVIF"} <= set(ALLOWED_FORMATS)


@pytest.mark.parametrize("fmt", FORMATS)
def test_phone_formats_decode_to_the_same_pixels(fmt: str) -> None:
    data = encoded(fmt, left_white())
    assert data[4:12] == (b"ftypheic" if fmt == "HEIF" else b"ftypavif")
    out = decode_image(data, max_pixels=LIMIT)
    assert (out.format, out.width, out.height, out.n_frames) == (fmt, 80, 40, 1)
    pixels = np.asarray(out.frames[0])
    assert pixels[:, :36].mean() > 240 and pixels[:, 44:].mean() < 15


@pytest.mark.parametrize("fmt", FORMATS)
def test_orientation_is_applied_once(fmt: str) -> None:
    # EXIF orientation 6 (turn a quarter clockwise to display): the left half ends on top. pillow-heif
    # stores it as the HEIF's own rotation (irot), Pillow's AVIF plugin reads irot back as EXIF orientation.
    out = decode_image(encoded(fmt, left_white(), orientation=6), max_pixels=LIMIT)
    assert (out.width, out.height) == (40, 80)
    pixels = np.asarray(out.frames[0])
    assert pixels[:36].mean() > 240 and pixels[44:].mean() < 15


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_pixel_limit_is_read_from_the_header(fmt: str) -> None:
    with pytest.raises(DecodeError) as caught:
        decode_image(encoded(fmt, left_white()), max_pixels=80 * 40 - 1)
    assert caught.value.reason is DecodeFailure.too_many_pixels
    assert "80x40" in str(caught.value)


@pytest.mark.parametrize("fmt", FORMATS)
def test_cut_and_damaged_files_are_errors_with_a_reason(fmt: str) -> None:
    data = encoded(fmt, left_white())
    with pytest.raises(DecodeError) as cut:
        decode_image(data[: len(data) // 2], max_pixels=LIMIT)
    assert cut.value.reason is DecodeFailure.truncated, str(cut.value)
    box = data.find(b"ispe")  # the image's size box: made inconsistent with the coded picture
    bad = bytearray(data)
    bad[box + 8 : box + 16] = (30_000).to_bytes(4, "big") * 2
    with pytest.raises(DecodeError) as damaged:
        decode_image(bytes(bad), max_pixels=LIMIT)
    assert damaged.value.reason in (DecodeFailure.corrupt, DecodeFailure.too_many_pixels), str(damaged.value)


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_worker_path_cuts_them_like_any_image(fmt: str) -> None:
    out = decode_frames(encoded(fmt, left_white(640, 480)), FrameRequest(max_pixels=LIMIT, keep_side=120))
    assert out.format == fmt and out.frames is not None
    assert out.frames[0].size == (160, 120)  # reduced by a whole factor, as other images
    assert out.times is None  # not a video
