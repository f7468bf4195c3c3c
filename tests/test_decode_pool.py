"""Decode worker processes: a file that crashes, spins or exhausts its decoder costs only itself.

Real processes, real signals, real limits: the hostile decoders of tests/hostile.py are handed
to the pool (it runs whatever module-level function it is given), and two real files that
pass every header check (a GIF time bomb, a float TIFF memory bomb) meet the real decoder.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from moderator.decode import (
    CropSpec,
    DecodeError,
    DecodePool,
    FrameRequest,
    decode_frames,
    decode_image,
)
from tests.hostile import (
    CRASH_MARK,
    GREEDY_MARK,
    SPIN_MARK,
    encode,
    float_tiff_bomb,
    gif_time_bomb,
    hostile_decoder,
    marked_png,
    noise,
)

REQUEST = FrameRequest(max_pixels=89_478_485, crop=CropSpec(32, 32, "short_side", short_side=32), keep_side=16)
HOSTILE = hostile_decoder(decode_frames)


def reasons(results: list[object]) -> list[str]:
    return [r.reason.value if isinstance(r, DecodeError) else "ok" for r in results]


@pytest.fixture
def pool() -> Iterator[DecodePool]:
    with DecodePool(2, memory_mb=512, timeout_s=3.0) as p:
        yield p
        pids = p.pids
    # every worker is gone once the pool is closed: nothing left behind, not even a zombie
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)


def test_a_crash_costs_that_file_only_and_the_worker_is_replaced(pool: DecodePool) -> None:
    good = [marked_png(b"fine", colour) for colour in ((1, 2, 3), (4, 5, 6), (7, 8, 9))]
    files = [good[0], marked_png(CRASH_MARK), good[1], b"abort", good[2]]
    results = pool.map(HOSTILE, files, [REQUEST] * len(files))
    assert reasons(results) == ["ok", "decoder_crashed", "ok", "decoder_crashed", "ok"]
    assert "SIGSEGV" in str(results[1]) and "SIGABRT" in str(results[3])
    assert "\n" not in str(results[1])
    # the good files' crops came back whole, in order, and are what decoding in-process gives
    for data, result in zip(good, (results[0], results[2], results[4]), strict=True):
        assert result.crops is not None and result.crops.dtype == np.uint8
        assert np.array_equal(result.crops, decode_frames(data, REQUEST).crops)
    assert pool.replaced == 2
    assert reasons(pool.map(HOSTILE, good, [REQUEST] * 3)) == ["ok"] * 3  # the pool still works
    assert len(pool.pids) == 2 and all(Path(f"/proc/{pid}").exists() for pid in pool.pids)


def test_a_spinning_decoder_is_stopped_at_the_time_limit(pool: DecodePool) -> None:
    start = time.monotonic()
    results = pool.map(HOSTILE, [marked_png(SPIN_MARK), marked_png(b"fine")], [REQUEST] * 2)
    assert reasons(results) == ["decode_timeout", "ok"]
    assert "MODERATOR_DECODE_TIMEOUT_S" in str(results[0])
    assert time.monotonic() - start < 3.0 + 5.0


def test_a_real_gif_time_bomb_is_stopped(pool: DecodePool) -> None:
    bomb = gif_time_bomb()  # ~4 KB, 16 MP canvas: far below every size and pixel limit
    assert len(bomb) < 10_000
    start = time.monotonic()
    results = pool.map(decode_frames, [bomb, encode(noise(), "PNG")], [REQUEST] * 2)
    assert reasons(results) == ["decode_timeout", "ok"]
    assert time.monotonic() - start < 3.0 + 5.0


def test_memory_beyond_the_cap_is_too_large(pool: DecodePool) -> None:
    results = pool.map(HOSTILE, [marked_png(GREEDY_MARK), marked_png(b"fine")], [REQUEST] * 2)
    assert reasons(results) == ["too_large", "ok"]
    assert "MODERATOR_DECODE_MEMORY_MB" in str(results[0])


def test_a_real_memory_bomb_under_the_pixel_limit_is_too_large() -> None:
    bomb = float_tiff_bomb()  # ~100 KB, 16.7 MP: decoding it to RGB takes ~300 MB
    assert len(bomb) < 200_000
    assert decode_image(bomb, max_pixels=89_478_485).frames[0].size == (4096, 4096)  # fine without a cap
    with DecodePool(1, memory_mb=128, timeout_s=60.0) as small:
        results = small.map(decode_frames, [bomb, encode(noise(), "JPEG")], [REQUEST] * 2)
    assert reasons(results) == ["too_large", "ok"]


def test_a_worker_killed_from_outside_is_retried_once(pool: DecodePool, tmp_path: Path) -> None:
    once, always = tmp_path / "once", tmp_path / "always"
    results = pool.map(_killed_by_sigkill, [str(once), str(always)])
    assert results[0] == "survived"  # killed the first time (as by the OOM killer or an operator), fine after
    assert reasons(results[1:]) == ["decoder_crashed"]
    assert "SIGKILL" in str(results[1])
    assert pool.replaced == 3


def _killed_by_sigkill(marker: str) -> str:
    path = Path(marker)
    if path.name == "always" or not path.exists():
        path.touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return "survived"


def test_ctrl_c_is_the_parents_not_the_workers(pool: DecodePool) -> None:
    """Ctrl-C reaches every process of the terminal's group: a worker mid-file must not die of it
    (its file would be recorded as a crash, for good)."""
    results: list[object] = []
    busy = threading.Thread(target=lambda: results.extend(pool.map(_pid_after, [1.5, 1.5])))
    busy.start()
    deadline = time.monotonic() + 10
    while len(pool.pids) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    for pid in pool.pids:
        os.kill(pid, signal.SIGINT)
    busy.join()
    assert sorted(results) == sorted(pool.pids) and pool.replaced == 0  # type: ignore[type-var]


def _pid_after(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def test_a_bug_in_the_function_is_raised_not_recorded(pool: DecodePool) -> None:
    with pytest.raises(RuntimeError, match="ZeroDivisionError: division by zero"):
        pool.map(_divide, [1, 0, 2])
    assert pool.map(_divide, [1, 2]) == [1.0, 0.5]


def _divide(x: int) -> float:
    return 1 / x


def test_decode_errors_cross_the_process_boundary(pool: DecodePool) -> None:
    results = pool.map(decode_frames, [b"", b"not an image at all"], [REQUEST] * 2)
    assert reasons(results) == ["empty", "not_an_image"]


def test_workers_keep_nothing_of_the_parent_but_their_pipe(pool: DecodePool, tmp_path: Path) -> None:
    held = tmp_path / "held-open"
    with held.open("w"):  # a descriptor the parent holds when the worker is forked
        (links,) = pool.map(_open_descriptors, [None])
    assert str(held) not in [link for _, link in links]
    beyond_stdio = [link for fd, link in links if fd > 2 and not link.startswith("/memfd:moderator-decode")]
    assert len(beyond_stdio) == 1 and beyond_stdio[0].startswith("socket:")  # the socket to the parent (and task slots)


def _open_descriptors(_: object) -> list[tuple[int, str]]:
    with os.scandir("/proc/self/fd") as entries:  # this listing's own descriptor is left out below
        listed = [int(e.name) for e in entries]
    links = []
    for fd in listed:
        try:
            links.append((fd, os.readlink(f"/proc/self/fd/{fd}")))
        except OSError:  # the listing's descriptor, closed by now
            continue
    return links


def test_an_orphaned_worker_stops_by_itself(tmp_path: Path) -> None:
    """The parent dies mid-file (a Celery hard time limit, kill -9): its worker does not spin on for ever."""
    script = textwrap.dedent(
        f"""
        import os, sys, threading, time
        sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})
        from moderator.decode import DecodePool, FrameRequest
        from tests.hostile import SPIN_MARK, hostile_decoder, marked_png
        from moderator.decode import decode_frames
        pool = DecodePool(1, memory_mb=256, timeout_s=1.0)
        threading.Thread(target=pool.map, args=(hostile_decoder(decode_frames), [marked_png(SPIN_MARK)],
                         [FrameRequest(max_pixels=10**6)]), daemon=True).start()
        time.sleep(0.5)
        print(*pool.pids, flush=True)
        os._exit(0)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    (pid,) = [int(p) for p in out.stdout.split()]
    deadline = time.monotonic() + 1.0 * (os.cpu_count() or 1) + 15
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.2)
    assert not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_crops_in_a_worker_equal_crops_in_process() -> None:
    data = encode(noise((300, 200)), "PNG")
    with DecodePool(1, memory_mb=512, timeout_s=10.0) as one:
        (far,) = one.map(decode_frames, [data], [REQUEST])
    near = decode_frames(data, REQUEST)
    assert not isinstance(far, DecodeError)
    assert np.array_equal(far.crops, near.crops)
    assert [f.tobytes() for f in far.frames or []] == [f.tobytes() for f in near.frames or []]
    assert (far.width, far.height, far.format) == (300, 200, "PNG")


