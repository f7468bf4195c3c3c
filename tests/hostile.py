"""Hostile and odd image files, built in code, with the outcome decode_image must give each.

CATALOGUE maps a file name (with the extension a careless or malicious uploader would
use) to Case(build, expected): `build()` returns the file's bytes, `expected` is OK or
the DecodeFailure. Other tests (the pipeline end to end) write them all into a folder
and scan it. Every builder is cheap (well under a second; the 20000x20000 PNG is cached).

Note: "warn-range-header.png" (10000x10000) lies between Pillow's bomb warning and its
bomb error, so opening it emits a DecompressionBombWarning before decode refuses it.

Below the catalogue: files that only worker limits can stop (a time bomb and a memory bomb
that pass every header check), and hostile "decoders" that crash, spin or eat memory, for
tests that hand them to a DecodePool (or put them where the pipeline's decode function is).
"""

from __future__ import annotations

import ctypes
import io
import os
import struct
import zlib
from collections.abc import Callable, Iterable
from functools import cache
from typing import Any, Final, Literal, NamedTuple

import numpy as np
from PIL import Image

from moderator.decode import DecodeFailure

OK: Final = "ok"
Expected = DecodeFailure | Literal["ok"]


class Case(NamedTuple):
    build: Callable[[], bytes]
    expected: Expected


# Pixel values the conversion tests look for.
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)
FRAME_COLOURS = [RED, GREEN, BLUE, (255, 255, 0), (0, 255, 255), (255, 0, 255)]


