"""Messages between the pool and its workers: a one-byte note over a socket, the payload in a memory file.

Only the note and a file descriptor cross the socket, so a send never blocks, however large
the image or its crops: the pool can queue a worker's next file while it decodes the current
one, and never deadlocks on a full socket buffer. The payload is written once into an
anonymous memory file (memfd; an unlinked temporary file where there is none).

Tasks (pool -> worker) are pickled: a worker trusts its parent. Replies (worker -> pool) are
not pickles: the decoder is the attack surface, and unpickling what a subverted worker sends
would run its code in the parent. A reply is a JSON header and raw pixel buffers, checked
against each other and a size limit before anything is built from them; a worker can at worst
lie about its own file. Anything malformed is a ReplyError.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import pickle
import socket
import stat
import tempfile
from typing import Any

import numpy as np
from PIL import Image

from moderator.decode.errors import DecodeError, DecodeFailure
from moderator.decode.frames import DecodedFrames

_NOTE = b"m"
MAX_REPLY = 256 * 1024 * 1024  # bytes: far above any real reply (four crops and frames: ~15 MB)
_MAX_HEADER = 1024 * 1024
_MAX_TEXT = 2000


class ReplyError(Exception):
    """A worker's reply that does not follow the format: the worker is not trusted any more."""


def pair() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)


# --- pool -> worker ------------------------------------------------------------------------------
# A task note: kind (b"s": in a reusable slot; b"m": in a memory file of its own), slot, length.
_TASK_NOTE = 10
SLOTS = 2  # a worker's files in hand at most (the pool's DEPTH): task i uses slot i % SLOTS
SLOT_MAX = 16 * 1024 * 1024  # a larger task travels in a memory file of its own


class _TooBig(Exception):
    pass


class TaskSlots:
    """The pool's side of one worker's task slots: reusable memory files, grown as needed (up to
    SLOT_MAX), so a task costs one copy of its bytes, not a fresh file's page allocation each time."""

    def __init__(self) -> None:
        self._files: list[tuple[int, mmap.mmap] | None] = [None] * SLOTS
        self._sent = 0

    def send(self, sock: socket.socket, task: Any) -> None:
        """Raises OSError (BrokenPipeError, ConnectionError) when the worker is gone."""
        slot = self._sent % SLOTS
        self._sent += 1
        fresh: list[int] = []
        writer = _SlotWriter(self, slot, fresh)
        try:
            pickle.Pickler(writer, protocol=pickle.HIGHEST_PROTOCOL).dump(task)
        except _TooBig:
            _send_own_file(sock, task)
            return
        note = b"s" + bytes([slot]) + writer.pos.to_bytes(8, "little")
        if fresh:
            socket.send_fds(sock, [note], fresh)
        else:
            sock.sendall(note)

    def _file(self, slot: int, size: int, fresh: list[int]) -> mmap.mmap:
        current = self._files[slot]
        if current is not None and len(current[1]) >= size:
            return current[1]
        if size > SLOT_MAX:
            raise _TooBig
        size = min(SLOT_MAX, max(size, 2 * len(current[1]) if current else 1 << 20))
        if current is None:
            fd = _memory_file()
            fresh.append(fd)  # the worker gets its own descriptor with this task's note
        else:
            fd = current[0]
            current[1].close()
        os.ftruncate(fd, size)
        view = mmap.mmap(fd, size)
        self._files[slot] = (fd, view)
        return view

    def close(self) -> None:
        for entry in self._files:
            if entry is not None:
                entry[1].close()
                os.close(entry[0])
        self._files = [None] * SLOTS


class _SlotWriter:
    def __init__(self, slots: TaskSlots, slot: int, fresh: list[int]) -> None:
        self.slots, self.slot, self.fresh, self.pos = slots, slot, fresh, 0

    def write(self, data: Any) -> int:
        with memoryview(data) as raw, raw.cast("B") as chunk:
            size = len(chunk)
            view = self.slots._file(self.slot, self.pos + size, self.fresh)
            view[self.pos : self.pos + size] = chunk
        self.pos += size
        return size