def test_the_pool_refuses_work_once_closed() -> None:
    pool = DecodePool(1, memory_mb=256, timeout_s=1.0)
    assert pool.map(_divide, [4]) == [0.25]
    pool.close()
    with pytest.raises(RuntimeError, match="closed"):
        pool.map(_divide, [1])


def test_a_subverted_worker_cannot_run_code_in_the_parent(pool: DecodePool, tmp_path: Path) -> None:
    """A decoder exploit owns its worker process; what it sends back is never unpickled."""
    planted = tmp_path / "planted"
    results = pool.map(forge_reply, [str(planted), None])
    assert reasons(results) == ["decoder_crashed", "ok"]
    assert "malformed reply" in str(results[0])
    assert not planted.exists()


class _Payload:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (Path.touch, (Path(self.path),))  # runs when unpickled


def forge_reply(path: str | None) -> object:
    if path is None:
        return "honest"
    import pickle

    (sock_fd,) = [fd for fd, link in _open_descriptors(None) if link.startswith("socket:")]
    payload = os.memfd_create("forged")
    os.write(payload, pickle.dumps((0, _Payload(path))))
    sock = socket.socket(fileno=os.dup(sock_fd))
    socket.send_fds(sock, [b"m"], [payload])
    time.sleep(30)  # the parent reads the forged reply first
    return None