def encode(img: Image.Image, fmt: str, **params: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def noise(size: tuple[int, int] = (64, 64)) -> Image.Image:
    """Incompressible content, so that cutting a file in half lands in its pixel data."""
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


# --- hand-built PNGs ---------------------------------------------------------------------


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def raw_png(width: int, height: int, *, bit_depth: int, color_type: int, rows: Iterable[bytes] = ()) -> bytes:
    """A PNG from filtered rows (each starts with its filter byte), compressed as a stream."""
    compressor = zlib.compressobj(6)
    body = b"".join(compressor.compress(row) for row in rows) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", body) + png_chunk(b"IEND", b"")


def huge_header_png(side: int = 100_000) -> bytes:
    """A valid header (CRC and all) claiming side x side RGB pixels, with an empty body."""
    return raw_png(side, side, bit_depth=8, color_type=2)


@cache
def bomb_1bit_png(side: int = 20_000) -> bytes:
    """A real side x side 1-bit PNG (400 M pixels at 20000): all black, ~50 KB compressed."""
    row = b"\x00" + bytes((side + 7) // 8)  # filter byte, then 1 bit per pixel
    rows = [row * 1000] * (side // 1000) + [row * (side % 1000)]
    return raw_png(side, side, bit_depth=1, color_type=0, rows=rows)


def rgb16_png() -> bytes:
    """8x8 16-bit RGB (Pillow cannot write one): every pixel (0x8080, 0x0000, 0xFFFF)."""
    row = b"\x00" + struct.pack(">HHH", 0x8080, 0, 0xFFFF) * 8
    return raw_png(8, 8, bit_depth=16, color_type=2, rows=[row] * 8)


def bad_crc_png() -> bytes:
    data = bytearray(encode(Image.new("RGB", (4, 4)), "PNG"))
    data[29] ^= 0xFF  # last byte of the IHDR chunk's CRC
    return bytes(data)


# --- other hand-built files --------------------------------------------------------------


def bomb_gif() -> bytes:
    """A 1x1 GIF canvas whose only frame claims 65535x65535 (Pillow grows the canvas to fit)."""
    screen = struct.pack("<HHBBB", 1, 1, 0x80, 0, 0) + bytes(6)  # 2-colour global table
    frame = b"," + struct.pack("<HHHHB", 0, 0, 65535, 65535, 0)
    lzw = bytes([2, 1, 0x2C, 0])  # min code size 2, one block: clear code then end code
    return b"GIF89a" + screen + frame + lzw + b";"


def tiff_pages(pages: list[tuple[int, int, bytes]]) -> bytes:
    """An uncompressed 8-bit grayscale TIFF, one strip per page; a page's data may be short."""
    ifd_size = 2 + 9 * 12 + 4
    data_at = 8 + ifd_size * len(pages)
    out, data = [b"II*\x00", struct.pack("<I", 8)], b""
    for i, (w, h, pixels) in enumerate(pages):
        entries = [
            (256, 4, w), (257, 4, h), (258, 3, 8), (259, 3, 1), (262, 3, 1),
            (273, 4, data_at + len(data)), (277, 3, 1), (278, 4, h), (279, 4, w * h),
        ]  # fmt: skip
        out.append(struct.pack("<H", len(entries)))
        for tag, kind, value in entries:
            field = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)  # SHORT / LONG
            out.append(struct.pack("<HHI", tag, kind, 1) + field)
        next_ifd = 8 + ifd_size * (i + 1) if i + 1 < len(pages) else 0
        out.append(struct.pack("<I", next_ifd))
        data += pixels
    return b"".join(out) + data


def tiff_huge_second_page() -> bytes:
    """Page 1 is 2x2; page 2 claims 12000x12000 (above the limit, below Pillow's own error)."""
    return tiff_pages([(2, 2, bytes([0, 64, 128, 255])), (12_000, 12_000, b"")])


# --- images Pillow can write ---------------------------------------------------------------


def gray16(fmt: str) -> bytes:
    """8x8 16-bit grayscale (mode I;16): left half 0x8080 (mid-gray), right half 0xFFFF."""
    a = np.full((8, 8), 0xFFFF, np.uint16)
    a[:, :4] = 0x8080
    return encode(Image.fromarray(a), fmt)


def float_tiff() -> bytes:
    """8x8 32-bit float (mode F) in 0..1: left half 0.5, right half 1.0."""
    a = np.ones((8, 8), np.float32)
    a[:, :4] = 0.5
    return encode(Image.fromarray(a), "TIFF")


def cmyk_jpeg() -> bytes:
    return encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)  # red


def animated(fmt: str, **params: Any) -> bytes:
    """16x16, one flat colour per frame (FRAME_COLOURS, in order)."""
    frames = [Image.new("RGB", (16, 16), c) for c in FRAME_COLOURS]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=50, loop=0, **params)


def palette_transparent_png() -> bytes:
    """4x4 palette: left half index 0 (red, fully transparent), right half index 1 (green)."""
    img = Image.new("P", (4, 4), 1)
    img.putpalette([*RED, *GREEN])
    img.paste(0, (0, 0, 2, 4))
    return encode(img, "PNG", transparency=0)


def la_png() -> bytes:
    """4x4 LA: left half opaque black, right half fully transparent white."""
    img = Image.new("LA", (4, 4), (255, 0))
    img.paste((0, 255), (0, 0, 2, 4))
    return encode(img, "PNG")


