"""The store at scale (issue 17): fill N items as a scan writes them, then time each command.

    python benchmarks/scale.py --items 100000 --database-url URL [--json]

Fill: N items through Store.save_embeddings + Store.save_items (benchmarks/common.py scan_records:
ViT-B-32-sized float16 embeddings, clustered like CLIP's unless --data random, results of the three
shipped CLIP policies from PolicySet.score, 5.7% flagged), in batches of --batch, then ANALYZE.
Before it, the first --writer-items of those items are written by 1 writer and by --writers
processes at once (disjoint batches) into a scratch store beside URL (a schema of its own on
PostgreSQL, dropped afterwards): fill_1_writer vs fill_4_writers, the same items, the same run.

Then each command runs as its own subprocess (peak RSS from /usr/bin/time -f %M): rescore of the
three policies, `policy diff` of a threshold edit, `export --format parquet`, `search --reindex`
(when the CLI has it) and one `search`; `moderator serve` (no /api/moderate: nothing loads a model
beside the measurements) answers the queue (first page, ?tag=selfie, a page --deep-pages pages down
by cursor; medians of 5) and /api/search by a stored item (p95 over --queries, recall@20 against
exact search over every embedding). Each step fails soft: its error lands in "errors" and the run
goes on. Fill times are the store calls alone (building the records is not timed); wall times depend
on the neighbours.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from moderator.store import Store  # noqa: E402

MODEL_ID = "ViT-B-32/none"
# The console script beside this interpreter (a venv need not be on PATH).
MODERATOR = [str(Path(sys.executable).with_name("moderator"))]
Out = dict[str, Any]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--database-url", required=True, help="an empty store (or one this benchmark filled)")
    parser.add_argument("--json", action="store_true", help="print only the JSON object")
    parser.add_argument("--batch", type=int, default=5000, help="items per save_items call")
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--writer-items", type=int, default=100_000, help="items of the writers' comparison")
    parser.add_argument("--no-fill", action="store_true", help="the store already holds the items: time commands")
    parser.add_argument(
        "--data", choices=["clustered", "random"], default="clustered", help="embeddings (common.embedding_vectors)"
    )
    parser.add_argument("--deep-pages", type=int, default=20)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per command")
    parser.add_argument("--skip", action="append", default=[], help="fill4, fill, rescore, diff, export, search, serve")
    args = parser.parse_args()
    log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else print
    out: Out = {"items": args.items, "batch": args.batch, "data": args.data, "errors": {}}
    work = Path(tempfile.mkdtemp(prefix="moderator-scale-"))
    url = args.database_url
    settings = common.fill_settings(url, **_index_dir(work))
    try:
        store = Store(url)
        out["backend"] = store.dialect
        policy_set = None
        if not args.no_fill:
            policy_set = _step(out, "policies", lambda: common.fill_policies(settings), log)
        if policy_set is not None:
            first = min(args.writer_items, args.items)
            chunks = list(_chunks(policy_set, 0, first, args))
            if "fill4" not in args.skip:
                _step(out, "fill_writers", lambda: _writers_fill(out, store, chunks, args.writers), log)
            if "fill" not in args.skip:
                _step(out, "fill", lambda: _fill(out, store, policy_set, chunks, args), log)
            del chunks
        out["store_counts"] = {k: v for k, v in store.counts().items() if not isinstance(v, dict)}
        store.close()
        env = _env(url, work)
        _commands(out, env, work, args, log)
        if "serve" not in args.skip:
            _step(out, "serve", lambda: _serve(out, env, work, args, log), log)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out, indent=None if args.json else 2))


def _index_dir(work: Path) -> dict[str, Any]:
    from moderator.settings import Settings

    return {"search_index_dir": work / "index"} if "search_index_dir" in Settings.model_fields else {}


def _step(out: Out, name: str, fn: Callable[[], Any], log: Callable[..., None] = print) -> Any:
    """Run one step; on failure record its error under out["errors"][name] and go on."""
    start = time.perf_counter()
    try:
        result = fn()
    except Exception as e:  # noqa: BLE001 - a benchmark step fails soft
        out["errors"][name] = f"{type(e).__name__}: {str(e).strip()[-600:]}"
        log(f"{name}: FAILED {out['errors'][name]}")
        return None
    log(f"{name}: {time.perf_counter() - start:.1f} s")
    return result


# -- fill ----------------------------------------------------------------------------------------


def _chunks(
    policy_set: Any, start: int, stop: int, args: argparse.Namespace
) -> Iterator[tuple[dict[str, np.ndarray], list[Any]]]:
    for at in range(start, stop, args.batch):
        yield common.scan_records(policy_set, at, min(args.batch, stop - at), data=args.data)


def _save(store: Store, chunk: tuple[dict[str, np.ndarray], list[Any]]) -> tuple[float, float]:
    """(seconds in save_embeddings, seconds in save_items): what a scan's store stage does per batch."""
    embeddings, records = chunk
    t0 = time.perf_counter()
    store.save_embeddings(embeddings, MODEL_ID)
    t1 = time.perf_counter()
    store.save_items(records)
    return t1 - t0, time.perf_counter() - t1


