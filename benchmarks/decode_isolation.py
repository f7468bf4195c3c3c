"""What decoding in worker processes costs against decoding in threads, on the benchmark photos.

The decode stage alone: the same bytes (half 12 MP, half 1 MP JPEGs), decoded in JPEG draft mode
and cut to ViT-B-32's 224x224 uint8 crops by decode_frames, in batches of 16 as the scan sends
them, through (a) a thread pool and (b) a DecodePool (forked workers, memory cap, time limit),
both with the scan's decode worker count. Best of 3. archive_speed.py also runs the whole scan
both ways (decode_in_threads: what the scan did before decoding moved to processes); this one
runs alone too:

    python benchmarks/decode_isolation.py [--n 192] [--rounds 5] [--stage-only | --scan-only]
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import photo_folder, photos  # noqa: E402

BATCH = 16


def request() -> Any:
    from moderator.decode import CropSpec, FrameRequest
    from moderator.settings import Settings

    defaults = Settings.model_fields
    crop = CropSpec(224, 224, "short_side", short_side=224)  # ViT-B-32's: Resize(224, bicubic) + CenterCrop(224)
    return FrameRequest(
        max_pixels=defaults["max_image_pixels"].default,
        max_frames=defaults["max_frames"].default,
        draft_size=224,
        crop=crop,
    )


def _rate(mapper: Callable[..., Sequence[Any]], blobs: list[bytes], repeat: int = 3) -> float:
    from moderator.decode import DecodeError, decode_frames

    req = request()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for i in range(0, len(blobs), BATCH):
            chunk = blobs[i : i + BATCH]
            results = list(mapper(decode_frames, chunk, [req] * len(chunk)))
            if any(isinstance(r, DecodeError) for r in results):
                raise RuntimeError(f"benchmark photo failed to decode: {results}")
        best = min(best, time.perf_counter() - start)
    return len(blobs) / best


def stage_rates(blobs: list[bytes], workers: int) -> dict[str, float]:
    """Images/s of the decode stage through threads and through worker processes."""
    from moderator.decode import DecodePool

    with ThreadPoolExecutor(workers) as threads:
        threaded = _rate(threads.map, blobs)
    with DecodePool(workers, memory_mb=2048, timeout_s=30.0) as pool:
        pool.map(len, [b"warm-up"] * workers)  # workers forked before timing, as a long scan has them
        isolated = _rate(pool.map, blobs)
    return {"threads": threaded, "processes": isolated}


class ThreadDecoders:
    """The scan's decode stage as it was: threads in this process, no limits (for comparison only)."""

    def __init__(self, workers: int) -> None:
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="moderator-decode")

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any]) -> list[Any]:
        return list(self._pool.map(lambda args: _caught(fn, args), zip(*iterables, strict=True)))

    def close(self) -> None:
        self._pool.shutdown()


