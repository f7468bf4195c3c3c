"""Small plumbing for the pipeline's stages: timing, chunking, background prefetch."""

from __future__ import annotations

import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Generator, Iterable, Iterator
from contextlib import contextmanager
from itertools import islice
from typing import TypeVar

T = TypeVar("T")
U = TypeVar("U")


class StageTimer:
    """Seconds of work per stage, summed across threads (thread-safe)."""

    def __init__(self) -> None:
        self._seconds: dict[str, float] = defaultdict(float)
        self._lock = threading.Lock()

    @contextmanager
    def time(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - start)

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self._seconds[stage] += seconds

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return dict(self._seconds)


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def timed(items: Iterable[T], timer: StageTimer, stage: str) -> Generator[T, None, None]:
    """`items`, with the time spent producing each one added to `stage`."""
    it = iter(items)
    try:
        while True:
            with timer.time(stage):
                try:
                    item = next(it)
                except StopIteration:
                    return
            yield item
    finally:
        close = getattr(it, "close", None)
        if callable(close):
            close()


def same(item: T) -> T:
    return item


_DONE = object()


def _put(out: queue.Queue[object], stop: threading.Event, value: object) -> bool:
    """Put unless stopped first (a consumer that went away must not leave the producer blocked)."""
    while not stop.is_set():
        try:
            out.put(value, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def prefetch(items: Iterable[T], fn: Callable[[T], U], depth: int = 2) -> Generator[U, None, None]:
    """fn(item) for each item, computed in a background thread up to `depth` ahead.

    This is what overlaps reading and decoding batch k+1 with inference on batch k.
    Exceptions in the background surface in the consumer. Closing the generator
    (Ctrl-C, break) stops the background thread after its current item and waits
    for it, so nothing runs on after the scan returns; the thread closes `items`
    (itself a generator, maybe another prefetch) from its own side.
    """
    out: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set() or not _put(out, stop, fn(item)):
                    return
            _put(out, stop, _DONE)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            _put(out, stop, exc)
        finally:
            close = getattr(items, "close", None)
            if callable(close):
                close()

    thread = threading.Thread(target=produce, name="moderator-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            got = out.get()
            if got is _DONE:
                return
            if isinstance(got, BaseException):
                raise got
            yield got  # type: ignore[misc]
    finally:
        stop.set()
        thread.join()