def _send_own_file(sock: socket.socket, task: Any) -> None:
    fd = _memory_file()
    try:
        with open(fd, "wb", closefd=False) as f:
            pickle.dump(task, f, protocol=pickle.HIGHEST_PROTOCOL)
        socket.send_fds(sock, [b"m" + bytes(_TASK_NOTE - 1)], [fd])
    finally:
        os.close(fd)  # the receiver has its own descriptor once the message is queued


class TaskReader:
    """A worker's side of its task slots."""

    def __init__(self) -> None:
        self._files: dict[int, tuple[int, mmap.mmap]] = {}

    def receive(self, sock: socket.socket) -> Any:
        """The next task; EOFError when the pool closed (or the parent died)."""
        note, fds, _, _ = socket.recv_fds(sock, _TASK_NOTE, 1)
        while note and len(note) < _TASK_NOTE:
            more = sock.recv(_TASK_NOTE - len(note))
            if not more:
                break
            note += more
        if len(note) < _TASK_NOTE:
            raise EOFError
        if note[:1] == b"m":
            (fd,) = fds
            try:
                with _mapped(fd) as view:
                    return pickle.loads(view)
            finally:
                os.close(fd)
        slot, length = note[1], int.from_bytes(note[2:], "little")
        if fds:
            old = self._files.pop(slot, None)
            if old is not None:
                old[1].close()
                os.close(old[0])
            self._files[slot] = (fds[0], mmap.mmap(fds[0], 0, access=mmap.ACCESS_READ))
        fd, view = self._files[slot]
        if len(view) < length:  # the pool grew the slot
            view.close()
            view = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
            self._files[slot] = (fd, view)
        with memoryview(view) as whole, whole[:length] as task:
            return pickle.loads(task)


# --- worker -> pool ------------------------------------------------------------------------------


def send_reply(sock: socket.socket, kind: int, value: Any) -> None:
    header, buffers = _encode(value)
    header["kind"] = kind
    head = json.dumps(header).encode()
    fd = _memory_file()
    try:
        with open(fd, "wb", closefd=False) as f:
            f.write(len(head).to_bytes(8, "little"))
            f.write(head)
            for buffer in buffers:
                f.write(buffer)
        socket.send_fds(sock, [_NOTE], [fd])
    finally:
        os.close(fd)


def receive_reply(sock: socket.socket) -> tuple[int, Any]:
    """(kind, value); EOFError when the worker is gone, ReplyError when its reply is malformed."""
    fd = _receive_fd(sock)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or not 8 < info.st_size <= MAX_REPLY:
            raise ReplyError(f"a reply of {info.st_size} bytes")
        with _mapped(fd) as view:
            size = int.from_bytes(view[:8], "little")
            if not 0 < size <= min(_MAX_HEADER, len(view) - 8):
                raise ReplyError("a reply header of the wrong length")
            try:
                header = json.loads(bytes(view[8 : 8 + size]))
            except ValueError as e:
                raise ReplyError(f"a reply header that is not JSON: {e}") from None
            if not isinstance(header, dict) or header.get("kind") not in (0, 1, 2, 3):
                raise ReplyError("a reply without its kind")
            with memoryview(view) as whole, whole[8 + size :] as rest:
                return header["kind"], _decode(header, rest)
    finally:
        os.close(fd)


def _encode(value: Any) -> tuple[dict[str, Any], list[bytes | memoryview]]:
    if isinstance(value, DecodeError):
        return {"type": "error", "reason": value.reason.value, "message": str(value)}, []
    if isinstance(value, BaseException):
        return {"type": "raised", "error": f"{type(value).__name__}: {value}"}, []
    if isinstance(value, DecodedFrames):
        buffers: list[bytes | memoryview] = []
        crops = frames = None
        if value.crops is not None:
            array = np.ascontiguousarray(value.crops, dtype=np.uint8)
            crops = list(array.shape[:3])
            buffers.append(array.data.cast("B"))
        if value.frames is not None:
            frames = []
            for frame in value.frames:
                rgb = frame if frame.mode == "RGB" else frame.convert("RGB")
                frames.append(list(rgb.size))
                buffers.append(rgb.tobytes())
        meta = {"format": value.format, "width": value.width, "height": value.height, "n_frames": value.n_frames}
        video = {"times": value.times, "duration": value.duration}
        return {"type": "frames", **meta, **video, "seconds": value.seconds, "crops": crops, "frames": frames}, buffers
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return {"type": "raised", "error": f"a {type(value).__name__} result cannot be sent back"}, []
    return {"type": "json", "value": value}, []


