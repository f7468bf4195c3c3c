"""A decode worker process: the forked child's whole life.

Shared-nothing: it keeps only its socket to the pool (every other inherited descriptor is
closed), ignores Ctrl-C (the parent decides when a scan stops), drops the parent's signal
handlers, writes no core dump, and runs under an address-space cap (RLIMIT_AS: what it had at
start plus the configured megabytes; beyond, allocations fail as MemoryError) and, per file, a
CPU-time limit, a backstop that stops it if its parent died mid-file. It exits when its socket
closes (the pool closed, or the parent went away), and after running out of memory.
"""

from __future__ import annotations

import faulthandler
import os
import resource
import signal
import socket
from collections.abc import Callable
from typing import Any, NoReturn

from PIL import Image

from moderator.decode import channel
from moderator.decode.errors import DecodeError, DecodeFailure
from moderator.decode.image import MEMORY_MESSAGE

# Reply kinds. RETIRED: a failure after which this worker exits (its memory is not to be trusted).
OK, FAILED, RETIRED, RAISED = 0, 1, 2, 3


def serve(sock: socket.socket, memory_mb: int, timeout_s: float) -> NoReturn:
    code = 0
    try:
        _isolate(sock.fileno(), memory_mb)
        tasks = channel.TaskReader()
        while True:
            try:
                fn, args, Image.MAX_IMAGE_PIXELS = tasks.receive(sock)  # one thread here: safe to set
            except EOFError:
                break
            _limit_cpu(timeout_s)
            kind, value = _run(fn, args)
            try:
                channel.send_reply(sock, kind, value)
            except MemoryError:
                kind, value = RETIRED, DecodeError(DecodeFailure.too_large, MEMORY_MESSAGE)
                channel.send_reply(sock, kind, value)
            if kind == RETIRED:
                break
            del value, fn, args  # nothing of this file stays alive while the next one decodes
    except BaseException:
        code = 1
    os._exit(code)


def _run(fn: Callable[..., Any], args: tuple[Any, ...]) -> tuple[int, Any]:
    try:
        return OK, fn(*args)
    except DecodeError as e:
        e.__cause__ = e.__context__ = e.__traceback__ = None  # the failed decode's frames: freed now
        return (RETIRED if e.reason is DecodeFailure.too_large else FAILED), e
    except MemoryError:
        return RETIRED, DecodeError(DecodeFailure.too_large, MEMORY_MESSAGE)
    except Exception as e:
        return RAISED, e


def _isolate(keep_fd: int, memory_mb: int) -> None:
    for sig in signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP}:
        try:
            if callable(signal.getsignal(sig)):  # the parent's Python handlers (shutdown, Ctrl-C)
                signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):
            continue
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the scan in the parent, not a decode
    signal.set_wakeup_fd(-1)  # the parent's (an event loop's): about to be closed
    faulthandler.disable()  # a crash is reported by the parent in one line, not by a traceback dump
    os.closerange(3, keep_fd)
    os.closerange(keep_fd + 1, os.sysconf("SC_OPEN_MAX"))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if memory_mb > 0:
        _cap_address_space(memory_mb * 1024 * 1024)


def _cap_address_space(extra: int) -> None:
    try:
        with open("/proc/self/status", "rb") as f:
            vm_kb = next(int(line.split()[1]) for line in f if line.startswith(b"VmSize:"))
    except (OSError, StopIteration, ValueError):
        return  # no /proc (not Linux): no cap; the time limit still holds
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = vm_kb * 1024 + extra
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _limit_cpu(timeout_s: float) -> None:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    budget = timeout_s * (os.cpu_count() or 1) + 2  # a decoder may use threads; the parent's wall clock comes first
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    limit = int(usage.ru_utime + usage.ru_stime + budget)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (limit, hard))
