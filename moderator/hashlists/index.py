"""Finding every listed hash within a Hamming distance of a query, exactly, at the size of real lists.

Large lists use faiss's multi-index hashing (IndexBinaryMultiHash), the structure threatexchange's
PDQMultiHashIndex wraps (16 tables of 16 bits for PDQ), built straight from the packed codes
(threatexchange's wrapper converts hash by hash and keeps an id map: 2-3x slower to build and to
query, see benchmarks/hash_index.py). Multi-index hashing is exact: a hash within distance t of
the query agrees with it, in one of the m tables, on all but t // m bits, and each table is probed
with every key that many bits away. Past three flipped bits per table that probing costs more than
a scan, so faiss's exhaustive binary index answers instead; small lists are a numpy scan.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from moderator.hashlists.signals import hamming_codes

TABLE_BITS = 16
MAX_FLIPS = 3  # per table; beyond, probing 16 tables costs more than scanning
SCAN_BELOW = 20_000  # entries: a numpy scan answers in well under a millisecond


@dataclass(frozen=True)
class Hit:
    index: int  # position of the entry in the codes the index was built from
    distance: int


class HammingIndex:
    """Exact range search over packed binary hashes uint8 [N, bytes] (PDQ: 32 bytes, pHash: 8)."""

    def __init__(self, codes: np.ndarray, max_distance: int, *, scan_below: int = SCAN_BELOW) -> None:
        if codes.ndim != 2 or codes.dtype != np.uint8:
            raise ValueError(f"codes must be uint8 [N, bytes], got {codes.dtype} {codes.shape}")
        self.codes = np.ascontiguousarray(codes)
        self.max_distance = max_distance
        self.bits = codes.shape[1] * 8
        self.kind = "scan"
        self._faiss: Any = None
        if len(codes) >= scan_below and len(codes):
            self._faiss = self._build()

    def _build(self) -> Any:
        import faiss  # threatexchange's dependency; imported only for lists this large

        tables = self.bits // TABLE_BITS
        index: Any
        if self.max_distance // tables <= MAX_FLIPS:
            index = faiss.IndexBinaryMultiHash(self.bits, tables, TABLE_BITS)
            index.nflip = self.max_distance // tables
            self.kind = f"faiss-mih({tables}x{TABLE_BITS}, nflip={index.nflip})"
        else:
            index = faiss.IndexBinaryFlat(self.bits)
            self.kind = "faiss-flat"
        index.add(self.codes)
        return index

    def __len__(self) -> int:
        return len(self.codes)

    def search(self, queries: np.ndarray) -> list[list[Hit]]:
        """Per query (uint8 [Q, bytes]), every entry within max_distance, closest first."""
        queries = np.ascontiguousarray(queries, dtype=np.uint8).reshape(-1, self.codes.shape[1])
        if not len(self.codes):
            return [[] for _ in queries]
        if self._faiss is None:
            d = hamming_codes(queries, self.codes)
            out = []
            for row in d:
                found = np.flatnonzero(row <= self.max_distance)
                out.append(_hits(found, row[found]))
            return out
        import faiss

        # One OpenMP thread (process-wide; faiss is used nowhere else): a search of a few hashes gains
        # nothing from a team of threads and pays for waking it. 1M PDQs on a loaded 2-core machine,
        # two runs in a row: median 5.8 ms with the default team, 1.6 ms with one thread.
        faiss.omp_set_num_threads(1)
        limits, distances, ids = self._faiss.range_search(queries, self.max_distance + 1)  # radius is exclusive
        return [
            _hits(ids[limits[i] : limits[i + 1]], distances[limits[i] : limits[i + 1]]) for i in range(len(queries))
        ]

    def nearest(self, query: np.ndarray) -> Hit | None:
        hits = self.search(query)[0]
        return hits[0] if hits else None


def _hits(ids: np.ndarray, distances: np.ndarray) -> list[Hit]:
    order = np.lexsort((ids, distances))  # closest first; ties: the earlier entry
    return [Hit(int(ids[i]), int(distances[i])) for i in order]
