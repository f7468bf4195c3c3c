"""Decoding in worker processes: whatever one file does to its decoder costs that file only.

A DecodePool runs one function per file (decode and crop: bytes in, uint8 crops back) in
forked worker processes (moderator.decode.worker), each file under a time limit (`timeout_s`,
wall clock, kept here: the worker is killed, the file gets `decode_timeout`) and each worker
under a memory cap (`memory_mb`: a file that needs more gets `too_large`). A worker that dies
on a file (a crash in a C decoder, an abort) gives that file `decoder_crashed`; one killed from
outside (SIGKILL, SIGTERM: an operator, the OOM killer) has its file tried once more. A dead or
stopped worker is replaced, and the rest of the batch goes on.

Each worker has up to two files in hand: the one it decodes and the next, already sent
(moderator.decode.channel: sends never block), so it never waits for the parent between files;
the last files of a batch wait here for the first free worker instead.

Workers are forked from the calling process (fast: nothing to import or load) and keep only
their socket. The function and its arguments are pickled by reference, so any module-level
function works, a test's hostile one included; nothing in the pool runs anything it is not given.
Its result must be a DecodedFrames or a JSON value (replies are not pickles: see channel).
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import socket
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import Any, TypeVar

from PIL import Image

from moderator.decode import channel, worker
from moderator.decode.errors import DecodeError, DecodeFailure

R = TypeVar("R")

DEPTH = channel.SLOTS  # files in a worker's hands: the one it decodes, and the next
# A worker killed by one of these was probably killed from outside (an operator, the OOM
# killer picking the largest process, a shutdown): its file is tried once more on a fresh worker.
_OUTSIDE = {signal.SIGKILL, signal.SIGTERM, signal.SIGHUP, signal.SIGINT}
_MAX_START_FAILURES = 3


@dataclass(eq=False)
class _Worker:
    pid: int
    sock: socket.socket
    tasks: deque[int] = field(default_factory=deque)  # in its hands, oldest (the one decoding) first
    slots: channel.TaskSlots = field(default_factory=channel.TaskSlots)
    started: float = 0.0  # when the oldest began, as near as the parent can tell


class DecodePool:
    """Up to `workers` decode processes, started on demand and kept until close()."""

    def __init__(self, workers: int, *, memory_mb: int, timeout_s: float) -> None:
        self.size = max(1, workers)
        self.memory_mb = memory_mb
        self.timeout_s = timeout_s
        self.replaced = 0  # workers replaced after a crash, a timeout or running out of memory
        self._idle: list[_Worker] = []
        self._busy: list[_Worker] = []
        self._lock = threading.Lock()
        self._closed = False
        # Every Pillow plugin imported now, in the parent: a child that had to import one while
        # another parent thread held that module's import lock at fork time would hang.
        Image.init()
        import av  # noqa: F401  PyAV (FFmpeg's libraries) too, for the same reason: videos decode in the workers

        self._owner = os.getpid()
        self._finalizer = weakref.finalize(self, _stop, self._idle, self._owner)

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pids(self) -> list[int]:
        """The worker processes now running."""
        return [w.pid for w in [*self._idle, *self._busy]]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._finalizer()

    def map(self, fn: Callable[..., R], *iterables: Iterable[Any]) -> list[R | DecodeError]:
        """fn(*args) for each tuple of arguments, in order, run in the workers (as Executor.map, eagerly).

        A DecodeError that fn raises, or that stands for what happened to the worker
        (decoder_crashed, decode_timeout, too_large), is returned in that item's place. Any
        other exception fn raises is raised here, as an executor's map would.
        """
        todo = list(zip(*iterables, strict=True))
        run = _Run(fn, todo)
        with self._lock:
            if self._closed or self._owner != os.getpid():
                raise RuntimeError("the decode pool is closed (or belongs to the process this one was forked from)")
            try:
                while run.queue or self._busy:
                    self._hand_out(run)
                    self._collect(run)
            except BaseException:
                for w in self._busy:  # its replies would be read by the next call: never reused
                    _reap(w, grace=0.0)
                self._busy.clear()
                raise
        return run.results

    def _hand_out(self, run: _Run) -> None:
        failures = 0
        while run.queue:
            if self._idle or len(self._busy) < self.size:
                w = self._idle.pop() if self._idle else self._spawn()
            else:  # every worker busy: queue a second file behind the one it decodes, unless the
                # batch is ending (the last files go to whichever worker is free first: no one waits
                # behind a slow file while another worker idles)
                w = min(self._busy, key=lambda b: len(b.tasks))
                if len(w.tasks) >= DEPTH or len(run.queue) < self.size:
                    return
            index = run.queue[0]
            try:
                # Pillow's bomb limit travels too: the parent may have raised it after this worker was forked.
                w.slots.send(w.sock, (run.fn, run.todo[index], Image.MAX_IMAGE_PIXELS))
            except OSError:  # it died: an idle one is replaced now, a busy one when its end of file is read
                if w.tasks:
                    return
                _reap(w, grace=0.0)
                failures += 1
                if failures >= _MAX_START_FAILURES:
                    raise RuntimeError("decode workers die before they get any work") from None
                continue
            run.queue.popleft()
            if not w.tasks:
                w.started = time.monotonic()
                self._busy.append(w)
            w.tasks.append(index)

    def _collect(self, run: _Run) -> None:
        if not self._busy:
            return
        first_deadline = min(w.started for w in self._busy) + self.timeout_s
        ready = set(wait([w.sock for w in self._busy], max(0.0, first_deadline - time.monotonic())))
        now = time.monotonic()
        for w in list(self._busy):
            if w.sock in ready:
                self._receive(w, run)
            elif now - w.started >= self.timeout_s:
                run.results[w.tasks[0]] = DecodeError(
                    DecodeFailure.decode_timeout,
                    f"decoding took longer than {self.timeout_s:g} s (MODERATOR_DECODE_TIMEOUT_S) and was stopped",
                )
                self._drop(w, run, grace=0.0)

    def _receive(self, w: _Worker, run: _Run) -> None:
        try:
            kind, value = channel.receive_reply(w.sock)
        except channel.ReplyError as e:  # a worker that breaks the protocol is not trusted with more work
            run.results[w.tasks[0]] = DecodeError(
                DecodeFailure.decoder_crashed, f"the image decoder sent a malformed reply ({e}); it was stopped"
            )
            self._drop(w, run, grace=0.0)
            return
        except (EOFError, OSError):  # the worker died on its oldest file
            index = w.tasks[0]
            status = self._drop(w, run, grace=1.0)  # let it finish dying, to read how
            if -status in _OUTSIDE and index not in run.retried:
                run.retried.add(index)
                run.queue.appendleft(index)
            else:
                run.results[index] = DecodeError(DecodeFailure.decoder_crashed, _crash_message(status))
            return
        index = w.tasks.popleft()
        if kind == worker.RAISED:
            raise value
        run.results[index] = value
        if kind == worker.RETIRED:
            self._drop(w, run, grace=1.0)
        elif w.tasks:
            w.started = time.monotonic()  # it starts the next one now
        else:
            self._busy.remove(w)
            self._idle.append(w)

    def _drop(self, w: _Worker, run: _Run, grace: float) -> int:
        """Stop a busy worker for good: its oldest file is the caller's to settle, the others go back first in line."""
        self._busy.remove(w)
        run.queue.extendleft(reversed(list(w.tasks)[1:]))
        w.tasks.clear()
        self.replaced += 1
        return _reap(w, grace)

    def _spawn(self) -> _Worker:
        parent_end, child_end = channel.pair()
        gc.freeze()  # the child never collects (nor finalises) the parent's objects
        try:
            pid = os.fork()
        except BaseException:
            gc.unfreeze()
            raise
        if pid == 0:  # the worker
            parent_end.close()
            worker.serve(child_end, self.memory_mb, self.timeout_s)
        gc.unfreeze()
        child_end.close()
        return _Worker(pid, parent_end)