def _decode(header: dict[str, Any], rest: memoryview) -> Any:
    kind = header.get("type")
    if kind == "json":
        if rest.nbytes:
            raise ReplyError("trailing bytes after a value")
        return header.get("value")
    if kind == "error":
        try:
            reason = DecodeFailure(str(header.get("reason")))
        except ValueError:
            raise ReplyError("an unknown failure reason") from None
        return DecodeError(reason, _text(header.get("message")))
    if kind == "raised":
        return RuntimeError(f"a decode worker raised {_text(header.get('error'))}")
    if kind != "frames":
        raise ReplyError("an unknown reply type")
    crops, frames = header.get("crops"), header.get("frames")
    if crops is not None and not _counts(crops, 3):
        raise ReplyError("malformed crops")
    shapes = ([[*crops, 3]] if crops is not None else []) + [[h, w, 3] for w, h in _pairs(frames)]
    lengths = [math.prod(shape) for shape in shapes]
    if sum(lengths) != rest.nbytes:
        raise ReplyError("pixel buffers that do not match the header")
    arrays, at = [], 0
    for shape, length in zip(shapes, lengths, strict=True):
        arrays.append(np.frombuffer(rest[at : at + length], dtype=np.uint8).reshape(shape).copy())
        at += length
    seconds = header.get("seconds")
    if not (isinstance(seconds, dict) and all(isinstance(v, int | float) for v in seconds.values())):
        raise ReplyError("malformed timings")
    times, duration = header.get("times"), header.get("duration")
    sampled = crops[0] if crops is not None else len(arrays) if frames is not None else None
    if times is not None and not (_seconds(times) and (sampled is None or len(times) == sampled)):
        raise ReplyError("malformed frame times")
    if duration is not None and not _seconds([duration]):
        raise ReplyError("malformed duration")
    fmt = header.get("format")
    if not (isinstance(fmt, str) and len(fmt) <= 16) or not _counts([header.get(k) for k in _SIZES], 3, low=0):
        raise ReplyError("malformed image facts")
    return DecodedFrames(
        format=fmt,
        width=header["width"],
        height=header["height"],
        n_frames=header["n_frames"],
        crops=arrays.pop(0) if crops is not None else None,
        frames=[Image.fromarray(a) for a in arrays] if frames is not None else None,
        seconds={str(k): float(v) for k, v in seconds.items()},
        times=[float(t) for t in times] if times is not None else None,
        duration=float(duration) if duration is not None else None,
    )


_SIZES = ("width", "height", "n_frames")


def _pairs(frames: Any) -> list[tuple[int, int]]:
    if frames is None:
        return []
    if not isinstance(frames, list) or not all(_counts(f, 2) for f in frames):
        raise ReplyError("malformed frames")
    return [(f[0], f[1]) for f in frames]


def _counts(values: Any, n: int, low: int = 1) -> bool:
    return (
        isinstance(values, list)
        and len(values) == n
        and all(isinstance(v, int) and not isinstance(v, bool) and low <= v < 2**31 for v in values)
    )


def _seconds(values: Any) -> bool:
    return isinstance(values, list) and all(
        isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v < 1e9 for v in values
    )


def _text(value: Any) -> str:
    return " ".join(value.split())[:_MAX_TEXT] if isinstance(value, str) else "(no message)"


# --- transport -----------------------------------------------------------------------------------


def _receive_fd(sock: socket.socket) -> int:
    note, fds, _, _ = socket.recv_fds(sock, len(_NOTE), 1)
    if not fds:
        if note:
            raise ConnectionError("a message without its payload")
        raise EOFError
    extra = fds[1:]
    for fd in extra:
        os.close(fd)
    return fds[0]


def _mapped(fd: int) -> mmap.mmap:
    size = os.fstat(fd).st_size
    if size <= 0:
        raise ConnectionError("an empty message")
    return mmap.mmap(fd, size, access=mmap.ACCESS_READ)


def _memory_file() -> int:
    if hasattr(os, "memfd_create"):
        return os.memfd_create("moderator-decode")
    fd, path = tempfile.mkstemp(prefix="moderator-decode-")
    os.unlink(path)
    return fd