def exif_rotated_jpeg() -> bytes:
    """Stored 40x20 (left half blue, right half red) with EXIF orientation 6 (rotate 90 clockwise):
    shown upright it is 20x40, blue on top, red below."""
    img = Image.new("RGB", (40, 20), RED)
    img.paste(BLUE, (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(img, "JPEG", quality=95, exif=exif)


def truncated(data: bytes, keep: float = 0.6) -> bytes:
    return data[: int(len(data) * keep)]


def jpeg_claiming(width: int, height: int, *, progressive: bool = False) -> bytes:
    """A complete 64x64 JPEG whose frame header claims width x height (libjpeg pads the rest with gray)."""
    data = bytearray(encode(noise(), "JPEG", quality=90, progressive=progressive))
    pos = 2
    while data[pos + 1] not in (0xC0, 0xC1, 0xC2):  # walk the segments to the frame header
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    data[pos + 5 : pos + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def cut_with_end_marker(data: bytes, keep: float = 0.6) -> bytes:
    """Truncated, then given back its end-of-image marker, as a careless repair tool does."""
    return truncated(data, keep) + b"\xff\xd9"


def gif_time_bomb(side: int = 4000, frames: int = 300) -> bytes:
    """side x side canvas, `frames` 1x1 frames: a few KB, within every limit, but reaching the last
    frame decodes every one before it over the whole canvas (0.1-0.2 s each here): minutes of work."""
    screen = struct.pack("<HHBBB", side, side, 0x80, 0, 0) + bytes(6)
    frame = b"!\xf9\x04\x04\x00\x00\x00\x00," + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + bytes([2, 2, 0x4C, 0x01, 0])
    return b"GIF89a" + screen + frame * frames + b";"


@cache
def float_tiff_bomb(side: int = 4096) -> bytes:
    """A ~100 KB deflated 32-bit float TIFF, within the pixel limit, whose decoding to RGB takes ~300 MB
    at 4096x4096 (float pixels, then the float arrays that scale them into 0..255)."""
    return encode(Image.fromarray(np.full((side, side), 0.5, np.float32)), "TIFF", compression="tiff_adobe_deflate")


CATALOGUE: dict[str, Case] = {
    # refused, with a reason
    "empty.jpg": Case(lambda: b"", DecodeFailure.empty),
    "truncated.jpg": Case(lambda: truncated(encode(noise(), "JPEG")), DecodeFailure.truncated),
    "truncated.png": Case(lambda: truncated(encode(noise(), "PNG")), DecodeFailure.truncated),
    "truncated.gif": Case(lambda: truncated(encode(noise(), "GIF")), DecodeFailure.truncated),
    "truncated.webp": Case(lambda: truncated(encode(noise(), "WEBP")), DecodeFailure.truncated),
    "header-cut.png": Case(lambda: encode(noise(), "PNG")[:20], DecodeFailure.truncated),
    "bad-crc.png": Case(bad_crc_png, DecodeFailure.corrupt),
    "text-renamed.jpg": Case(lambda: b"Meeting notes\n- budget\n- hiring plan\n" * 20, DecodeFailure.not_an_image),
    "html-renamed.png": Case(
        lambda: b"<!DOCTYPE html>\n<html><head><title>x</title></head><body><p>hi</p></body></html>\n",
        DecodeFailure.not_an_image,
    ),
    "huge-header.png": Case(huge_header_png, DecodeFailure.too_many_pixels),
    "warn-range-header.png": Case(lambda: huge_header_png(10_000), DecodeFailure.too_many_pixels),
    "bomb-20000x20000-1bit.png": Case(bomb_1bit_png, DecodeFailure.too_many_pixels),
    "bomb.gif": Case(bomb_gif, DecodeFailure.too_many_pixels),
    "huge-second-page.tif": Case(tiff_huge_second_page, DecodeFailure.too_many_pixels),
    "9000x9000-header-64x64-data.jpg": Case(lambda: jpeg_claiming(9000, 9000), DecodeFailure.truncated),
    "9000x9000-header-progressive.jpg": Case(
        lambda: jpeg_claiming(9000, 9000, progressive=True), DecodeFailure.truncated
    ),
    "80x80-header-64x64-data.jpg": Case(lambda: jpeg_claiming(80, 80), DecodeFailure.truncated),
    "cut-with-end-marker.jpg": Case(lambda: cut_with_end_marker(encode(noise(), "JPEG")), DecodeFailure.truncated),
    "postscript.eps": Case(
        lambda: (
            b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto stroke\nshowpage\n"
        ),
        DecodeFailure.unsupported_format,
    ),
    "drawing.svg": Case(
        lambda: (
            b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
            b'<rect width="10" height="10" fill="red"/></svg>\n'
        ),
        DecodeFailure.unsupported_format,
    ),
    "document.pdf": Case(
        lambda: b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj << /Type /Catalog >> endobj\n", DecodeFailure.unsupported_format
    ),
    "image.ppm": Case(lambda: encode(noise((8, 8)), "PPM"), DecodeFailure.unsupported_format),
    # decoded
    "photo.jpg": Case(lambda: encode(noise(), "JPEG"), OK),
    "photo.webp": Case(lambda: encode(noise(), "WEBP"), OK),
    "photo.tif": Case(lambda: encode(noise(), "TIFF"), OK),
    "photo.bmp": Case(lambda: encode(noise(), "BMP"), OK),
    "cmyk.jpg": Case(cmyk_jpeg, OK),
    "gray16.png": Case(lambda: gray16("PNG"), OK),
    "gray16.tif": Case(lambda: gray16("TIFF"), OK),
    "rgb16.png": Case(rgb16_png, OK),
    "float.tif": Case(float_tiff, OK),
    "animated.gif": Case(lambda: animated("GIF"), OK),
    "animated.png": Case(lambda: animated("PNG"), OK),
    "animated.webp": Case(lambda: animated("WEBP", lossless=True), OK),
    "palette-transparent.png": Case(palette_transparent_png, OK),
    "la.png": Case(la_png, OK),
    "exif-rotated.jpg": Case(exif_rotated_jpeg, OK),
    "trailing-garbage.jpg": Case(lambda: encode(noise(), "JPEG") + bytes(range(256)) * 16, OK),
    "1x1.png": Case(lambda: encode(Image.new("RGB", (1, 1), GREEN), "PNG"), OK),
    "30000x2.png": Case(lambda: encode(Image.new("L", (30_000, 2), 200), "PNG"), OK),
    # a few hundred bytes each; resized as open_clip does they would become 224 x 22,400,000 (21 GB)
    "1x100000.png": Case(lambda: encode(Image.new("L", (1, 100_000), 90), "PNG"), OK),
    "100000x1.png": Case(lambda: encode(Image.new("L", (100_000, 1), 90), "PNG"), OK),
    "progressive.jpg": Case(lambda: encode(noise(), "JPEG", progressive=True), OK),
    "restart-markers.jpg": Case(lambda: encode(noise(), "JPEG", restart_marker_blocks=2), OK),
    "1bit.png": Case(lambda: encode(Image.new("1", (9, 9), 1), "PNG"), OK),
}


# --- beyond any check: only a decode worker's limits stop these (tests/test_decode_pool.py) --------

CRASH_MARK, SPIN_MARK, GREEDY_MARK = b"<crash-the-decoder>", b"<spin-the-decoder>", b"<eat-the-decoder-memory>"


def marked_png(mark: bytes, colour: tuple[int, int, int] = GREEN) -> bytes:
    """A valid PNG carrying `mark` in a text chunk: hostile_decoder misbehaves on it."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("comment", mark.decode())
    return encode(Image.new("RGB", (32, 24), colour), "PNG", pnginfo=info)


def hostile_decoder(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` (a decode function taking the bytes first), misbehaving on marked files as a broken codec
    would: a segfault, an endless loop, an allocation beyond any memory cap. For tests only: the
    pool runs it only because a test hands it over."""
    return _Hostile(fn)


class _Hostile:
    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn  # pickled by reference: must be a module-level function

    def __call__(self, data: bytes, *args: Any) -> Any:
        act(data)
        return self.fn(data, *args)


def act(data: bytes) -> None:
    if CRASH_MARK in data:
        ctypes.string_at(0)  # reads address 0: SIGSEGV, as a memory-safety bug in a C decoder
    if SPIN_MARK in data:
        while True:
            pass
    if GREEDY_MARK in data:
        bytearray(64 * 1024**3)  # 64 GB
    if data == b"abort":
        os.abort()
