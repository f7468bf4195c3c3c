"""gzip, bzip2 and xz data as one decompressed stream, for tarfile's stream mode.

Why not tarfile's own ``r|gz``/``r|bz2``: it decompresses each input chunk whole, and 10 kB of bzip2 can
inflate to gigabytes in one call. Why not GzipFile/BZ2File: they go through Python layers 8 kB at a time
(a third slower on photo archives). Here each call returns at most the bytes asked for (the rest waits in
the decompressor), input is read in large chunks, and every byte out is charged to the caller first.
Concatenated streams (``cat a.gz b.gz``) are read on; anything else after the last one ends the data.
"""

from __future__ import annotations

import bz2
import lzma
import zlib
from collections.abc import Callable
from typing import IO, Protocol

_INPUT = 256 * 1024
GZIP_MAGIC, BZIP2_MAGIC, XZ_MAGIC = b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00"


class _Decompressor(Protocol):
    @property
    def eof(self) -> bool: ...
    @property
    def unused_data(self) -> bytes: ...

    def decompress(self, data: bytes, max_length: int = ..., /) -> bytes: ...


def _new(magic: bytes) -> tuple[Callable[[], _Decompressor], bytes] | None:
    if magic.startswith(GZIP_MAGIC):
        return (lambda: zlib.decompressobj(16 + zlib.MAX_WBITS)), GZIP_MAGIC
    if magic.startswith(BZIP2_MAGIC):
        return bz2.BZ2Decompressor, BZIP2_MAGIC
    if magic.startswith(XZ_MAGIC):
        return (lambda: lzma.LZMADecompressor(lzma.FORMAT_XZ)), XZ_MAGIC
    return None


class Inflated:
    """The decompressed bytes of `raw` (gzip, bzip2 or xz by its magic), `charge(n)` called for each n out."""

    def __init__(self, raw: IO[bytes], charge: Callable[[int], None]) -> None:
        self.raw = raw
        self.charge = charge
        self.pending = raw.read(_INPUT)
        found = _new(self.pending)
        if found is None:
            raise ValueError("not gzip, bzip2 or xz data")
        self.make, self.magic = found
        self.d = self.make()
        self.done = False

    def _input(self) -> bytes:
        if self.pending:
            data, self.pending = self.pending, b""
            return data
        return self.raw.read(_INPUT)

    def read(self, n: int = -1) -> bytes:
        n = n if n > 0 else _INPUT
        while not self.done:
            if self.d.eof:  # one stream ended: another may follow
                rest = self.d.unused_data + self.pending
                self.pending = b""
                while len(rest) < len(self.magic) and (more := self.raw.read(_INPUT)):
                    rest += more
                if not rest.startswith(self.magic):
                    self.done = True
                    break
                self.d, self.pending = self.make(), rest
            out = self.d.decompress(self._feed(), n)
            if out:
                self.charge(len(out))
                return out
        return b""

    def _feed(self) -> bytes:
        """Input for the next call: zlib hands back what it did not consume; bz2 and lzma keep it."""
        tail = getattr(self.d, "unconsumed_tail", None)
        if tail:
            return bytes(tail)
        if tail is None and not getattr(self.d, "needs_input", True):
            return b""  # bz2/lzma still hold output from earlier input
        data = self._input()
        if not data:
            raise EOFError("compressed data ends before its end-of-stream marker (truncated)")
        return data

    def close(self) -> None:
        self.raw.close()
