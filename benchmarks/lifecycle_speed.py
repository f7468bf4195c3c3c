"""Policy diff, rescore and search over N synthetic stored embeddings in the default SQLite store.

    python benchmarks/lifecycle_speed.py [--items 100000] [--dim 512] [--queries 20]

Goals on one machine: diff and rescore of 100k items < 5 s each, search < 200 ms per
query. Embeddings are random unit vectors (speed only: no score here means anything);
prompt embeddings come from ViT-B-32 with random weights (MODERATOR_PRETRAINED=none),
encoded once while compiling (not timed as part of diff or rescore, printed apart).
Baseline in the same run: loading every embedding through Store.load_embeddings
(chunked IN lists, one array per row) against the one-query bulk read. Wall times
are printed with the process CPU time beside them: on a shared machine the wall
time depends on the neighbours, the CPU time much less.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np

from moderator.engine.compile import CompiledPolicy, compile_policy
from moderator.engine.diff import diff_policies
from moderator.engine.rescore import rescore
from moderator.engine.search import SearchIndex, text_query
from moderator.models.clip import get_clip_model, model_id_for
from moderator.policy.load import load_policy
from moderator.scorers import ScorerContext
from moderator.settings import SHIPPED_POLICIES, Settings
from moderator.store import ItemRecord, Store
from moderator.store.bulk import load_embedding_matrix
from moderator.types import ItemStatus

CHUNK = 5000


CPU: dict[str, float] = {}  # label -> process CPU seconds of the last timed call


def timed(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    """(result, wall seconds); CPU["last"] gets the process CPU time (less noisy on a shared machine)."""
    start, cpu = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    CPU["last"] = time.process_time() - cpu
    return out, time.perf_counter() - start


def cpu() -> str:
    return f"(cpu {CPU['last']:.2f} s)"


def ms(values: list[float]) -> str:
    p95 = float(np.percentile(values, 95))
    return f"median {1000 * statistics.median(values):.0f} ms, p95 {1000 * p95:.0f} ms"


def fill(store: Store, n: int, dim: int, model_id: str) -> None:
    rng = np.random.default_rng(0)
    for start in range(0, n, CHUNK):
        count = min(CHUNK, n - start)
        vectors = rng.normal(size=(count, dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        shas = [f"{i:064x}" for i in range(start, start + count)]
        store.save_embeddings({s: v[None].astype(np.float16) for s, v in zip(shas, vectors, strict=True)}, model_id)
        store.save_items(
            [
                ItemRecord(uri=f"s3://bench/{s[-12:]}.jpg", sha256=s, size=1, fingerprint=None, status=ItemStatus.OK)
                for s in shas
            ]
        )


def compiled(path: Path, settings: Settings) -> CompiledPolicy:
    ctx = ScorerContext(settings=settings, clip=partial(get_clip_model, settings))
    result = compile_policy(load_policy(path), ctx)
    assert isinstance(result, CompiledPolicy), result
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--model", default="ViT-B-32")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="moderator-bench-") as tmp:
        settings = Settings(database_url=f"sqlite:///{tmp}/store.db", model=args.model, pretrained="none", device="cpu")
        model_id = model_id_for(settings)
        store = Store(settings.database_url)
        _, t = timed(fill, store, args.items, args.dim, model_id)
        print(
            f"setup: {args.items} items + embeddings written in {t:.1f} s (save_embeddings/save_items, {CHUNK} a batch)"
        )

        old_path = SHIPPED_POLICIES / "nsfw.yaml"
        thresholds = Path(tmp) / "nsfw_thresholds.yaml"
        thresholds.write_text(old_path.read_text().replace("{review: 0.3, block: 0.7}", "{review: 0.2, block: 0.6}"))
        prompts = Path(tmp) / "nsfw_prompts.yaml"
        prompts.write_text(old_path.read_text().replace("explicit pornography", "pornographic content"))
        (old, new_t, new_p), t = timed(lambda: [compiled(p, settings) for p in (old_path, thresholds, prompts)])
        print(f"compile 3 policies (model load + prompt encoding, cached afterwards): {t:.1f} s")

        shas = [f"{i:064x}" for i in range(args.items)]
        _, t_rows = timed(store.load_embeddings, shas, model_id)
        matrix, t_bulk = timed(load_embedding_matrix, store, model_id)
        print(
            f"load {args.items} embeddings: Store.load_embeddings {t_rows:.2f} s (baseline) | bulk read {t_bulk:.2f} s"
        )

        s, t = timed(rescore, store, old, model_id)
        print(f"rescore (first results): {t:.2f} s {cpu()}  {_parts(s.seconds)}")
        s, t = timed(rescore, store, new_t, model_id)
        print(
            f"rescore (replace {s.items} results, {s.decisions_changed} decisions changed): "
            f"{t:.2f} s {cpu()}  {_parts(s.seconds)}"
        )
        d, t = timed(diff_policies, store, old, new_t, model_id)
        print(
            f"policy diff, thresholds edited (scored once): {t:.2f} s {cpu()}, "
            f"{d.decisions_changed} decisions would change"
        )
        d, t = timed(diff_policies, store, old, new_p, model_id)
        print(
            f"policy diff, a prompt edited (scored twice): {t:.2f} s {cpu()}, "
            f"{d.decisions_changed} decisions would change"
        )

        index = SearchIndex(store, model_id)
        _, t = timed(lambda: index.matrix)
        print(f"search index load (once per process, again when embeddings are added): {t:.2f} s")
        texts = [f"a photo of thing number {i}" for i in range(args.queries)]
        search, encode, cached, total = [], [], [], []
        for text in texts:
            q, t_enc = timed(text_query, settings, text)  # first time: the text encoder runs
            _, t_search = timed(index.search, q, 20)
            _, t_cached = timed(text_query, settings, text)  # again: from the per-process cache
            search.append(t_search)
            encode.append(t_enc)
            cached.append(t_cached)
            total.append(t_enc + t_search)
        print(f"search top-20 over {args.items}, excluding text encoding: {ms(search)} per query")
        print(f"  text encoding, first time: {ms(encode)}; repeated text (cached): {ms(cached)}")
        print(f"  including first-time text encoding: {ms(total)}")
        float32 = matrix.vectors.astype(np.float32)
        _, t = timed(lambda: [np.argpartition(-(float32 @ float32[0]), 20) for _ in range(5)])
        print(f"  reference: one float32 matmul + argpartition over a resident float32 copy: {1000 * t / 5:.0f} ms")
        store.close()


def _parts(seconds: dict[str, float]) -> str:
    return "(" + ", ".join(f"{k} {v:.2f}" for k, v in seconds.items()) + ")"


if __name__ == "__main__":
    main()