def _caught(fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    from moderator.decode import DecodeError

    try:
        return fn(*args)
    except DecodeError as e:
        return e


@contextmanager
def decode_in_threads() -> Iterator[None]:
    """Scans inside this block decode in threads, as before decode workers were processes."""
    from moderator.engine import prepare

    original = prepare.decode_pool

    @contextmanager
    def threads(settings: Any) -> Iterator[Any]:
        pool = ThreadDecoders(prepare.decode_workers(settings))
        try:
            yield pool
        finally:
            pool.close()

    prepare.decode_pool = threads  # type: ignore[assignment]
    try:
        yield
    finally:
        prepare.decode_pool = original  # type: ignore[assignment]


def report(n: int = 200) -> str:
    folder = photo_folder(n)
    blobs = [p.read_bytes() for p in photos(folder)]
    workers = max(2, os.cpu_count() or 1)  # the scan's decode worker count (decode_workers=0)
    rates = stage_rates(blobs, workers)
    extra_ms = (1 / rates["processes"] - 1 / rates["threads"]) * 1000 * workers
    return (
        f"decode stage, {len(blobs)} JPEGs (half 12 MP, half 1 MP), {workers} workers, crops to 224x224:\n"
        f"  threads   {rates['threads']:7.2f} img/s\n"
        f"  processes {rates['processes']:7.2f} img/s  ({rates['processes'] / rates['threads']:.3f}x threads;"
        f" {extra_ms:+.2f} ms of worker time per image)"
    )


def cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and of its live decode workers so far."""
    import resource

    from moderator.decode import pool

    usage = resource.getrusage(resource.RUSAGE_SELF)
    total = usage.ru_utime + usage.ru_stime
    tick = os.sysconf("SC_CLK_TCK")
    for decoders in pool._shared.values():
        for pid in decoders.pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def marginal(half: Path, folder: Path, n: int, work: Path) -> tuple[float, float]:
    """(img/s as N / (t(2N) - t(N)), CPU ms per image as (cpu(2N) - cpu(N)) / N, workers included)."""
    from benchmarks.common import scan_seconds

    c0 = cpu_seconds()
    t_small, _ = scan_seconds(half, work / "scan.db")
    c1 = cpu_seconds()
    t_large, _ = scan_seconds(folder, work / "scan.db")
    c2 = cpu_seconds()
    return n / max(t_large - t_small, 1e-9), ((c2 - c1) - (c1 - c0)) / n * 1000


def scan_comparison(n: int, rounds: int = 5) -> str:
    """The whole scan (CLIP policies, ViT-B-32, the default backend), decode in processes vs threads:
    N / (t(2N) - t(N)) and CPU per image (this process and its decode workers) on each photo set,
    the two alternated `rounds` times (median of each), the order swapped every round (ABBA) so
    that a drift in the machine's speed favours neither.

    One untimed scan first: the model load and the ONNX export happen once per process, and
    inside a timed t(N) they would shrink t(2N) - t(N) and inflate the rate."""
    import tempfile

    from benchmarks.common import cheap_photo_folder, first_n, scan_seconds

    lines = [f"the scan end to end, rate = N / (t(2N) - t(N)), N={n}, median of {rounds} alternated:"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, folder in {"cheap": cheap_photo_folder(2 * n), "mix": photo_folder(2 * n)}.items():
            half = first_n(folder, n, work / f"{name}-{n}")
            scan_seconds(half, work / "warm.db")
            with decode_in_threads():
                scan_seconds(half, work / "warm.db")
            isolated: list[tuple[float, float]] = []
            threaded: list[tuple[float, float]] = []
            for r in range(rounds):
                for isolate in (True, False) if r % 2 == 0 else (False, True):
                    if isolate:
                        isolated.append(marginal(half, folder, n, work))
                    else:
                        with decode_in_threads():
                            threaded.append(marginal(half, folder, n, work))
            iso, thr = (statistics.median(r for r, _ in runs) for runs in (isolated, threaded))
            iso_cpu, thr_cpu = (statistics.median(c for _, c in runs) for runs in (isolated, threaded))
            lines.append(
                f"  {name:5}: processes {iso:6.2f} img/s, threads {thr:6.2f} img/s, ratio {iso / thr:.3f};"
                f" CPU per image {iso_cpu:.1f} / {thr_cpu:.1f} ms ({iso_cpu / thr_cpu:.3f}x)\n"
                f"         each round, img/s: processes {', '.join(f'{r:.2f}' for r, _ in isolated)};"
                f" threads {', '.join(f'{r:.2f}' for r, _ in threaded)}"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=192, help="N for the end-to-end scans (2N photos per set)")
    parser.add_argument("--stage-only", action="store_true", help="only the decode stage")
    parser.add_argument("--scan-only", action="store_true", help="only the whole scan")
    parser.add_argument("--rounds", type=int, default=5, help="alternated rounds of the whole scan (median)")
    args = parser.parse_args()
    if not args.scan_only:
        print(report(2 * args.n), flush=True)
    if not args.stage_only:
        print(scan_comparison(args.n, args.rounds))
