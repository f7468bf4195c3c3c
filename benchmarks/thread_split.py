"""How to share the cores between ONNX Runtime's intra-op threads and the decode workers (issue 15).

The whole scan (CLIP policies, ViT-B-32 with random weights, the ONNX Runtime fp32 backend,
decoding in worker processes) on each photo set, for every pair of MODERATOR_ONNX_THREADS and
MODERATOR_DECODE_WORKERS in the grid; rate = N / (t(2N) - t(N)), median of --rounds rounds,
the pairs in a different order each round. One untimed scan per pair first (its ONNX session
and decode workers start there). The defaults (0, 0) are onnxruntime's choice (one thread per
core) and max(2, cores) decode workers. Asserts nothing.

    python benchmarks/thread_split.py [--n 192] [--rounds 3] [--sets cheap,mix]
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import cheap_photo_folder, first_n, marginal_rate, photo_folder, scan_seconds  # noqa: E402


def grid() -> list[tuple[int, int]]:
    cores = os.cpu_count() or 1
    threads = sorted({1, max(1, cores // 2), cores})
    decoders = sorted({1, max(1, cores // 2), cores, cores + 1})
    return [(0, 0), *itertools.product(threads, decoders)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=192, help="N (2N photos per set)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sets", default="cheap,mix")
    args = parser.parse_args()
    pairs = grid()
    makers = {"cheap": cheap_photo_folder, "mix": photo_folder}
    print(f"{os.cpu_count()} cores; scan img/s, N={args.n}, median of {args.rounds} (onnx threads, decode workers):")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in args.sets.split(","):
            folder = makers[name](2 * args.n)
            half = first_n(folder, args.n, work / f"{name}-{args.n}")
            rates: dict[tuple[int, int], list[float]] = {p: [] for p in pairs}
            for threads, decoders in pairs:
                scan_seconds(half, work / "warm.db", onnx_threads=threads, decode_workers=decoders)
            for r in range(args.rounds):
                order = pairs if r % 2 == 0 else pairs[::-1]
                for threads, decoders in order:
                    rate, _ = marginal_rate(half, folder, args.n, work, onnx_threads=threads, decode_workers=decoders)
                    rates[(threads, decoders)].append(rate)
            base = statistics.median(rates[(0, 0)])
            print(f"  {name}:")
            for pair in sorted(pairs, key=lambda p: -statistics.median(rates[p])):
                med = statistics.median(rates[pair])
                label = "default (0, 0)" if pair == (0, 0) else str(pair)
                rounds = ", ".join(f"{x:.1f}" for x in rates[pair])
                print(f"    {label:15} {med:6.2f} img/s  {med / base:.3f}x default  (rounds {rounds})", flush=True)


if __name__ == "__main__":
    main()