@dataclass
class _Run:
    """One map call's state."""

    fn: Callable[..., Any]
    todo: list[tuple[Any, ...]]
    queue: deque[int] = field(init=False)
    results: list[Any] = field(init=False)
    retried: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.queue = deque(range(len(self.todo)))
        self.results = [None] * len(self.todo)


def _reap(w: _Worker, grace: float) -> int:
    """Close a worker's socket and wait for it to exit, killing it after `grace` seconds; its exit code
    (negative: the signal that ended it)."""
    with contextlib.suppress(OSError):
        w.sock.close()
    w.slots.close()
    deadline = time.monotonic() + grace
    while True:
        try:
            pid, status = os.waitpid(w.pid, os.WNOHANG)
        except ChildProcessError:
            return 0
        if pid:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() >= deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(w.pid, signal.SIGKILL)
            _, status = os.waitpid(w.pid, 0)
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.002)


def _crash_message(code: int) -> str:
    if code < 0:
        try:
            how = f"killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"killed by signal {-code}"
        if -code == signal.SIGKILL:
            how += ", twice (out of memory, or killed from outside)"
    else:
        how = f"exit status {code}"
    return f"the image decoder crashed on this file ({how}); it is recorded as an error and the batch went on"


def _stop(idle: list[_Worker], owner: int) -> None:
    """Idle workers read end-of-file and exit; any still there after a second is killed."""
    workers, idle[:] = list(idle), []
    if os.getpid() != owner:  # a copy inherited through fork: the workers are another process's
        return
    for w in workers:
        with contextlib.suppress(OSError):
            w.sock.close()
    deadline = time.monotonic() + 1.0
    for w in workers:
        _reap(w, grace=max(0.0, deadline - time.monotonic()))


_shared: dict[tuple[int, int, int, float], DecodePool] = {}
_shared_lock = threading.Lock()


def shared_pool(workers: int, *, memory_mb: int, timeout_s: float) -> DecodePool:
    """This process's pool for these limits, started once and kept warm between scans (a queue
    worker runs one scan per task: forking its decoders for each would cost more than the task)."""
    key = (os.getpid(), workers, memory_mb, timeout_s)  # a forked child (a Celery pool process) starts its own
    with _shared_lock:
        pool = _shared.get(key)
        if pool is None:
            pool = _shared[key] = DecodePool(workers, memory_mb=memory_mb, timeout_s=timeout_s)
        return pool


def _forget_inherited() -> None:
    _shared.clear()  # the parent's workers are not this process's children: never touched here
    global _shared_lock
    _shared_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_inherited)
