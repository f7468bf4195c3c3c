"""The approximate search index (engine/ann.py) against exact search, and usearch against faiss / hnswlib.

    python benchmarks/search_index.py [--items 100000] [--dim 512] [--queries 200] [--data clustered|random]
                                      [--libs usearch-f16,usearch-i8,faiss-hnsw,hnswlib] [--json]

Fills N one-frame embeddings and their items in a new SQLite store (Store.save_embeddings /
save_items, as a scan writes them), then for each library: build time, process RSS growth
while building and after reopening the saved index (usearch: memory-mapped view, so its pages
are the page cache's and shared), recall@20 against exact search and query latency (median,
p95) over `--queries` queries that are not in the store. Baseline in the same run: exact
search (engine.search.top_k over the float32 matrix, the path small stores keep). For usearch
f16 the latency is also measured end to end through SearchIndex.search (freshness probe,
index, exact re-scoring of candidates from the store, item lookup).

Data: `clustered` (default) draws vectors around 1,000 centres in a 64-dimensional subspace
plus noise, which is closer to CLIP embeddings than `random` unit vectors (uniform on the
sphere: the hardest case for any graph index; lifecycle_speed.py's fill).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import embedding_vectors  # noqa: E402

from moderator.engine.search import SearchIndex, top_k  # noqa: E402
from moderator.settings import Settings  # noqa: E402
from moderator.store import ItemRecord, Store  # noqa: E402
from moderator.store.bulk import load_embedding_matrix  # noqa: E402
from moderator.types import ItemStatus  # noqa: E402

MODEL_ID = "bench/none"
CHUNK = 10_000
K = 20


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def rss_mb(kind: str = "") -> float:
    """Resident MB of this process: all, or "Anon" (its own) / "File" (mapped files: shared page cache)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(f"Rss{kind}:" if kind else "VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def fill(store: Store, n: int, dim: int, kind: str) -> None:
    for start in range(0, n, CHUNK):
        count = min(CHUNK, n - start)
        vectors = embedding_vectors(count, dim, kind, np.random.default_rng(start + 1)).astype(np.float16)
        shas = [f"{i:064x}" for i in range(start, start + count)]
        store.save_embeddings({s: v[None] for s, v in zip(shas, vectors, strict=True)}, MODEL_ID)
        store.save_items(
            [ItemRecord(f"s3://bench/{s[-12:]}.jpg", s, 1, None, ItemStatus.OK) for s in shas],
        )


def latency(search: Callable[[np.ndarray], Any], queries: np.ndarray) -> dict[str, float]:
    search(queries[0])  # first touch
    times = []
    for q in queries:
        t = time.perf_counter()
        search(q)
        times.append(time.perf_counter() - t)
    return {
        "median_ms": round(1000 * statistics.median(times), 2),
        "p95_ms": round(1000 * float(np.percentile(times, 95)), 2),
    }


def recall(found: list[np.ndarray], truth: list[np.ndarray]) -> float:
    return round(
        float(np.mean([len(set(f.tolist()) & set(t.tolist())) / K for f, t in zip(found, truth, strict=True)])), 4
    )


def run_usearch(vectors: np.ndarray, queries: np.ndarray, truth: list[np.ndarray], dtype: str, ef: int, folder: Path):
    from usearch.index import Index

    base = rss_mb()
    index = Index(ndim=vectors.shape[1], metric="ip", dtype=dtype, connectivity=16, expansion_add=128)
    t = time.perf_counter()
    index.add(np.arange(len(vectors), dtype=np.uint64), vectors, threads=os.cpu_count() or 1)
    build_s = time.perf_counter() - t
    build_rss = rss_mb() - base
    path = folder / f"{dtype}.usearch"
    index.save(str(path))
    del index
    gc.collect()
    base, anon = rss_mb(), rss_mb("Anon")
    view: Any = Index.restore(str(path), view=True)
    view.expansion_search = ef  # settable, whatever the stubs say
    found = [np.asarray(view.search(q, K).keys, np.int64) for q in queries]
    out = {
        "build_s": round(build_s, 1),
        "build_rss_mb": round(build_rss),
        "file_mb": round(path.stat().st_size / 2**20),
    }
    out |= {"recall_at_20": recall(found, truth), **latency(lambda q: view.search(q, K), queries)}
    out["query_rss_mb"] = round(rss_mb() - base)
    out["query_rss_anon_mb"] = round(rss_mb("Anon") - anon)  # the rest is mapped file pages, shared
    return out


def run_faiss(vectors: np.ndarray, queries: np.ndarray, truth: list[np.ndarray], ef: int, folder: Path):
    import faiss

    faiss.omp_set_num_threads(os.cpu_count() or 1)
    base = rss_mb()
    fp16: Any = faiss.ScalarQuantizer.QT_fp16
    index: Any = faiss.IndexHNSWSQ(vectors.shape[1], fp16, 16, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 128
    t = time.perf_counter()
    index.train(vectors)
    index.add(vectors)
    build_s = time.perf_counter() - t
    build_rss = rss_mb() - base
    path = folder / "faiss.index"
    faiss.write_index(index, str(path))
    index = None
    gc.collect()
    base, anon = rss_mb(), rss_mb("Anon")
    index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
    index.hnsw.efSearch = ef
    faiss.omp_set_num_threads(1)
    found = [index.search(q[None], K)[1][0] for q in queries]
    out = {
        "build_s": round(build_s, 1),
        "build_rss_mb": round(build_rss),
        "file_mb": round(path.stat().st_size / 2**20),
    }
    out |= {"recall_at_20": recall(found, truth), **latency(lambda q: index.search(q[None], K), queries)}
    out["query_rss_mb"] = round(rss_mb() - base)
    out["query_rss_anon_mb"] = round(rss_mb("Anon") - anon)
    return out


def run_hnswlib(vectors: np.ndarray, queries: np.ndarray, truth: list[np.ndarray], ef: int, folder: Path):
    import hnswlib

    base = rss_mb()
    index = hnswlib.Index(space="ip", dim=vectors.shape[1])
    index.init_index(max_elements=len(vectors), ef_construction=128, M=16)
    t = time.perf_counter()
    index.add_items(vectors, np.arange(len(vectors)), num_threads=os.cpu_count() or 1)
    build_s = time.perf_counter() - t
    build_rss = rss_mb() - base
    index.set_ef(ef)
    index.set_num_threads(1)
    found = [index.knn_query(q, K)[0][0].astype(np.int64) for q in queries]
    out: dict[str, Any] = {"build_s": round(build_s, 1), "build_rss_mb": round(build_rss), "file_mb": None}
    out |= {"recall_at_20": recall(found, truth), **latency(lambda q: index.knn_query(q, K), queries)}
    out["query_rss_mb"] = "in memory (no memory map)"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--data", choices=["clustered", "random"], default="clustered")
    ap.add_argument("--ef", type=int, default=128, help="expansion (efSearch) for every library")
    ap.add_argument("--libs", default="usearch-f16,usearch-i8,faiss-hnsw")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    report: dict[str, Any] = {"items": args.items, "dim": args.dim, "data": args.data, "ef": args.ef}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        url = f"sqlite:///{folder / 'store.db'}"
        store = Store(url)
        t = time.perf_counter()
        fill(store, args.items, args.dim, args.data)
        report["fill_s"] = round(time.perf_counter() - t, 1)
        queries = embedding_vectors(args.queries, args.dim, args.data, np.random.default_rng(10**9))
        matrix = load_embedding_matrix(store, MODEL_ID)
        matrix = type(matrix)(matrix.model_id, matrix.shas, matrix.vectors.astype(np.float32), matrix.offsets)
        truth = [np.array([int(matrix.shas[i], 16) for i, _ in top_k(matrix, q, K)]) for q in queries]
        report["exact"] = latency(lambda q: top_k(matrix, q, K), queries)
        report["exact"]["matrix_mb"] = round(matrix.vectors.nbytes / 2**20)
        vectors = matrix.vectors  # row i is item i (shas are zero-padded ints, sorted)
        log(f"filled {args.items} in {report['fill_s']} s; exact baseline done")
        for lib in args.libs.split(","):
            log(f"{lib}: building")
            if lib.startswith("usearch-"):
                report[lib] = run_usearch(vectors, queries, truth, lib.split("-")[1], args.ef, folder)
            elif lib == "faiss-hnsw":
                report[lib] = run_faiss(vectors, queries, truth, args.ef, folder)
            elif lib == "hnswlib":
                report[lib] = run_hnswlib(vectors, queries, truth, args.ef, folder)
            gc.collect()
            log(f"{lib}: {report.get(lib)}")
        # End to end through the store's own path (usearch f16 on disk, as `moderator search` runs it).
        settings = Settings(
            database_url=url, search_index_dir=folder / "ix", search_exact_below=0, search_expansion=args.ef
        )
        index = SearchIndex(store, MODEL_ID, settings)
        t = time.perf_counter()
        index.reindex()
        e2e: dict[str, Any] = {"reindex_s": round(time.perf_counter() - t, 1)}
        found = [np.array([int(h.sha256, 16) for h in index.search(q, K)]) for q in queries]
        e2e |= {"recall_at_20": recall(found, truth), **latency(lambda q: index.search(q, K), queries)}
        report["search_index_e2e"] = e2e
        store.close()
    print(json.dumps(report, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
