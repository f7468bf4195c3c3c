"""JPEG scans shorter than their frame header says: libjpeg pads them silently, we refuse them.

When libjpeg meets a marker before a scan's last block it fills the rest with flat gray and
only warns, and Pillow drops the warning: a 64x64 picture under a header claiming 9000x9000
decodes "fine", in draft mode as in full. Two checks turn that into a `truncated` error,
made on the headers before any pixel is decoded, and cheap (no pass over the whole file):

- the first scan must hold at least the bits its blocks need: per block one DC code (plus
  one AC code in a sequential scan), each at least as long as the shortest code of the
  scan's own Huffman tables. A lower bound, so it never refuses a real file; only the
  bytes up to that bound are searched for a marker.
- a file with a single sequential scan is handed to the decoder with its final end-of-image
  marker replaced by a few zero bytes: a scan that runs short then runs out of input instead
  of meeting a marker, and Pillow reports it truncated (LOAD_TRUNCATED_IMAGES stays False).
  Complete scans decode to the same pixels; the zeros are only read ahead, never used.

Not caught: a progressive file cut between scans (it decodes as a blurrier picture), or a
short scan hidden behind trailing data that ends in another end-of-image marker, when the
scan still holds more than the lower bound. Arithmetic-coded, lossless and hierarchical
JPEGs are left to the decoder unchecked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from moderator.decode.errors import DecodeError, DecodeFailure

SIGNATURE = b"\xff\xd8\xff"
_SEQUENTIAL = {0xC0, 0xC1}  # baseline and extended Huffman
_PROGRESSIVE = 0xC2
_UNCHECKED_FRAMES = {0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_DHT, _SOS, _EOI = 0xC4, 0xDA, 0xD9
_EOI_BYTES = b"\xff\xd9"
# The end of a scan's entropy-coded data: a marker, i.e. 0xFF other than a stuffed 0xFF00 or a restart.
_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7]")
_READ_AHEAD = bytes(8)  # libjpeg reads up to 4 bytes past the last code of the scan


@dataclass(frozen=True)
class _Frame:
    progressive: bool
    width: int
    height: int
    blocks: dict[int, int]  # component id -> 8x8 blocks it has (without MCU padding: a lower bound)


def checked(data: bytes) -> bytes:
    """The bytes to decode (see the module docstring); DecodeError(truncated) when the first scan is short.

    Anything this parser does not understand is returned unchanged, for the decoder to judge.
    """
    frame: _Frame | None = None
    shortest: dict[tuple[int, int], int] = {}  # (0 DC | 1 AC, table id) -> shortest code length
    pos, n = 2, len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return data
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker == _EOI:
            return data
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        body = data[pos + 4 : pos + 2 + length]
        if length < 2 or len(body) < length - 2:
            return data  # a header cut short: the decoder reports it
        if marker in _SEQUENTIAL or marker == _PROGRESSIVE:
            frame = _parse_frame(body, progressive=marker == _PROGRESSIVE)
        elif marker in _UNCHECKED_FRAMES:
            return data
        elif marker == _DHT:
            _parse_tables(body, shortest)
        elif marker == _SOS:
            return _first_scan(data, pos + 2 + length, frame, body, shortest)
        pos += 2 + length
    return data


def _first_scan(
    data: bytes, start: int, frame: _Frame | None, header: bytes, shortest: dict[tuple[int, int], int]
) -> bytes:
    if frame is None:
        return data
    need = _bits_needed(frame, header, shortest)
    if need is None:
        return data
    need_bytes = -(-need // 8)
    end = _SCAN_END.search(data, start, start + need_bytes)
    if end is not None or len(data) - start < need_bytes:
        have = (end.start() if end else len(data)) - start
        raise DecodeError(
            DecodeFailure.truncated,
            f"the file is truncated: its {frame.width}x{frame.height} JPEG header needs at least "
            f"{need_bytes:,} bytes of scan data, the scan holds {have:,}",
        )
    single_scan = not frame.progressive and header[0] == len(frame.blocks)  # every component in one scan
    if single_scan and frame.height and data.endswith(_EOI_BYTES):
        return b"".join((memoryview(data)[: -len(_EOI_BYTES)], _READ_AHEAD))  # one copy
    return data


def _parse_frame(body: bytes, *, progressive: bool) -> _Frame | None:
    if len(body) < 6:
        return None
    height, width, count = int.from_bytes(body[1:3], "big"), int.from_bytes(body[3:5], "big"), body[5]
    sampling = {}
    for i in range(count):
        at = 6 + 3 * i
        if at + 3 > len(body):
            return None
        h, v = body[at + 1] >> 4, body[at + 1] & 15
        if not (h and v):
            return None
        sampling[body[at]] = (h, v)
    if not sampling:
        return None
    h_max, v_max = max(h for h, _ in sampling.values()), max(v for _, v in sampling.values())
    blocks = {
        cid: _ceil_div(_ceil_div(width * h, h_max), 8) * _ceil_div(_ceil_div(height * v, v_max), 8)
        for cid, (h, v) in sampling.items()
    }
    return _Frame(progressive=progressive, width=width, height=height, blocks=blocks)


def _parse_tables(body: bytes, shortest: dict[tuple[int, int], int]) -> None:
    at = 0
    while at + 17 <= len(body):
        kind, table = body[at] >> 4, body[at] & 15
        counts = body[at + 1 : at + 17]
        lengths = [i + 1 for i, c in enumerate(counts) if c]
        if lengths:
            shortest[kind, table] = lengths[0]
        at += 17 + sum(counts)


def _bits_needed(frame: _Frame, body: bytes, shortest: dict[tuple[int, int], int]) -> int | None:
    """A lower bound on the entropy-coded bits of one scan, or None for a scan header not understood."""
    if not body:
        return None
    count = body[0]
    if len(body) < 1 + 2 * count + 3:
        return None
    spectral_start, successive_high = body[1 + 2 * count], body[3 + 2 * count] >> 4
    total = 0
    for i in range(count):
        cid, tables = body[1 + 2 * i], body[2 + 2 * i]
        blocks = frame.blocks.get(cid)
        if blocks is None:
            return None
        # A table never defined: libjpeg may use the standard ones, whose codes are longer than 1 bit.
        dc, ac = shortest.get((0, tables >> 4), 1), shortest.get((1, tables & 15), 1)
        if not frame.progressive:
            total += blocks * (dc + ac)  # every block codes its DC difference and at least one AC symbol
        elif spectral_start == 0:
            total += blocks * (dc if successive_high == 0 else 1)  # DC first scan / DC refinement bit
        # progressive AC scans may skip any number of blocks with one end-of-band run: no bound
    return total


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)