def _fill(out: Out, store: Store, policy_set: Any, first: list[Any], args: argparse.Namespace) -> None:
    emb = items = 0.0
    n_first = sum(len(c[1]) for c in first)
    flagged = 0
    # chain, not a list: the records of 1M items would all be built (and held: 5 GB at 200k) before the first write
    for i, chunk in enumerate(itertools.chain(first, _chunks(policy_set, n_first, args.items, args))):
        e, s = _save(store, chunk)
        emb, items = emb + e, items + s
        flagged += sum(r.decision is not None and r.decision.value in ("review", "block") for r in chunk[1])
        if i == len(first) - 1:
            out["fill_1_writer_items_per_s"] = round(n_first / (emb + items))
    n = args.items
    out["fill_items_per_s"] = round(n / (emb + items))
    out["fill_save_items_per_s"] = round(n / items)
    out["fill_save_embeddings_per_s"] = round(n / emb)
    out["fill_flagged_share"] = round(flagged / n, 4)
    t = time.perf_counter()
    store.analyze()
    out["analyze_s"] = round(time.perf_counter() - t, 2)


def _scratch_url(store: Store) -> tuple[str, Callable[[], None]]:
    """A second, empty store beside this one: a schema of its own on PostgreSQL, a temp file for SQLite."""
    if store.dialect != "postgresql":
        folder = Path(tempfile.mkdtemp(prefix="moderator-scale-writers-"))
        return f"sqlite:///{folder}/store.db", lambda: shutil.rmtree(folder, ignore_errors=True)
    schema = f"scale_writers_{secrets.token_hex(6)}"
    with store.engine.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')

    def drop() -> None:
        with store.engine.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')

    query = {k: v for k, v in store.url.query.items() if k != "options"}
    url = store.url.set(query={**query, "options": f"-csearch_path={schema}"})
    return url.render_as_string(hide_password=False), drop


def _writers_fill(out: Out, store: Store, chunks: list[Any], writers: int) -> None:
    """The same items by 1 writer, then by `writers` processes at once (batch i to writer i % writers)."""
    import multiprocessing as mp

    n = sum(len(c[1]) for c in chunks)
    url, drop = _scratch_url(store)
    try:
        Store(url).close()  # migrated once, before the writers start
        ctx = mp.get_context("fork")  # the children share the prepared batches, copy-on-write
        barrier, results = ctx.Barrier(writers + 1), ctx.Queue()
        procs = [ctx.Process(target=_writer, args=(url, chunks[w::writers], barrier, results)) for w in range(writers)]
        for p in procs:
            p.start()
        barrier.wait(timeout=600)
        spans = [results.get(timeout=3600) for _ in procs]
        for p in procs:
            p.join()
        failed = [s for s in spans if isinstance(s, str)]
        if failed:
            raise RuntimeError("; ".join(failed))
        start, end = min(s[0] for s in spans), max(s[1] for s in spans)
        out[f"fill_{writers}_writers_items_per_s"] = round(n / (end - start))
        if writers != 4:
            out["fill_4_writers_items_per_s"] = None
        check = Store(url)
        counts = check.counts()
        check.close()
        out["fill_writers_rows"] = {k: counts[k] for k in ("items", "results", "embeddings")}  # type: ignore[literal-required]
        if counts["items"] != n or counts["results"] != 3 * n:
            raise RuntimeError(f"the writers left {counts['items']} items, {counts['results']} results for {n}")
    finally:
        drop()


def _writer(url: str, chunks: list[Any], barrier: Any, results: Any) -> None:
    try:
        store = Store(url)
        barrier.wait()
        start = time.perf_counter()
        for chunk in chunks:
            _save(store, chunk)
        results.put((start, time.perf_counter()))
        store.close()
    except Exception as e:  # noqa: BLE001 - reported to the parent
        results.put(f"{type(e).__name__}: {e}")


