"""PDQ matching at the size of real lists: the index the hashlist scorer uses beside a brute-force scan.

N random 256-bit PDQ hashes (default 1,000,000) and Q queries: half are listed hashes with 0..40
bits flipped (so about three quarters fall within the threshold), half are random. In one run, for
  (a) moderator.hashlists.HammingIndex (faiss IndexBinaryMultiHash, 16 tables of 16 bits),
  (b) threatexchange's own PDQIndex (PDQMultiHashIndex: the same faiss structure, its wrapper),
  (c) a brute-force numpy scan (XOR + popcount over every hash),
it prints build time, memory (resident set growth while building; the codes alone are N x 32
bytes) and single-query latency (median, p99, mean over Q one-hash queries), then the recall of
(a) and (b) against (c): every hash within the threshold found, with its distance (must be 1.0).
Asserts nothing but prints `recall ... OK` or `MISMATCH`.

    python benchmarks/hash_index.py [--n 1000000] [--queries 200] [--threshold 31] [--no-threatexchange]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from moderator.hashlists import HammingIndex  # noqa: E402


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed(fn: Callable[[], object]) -> tuple[object, float, float]:
    """(result, seconds, resident MB grown) of fn()."""
    before, start = rss_mb(), time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start, rss_mb() - before


def latencies(query: Callable[[int], set[tuple[int, int]]], n: int) -> tuple[list[set[tuple[int, int]]], list[float]]:
    found, times = [], []
    for i in range(n):
        start = time.perf_counter()
        found.append(query(i))
        times.append((time.perf_counter() - start) * 1000)
    return found, times


def line(name: str, build_s: float, mem_mb: float, times: list[float]) -> None:
    p99 = sorted(times)[max(0, int(len(times) * 0.99) - 1)]
    print(
        f"{name:<34} build {build_s:7.2f} s  memory {mem_mb:7.1f} MB  "
        f"query median {statistics.median(times):7.3f} ms  p99 {p99:7.3f} ms  mean {statistics.fmean(times):7.3f} ms"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--threshold", type=int, default=31)
    ap.add_argument("--no-threatexchange", action="store_true", help="skip (b), threatexchange's PDQIndex")
    args = ap.parse_args()

    rng = np.random.default_rng(16)
    listed = rng.integers(0, 256, (args.n, 32), dtype=np.uint8)
    near = listed[rng.integers(0, args.n, args.queries // 2)].copy()
    bits = np.unpackbits(near, axis=1)
    for row, flips in zip(bits, rng.integers(0, 41, len(bits)), strict=True):
        row[rng.choice(256, flips, replace=False)] ^= 1
    queries = np.vstack(
        [np.packbits(bits, axis=1), rng.integers(0, 256, (args.queries - len(near), 32), dtype=np.uint8)]
    )
    t = args.threshold
    print(f"{args.n:,} PDQ hashes ({listed.nbytes / 2**20:.1f} MB of codes), {len(queries)} queries, distance <= {t}")

    # (c) brute force, the truth
    as64 = listed.view(np.uint64)

    def brute(i: int) -> set[tuple[int, int]]:
        d = np.bitwise_count(as64 ^ queries[i].view(np.uint64)).sum(axis=1, dtype=np.int32)
        hit = np.flatnonzero(d <= t)
        return {(int(j), int(d[j])) for j in hit}

    truth, brute_ms = latencies(brute, len(queries))

    # (a) ours
    index, build_s, mem = timed(lambda: HammingIndex(listed, t))
    assert isinstance(index, HammingIndex)
    ours, ours_ms = latencies(
        lambda i: {(h.index, h.distance) for h in index.search(queries[i : i + 1])[0]}, len(queries)
    )
    line(f"(a) HammingIndex [{index.kind}]", build_s, mem, ours_ms)
    results = {"(a) HammingIndex": ours}

    # (b) threatexchange's PDQIndex
    if not args.no_threatexchange:
        from threatexchange.signal_type.pdq.pdq_index import PDQIndex

        hexes = [r.tobytes().hex() for r in listed]
        query_hex = [q.tobytes().hex() for q in queries]
        tx, tx_build, tx_mem = timed(lambda: PDQIndex(zip(hexes, range(args.n), strict=True)))
        assert isinstance(tx, PDQIndex)
        del hexes

        def tx_query(i: int) -> set[tuple[int, int]]:
            return {(int(m.metadata), int(m.similarity_info.distance)) for m in tx.query(query_hex[i])}

        tx_found, tx_ms = latencies(tx_query, len(queries))
        line("(b) threatexchange PDQIndex", tx_build, tx_mem, tx_ms)
        results["(b) threatexchange PDQIndex"] = tx_found

    line("(c) brute-force numpy scan", 0.0, 0.0, brute_ms)
    within = sum(map(len, truth))
    print(f"{within} (query, hash) pairs within {t} bits by brute force; {sum(1 for f in truth if f)} queries match")
    for name, found in results.items():
        same = sum(len(f & g) for f, g in zip(found, truth, strict=True))
        extra = sum(len(f - g) for f, g in zip(found, truth, strict=True))
        recall = same / within if within else 1.0
        verdict = "OK" if recall == 1.0 and not extra else "MISMATCH"
        print(f"recall {name}: {recall:.4f} ({same}/{within}, {extra} beyond the threshold) {verdict}")
    print(f"speed-up of (a) over (c), median query: {statistics.median(brute_ms) / statistics.median(ours_ms):.1f}x")


if __name__ == "__main__":
    main()