# -- commands ------------------------------------------------------------------------------------


def _env(url: str, work: Path) -> dict[str, str]:
    from moderator.settings import SHIPPED_POLICIES

    env = {
        **os.environ,
        "MODERATOR_DATABASE_URL": url,
        "MODERATOR_MODEL": common.MODEL,
        "MODERATOR_PRETRAINED": "none",
        "MODERATOR_DEVICE": "cpu",
        "MODERATOR_POLICIES": os.pathsep.join(str(SHIPPED_POLICIES / p) for p in common.POLICIES),
    }
    if _index_dir(work):
        env["MODERATOR_SEARCH_INDEX_DIR"] = str(work / "index")
    return env


def measured(cmd: list[str], env: dict[str, str], timeout: float) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MB, output tail) of one command; raises on failure.

    Not os.wait4 on our own child: Linux carries the RSS a forked child had before exec (a copy of
    this process, GBs after the fill) into its ru_maxrss. /usr/bin/time forks from a small process;
    without it, the child's VmHWM is sampled while it runs.
    """
    with tempfile.TemporaryDirectory() as tmp:
        peak_file = Path(tmp, "peak")
        timer = ["/usr/bin/time", "-q", "-f", "%M", "-o", str(peak_file)] if Path("/usr/bin/time").exists() else []
        with open(Path(tmp, "log"), "wb") as log:
            start = time.perf_counter()
            proc = subprocess.Popen([*timer, *cmd], env=env, stdout=log, stderr=subprocess.STDOUT)
            hwm = 0.0
            while proc.poll() is None:
                if time.perf_counter() - start > timeout:
                    proc.kill()
                    proc.wait()
                    break
                if not timer:
                    hwm = max(hwm, _proc_mb(proc.pid, "VmHWM:"))
                time.sleep(0.05)
            wall = time.perf_counter() - start
        text = Path(tmp, "log").read_text(errors="replace")[-4000:]
        if timer and peak_file.exists():
            hwm = int(peak_file.read_text().split()[-1]) / 1024  # %M: KiB
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[-4:])} exited {proc.returncode} after {wall:.0f} s: {text[-600:]}")
    return wall, hwm, text


def _proc_mb(pid: int, field: str = "VmRSS:") -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _help(env: dict[str, str], *command: str) -> str:
    return subprocess.run([*MODERATOR, *command, "--help"], env=env, capture_output=True, text=True).stdout


def _commands(out: Out, env: dict[str, str], work: Path, args: argparse.Namespace, log: Callable[..., None]) -> None:
    from moderator.settings import SHIPPED_POLICIES

    def run(key: str, *command: str) -> str | None:
        def go() -> str:
            wall, rss, text = measured([*MODERATOR, *command], env, args.timeout)
            out[f"{key}_s"], out[f"{key}_peak_rss_mb"] = round(wall, 2), round(rss)
            return text

        result: str | None = _step(out, key, go, log)
        return result

    if "rescore" not in args.skip:
        run("rescore", "rescore")
    if "diff" not in args.skip:
        old = SHIPPED_POLICIES / "nsfw.yaml"
        edited = work / "nsfw_thresholds.yaml"
        edited.write_text(old.read_text().replace("{review: 0.3, block: 0.7}", "{review: 0.2, block: 0.6}"))
        run("diff", "policy", "diff", str(old), str(edited), "--json")
    if "export" not in args.skip:
        target = work / "export.parquet"
        if run("export", "export", "--format", "parquet", "-o", str(target)) is not None and out.get("export_s"):
            out["export_items_per_s"] = round(args.items / out["export_s"])
            target.unlink(missing_ok=True)
    if "search" not in args.skip:
        if "--reindex" in _help(env, "search"):
            run("search_reindex", "search", "--reindex")
        run("search_cli", "search", "a photo of a cat", "-k", "20", "--json")


# -- the server: queue pages and search ----------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _token(env: dict[str, str]) -> str:
    name = f"bench{secrets.token_hex(3)}"
    subprocess.run(
        [*MODERATOR, "users", "add", name, "--role", "admin", "--password", secrets.token_hex(8)],
        env=env,
        check=True,
        capture_output=True,
    )
    made = subprocess.run([*MODERATOR, "users", "token", "create", name], env=env, check=True, capture_output=True)
    return made.stdout.decode().strip().splitlines()[-1]


def _get(base: str, path: str, token: str, **params: Any) -> tuple[float, Any]:
    query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
    req = urllib.request.Request(f"{base}{path}?{query}", headers={"Authorization": f"Bearer {token}"})
    start = time.perf_counter()
    with urllib.request.urlopen(req, timeout=120) as resp:
        body = resp.read()
    return (time.perf_counter() - start) * 1000, json.loads(body)


def _median_ms(base: str, path: str, token: str, **params: Any) -> float:
    _get(base, path, token, **params)  # warm: the first request of a kind plans and caches
    return round(statistics.median(_get(base, path, token, **params)[0] for _ in range(5)), 1)


def _serve(out: Out, env: dict[str, str], work: Path, args: argparse.Namespace, log: Callable[..., None]) -> None:
    token = _token(env)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    with open(work / "serve.log", "wb") as server_log:
        # POST /api/moderate off: its warm-up loads CLIP in the background, which on 2 cores took
        # most of the CPU for the first ~16 s and tripled the search p95 measured beside it.
        serve_env = {**env, "MODERATOR_MODERATE_API": "false"}
        server = subprocess.Popen(
            [*MODERATOR, "serve", "--port", str(port), "--no-deliver"],
            env=serve_env,
            stdout=server_log,
            stderr=server_log,
        )
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                _get(base, "/api/queue", token, per_page=1)
                break
            except Exception:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"serve did not answer: {(work / 'serve.log').read_text()[-600:]}") from None
                time.sleep(1)
        _step(out, "queue", lambda: _queue(out, base, token, args.deep_pages), log)
        _step(out, "search", lambda: _search(out, base, token, server.pid, args), log)
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _queue(out: Out, base: str, token: str, deep_pages: int) -> None:
    out["queue_first_ms"] = _median_ms(base, "/api/queue", token)
    _, first = _get(base, "/api/queue", token)
    out["queue_total"] = first.get("total")
    out["queue_filtered_ms"] = _median_ms(base, "/api/queue", token, tag="selfie")
    out["queue_filtered_policy_ms"] = _median_ms(base, "/api/queue", token, policy="nsfw", min_score=0.3)
    cursor, page = first.get("next_cursor"), first
    if cursor is not None or "next_cursor" in first:  # pages by key: follow the cursors down
        for _ in range(deep_pages - 1):
            if not page.get("next_cursor"):
                break
            cursor = page["next_cursor"]
            _, page = _get(base, "/api/queue", token, after=cursor)
        out["queue_deep_ms"] = _median_ms(base, "/api/queue", token, after=cursor)
        out["queue_deep_how"] = f"after= cursor of page {deep_pages}"
    else:
        out["queue_deep_ms"] = _median_ms(base, "/api/queue", token, page=deep_pages)
        out["queue_deep_how"] = f"page={deep_pages} (offset)"


def _search(out: Out, base: str, token: str, pid: int, args: argparse.Namespace) -> None:
    from moderator.store.bulk import load_embedding_matrix

    store = Store(args.database_url, create=False)
    try:
        matrix = load_embedding_matrix(store, MODEL_ID)
    finally:
        store.close()
    if not matrix.single_frame:
        raise RuntimeError("recall is computed for single-frame embeddings only")
    vectors = matrix.vectors.astype(np.float32)
    rng = np.random.default_rng(1)
    picks = rng.choice(len(matrix.shas), size=min(args.queries, len(matrix.shas)), replace=False)
    before = _proc_mb(pid)
    _get(base, "/api/search", token, sha256=matrix.shas[int(picks[0])], k=20)  # loads or opens the index
    out["search_first_ms"] = round(_get(base, "/api/search", token, sha256=matrix.shas[int(picks[0])], k=20)[0], 1)
    out["search_index_rss_mb"] = round(_proc_mb(pid) - before)
    times, recalls = [], []
    for i in picks:
        ms, hits = _get(base, "/api/search", token, sha256=matrix.shas[int(i)], k=20)
        times.append(ms)
        scores = vectors @ vectors[int(i)]
        scores[int(i)] = -np.inf  # the query item is excluded by the API
        exact = {matrix.shas[j] for j in np.argpartition(-scores, 20)[:20]}
        recalls.append(len(exact & {h["sha256"] for h in hits}) / 20)
    out["search_p50_ms"] = round(float(np.percentile(times, 50)), 1)
    out["search_p95_ms"] = round(float(np.percentile(times, 95)), 1)
    out["search_recall_at_20"] = round(float(np.mean(recalls)), 4)
    out["server_rss_mb"] = round(_proc_mb(pid))


if __name__ == "__main__":
    main()
