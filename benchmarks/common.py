"""What the scan benchmarks share: a realistic photo set, the baselines, and timing.

The photos are made in code (no downloads) but decode like camera JPEGs: smooth
shapes and gradients under sensor-like noise, at quality 90, so a 12 MP image is a
few MB of real entropy (flat colours would decode unrealistically fast). They are
cached under the temp folder, keyed by their parameters, so runs reuse them.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

LARGE = (4000, 3000)  # 12 MP, a phone camera
SMALL = (1155, 866)  # 1 MP
NOISE = 8  # +-8 grey levels of per-pixel noise: 12 MP at quality 90 comes out near 3 MB, like a phone photo
CACHE = Path(os.environ.get("MODERATOR_BENCH_CACHE", Path(tempfile.gettempdir()) / "moderator-bench"))


def make_photo(seed: int, size: tuple[int, int], noise: int = NOISE) -> bytes:
    """A camera-like JPEG; noise=0 gives a smooth photo (cheap to decode: few bits per block)."""
    rng = np.random.default_rng(seed)
    w, h = size
    # Scene at a quarter of the size, blown up: smooth sky, walls and skin, soft-edged objects.
    sw, sh = w // 4, h // 4
    scene = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((sw, sh), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(scene)
    for _ in range(40):
        x, y = int(rng.integers(0, sw)), int(rng.integers(0, sh))
        r = int(rng.integers(sw // 60 + 1, sw // 6 + 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
        else:
            draw.line((x, y, x + int(rng.integers(-r, r)), y + int(rng.integers(-r, r))), fill=colour, width=r // 8 + 1)
    scene = scene.filter(ImageFilter.GaussianBlur(1)).resize(size, Image.Resampling.BILINEAR)
    # Texture and sensor noise at full resolution: what makes real JPEGs expensive to decode.
    grain = rng.integers(-noise, noise + 1, (h, w, 1), dtype=np.int16)
    pixels = np.clip(np.asarray(scene, dtype=np.int16) + grain, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def photo_folder(n: int = 200) -> Path:
    """n JPEGs, large and small interleaved (any prefix has the same mix); made once, then cached."""
    folder = CACHE / f"photos-{n}-v1"
    complete = folder.with_suffix(".complete")  # beside the folder: the scan must not see it
    if not complete.exists():
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            size = LARGE if i % 2 == 0 else SMALL
            (folder / f"{i:04d}.jpg").write_bytes(make_photo(i, size))
        complete.write_text("")
    return folder


def cheap_photo_folder(n: int = 200) -> Path:
    """n JPEGs whose decoding is cheap: smooth 12 MP photos and (noisy) 1 MP ones, interleaved; cached."""
    folder = CACHE / f"photos-cheap-{n}-v1"
    complete = folder.with_suffix(".complete")
    if not complete.exists():
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            data = make_photo(i, LARGE, noise=0) if i % 2 == 0 else make_photo(i, SMALL)
            (folder / f"{i:04d}.jpg").write_bytes(data)
        complete.write_text("")
    return folder


def first_n(folder: Path, n: int, dest: Path) -> Path:
    """A folder holding the first n photos of `folder` (hard links where possible), for N vs 2N scans."""
    dest.mkdir(parents=True, exist_ok=True)
    for path in photos(folder, n):
        target = dest / path.name
        if not target.exists():
            try:
                os.link(path, target)
            except OSError:
                target.write_bytes(path.read_bytes())
    return dest


def photos(folder: Path, n: int | None = None) -> list[Path]:
    return sorted(folder.glob("*.jpg"))[:n]


def tar_gz(paths: Sequence[Path], dest: Path) -> Path:
    if not dest.exists():
        with tarfile.open(dest, "w:gz", compresslevel=6) as tf:
            for path in paths:
                tf.add(path, arcname=f"photos/{path.name}")
    return dest


def best_of(fn: Callable[[], float], repeat: int = 3) -> float:
    """The best of `repeat` runs of fn() (seconds): the least disturbed by other load."""
    return min(fn() for _ in range(repeat))


def seconds(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def naive_rate(model_name: str, paths: Sequence[Path]) -> float:
    """Images/s of the obvious loop: open, open_clip preprocess, encode_image, one image at a time."""
    import open_clip
    import torch

    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=None)
    model.eval()

    def run() -> None:
        with torch.inference_mode():
            for path in paths:
                with Image.open(path) as img:
                    model.encode_image(preprocess(img.convert("RGB")).unsqueeze(0))

    run_one = paths[:1]
    with torch.inference_mode():  # warm-up, not timed
        model.encode_image(preprocess(Image.open(run_one[0]).convert("RGB")).unsqueeze(0))
    return len(paths) / seconds(run)


def model_ceiling(model: Any, image_size: int, batch_sizes: Sequence[int] = (8, 16, 32)) -> tuple[float, int]:
    """(images/s, batch size) of encode_image alone on ready 224x224 tensors, at the best batch size."""
    import torch

    best = (0.0, 0)
    with torch.inference_mode():
        for bs in batch_sizes:
            x = torch.randn(bs, 3, image_size, image_size)
            model.encode_image(x)  # warm-up
            reps = max(1, 32 // bs)
            t = best_of(lambda x=x, reps=reps: seconds(lambda: [model.encode_image(x) for _ in range(reps)]))  # type: ignore[misc]
            best = max(best, (bs * reps / t, bs))
    return best


def table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    cells = [[str(c) for c in header]] + [[f"{c:.2f}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# -- the scan, end to end ----------------------------------------------------------------------

MODEL = "ViT-B-32"
# The shipped CLIP policies (the opennsfw and hash-list ones would time other models and files).
POLICIES = ("nsfw.yaml", "violence.yaml", "tags.yaml")


def scan_settings(db: Path, precision: str = "fp32", **overrides: Any) -> Any:
    from moderator.settings import SHIPPED_POLICIES, Settings

    defaults: dict[str, Any] = {
        "model": MODEL,
        "pretrained": "none",
        "device": "cpu",
        "policies": [SHIPPED_POLICIES / p for p in POLICIES],
    }
    return Settings(database_url=f"sqlite:///{db}", precision=precision, **(defaults | overrides))


def scan_once(target: Path, db: Path, precision: str = "fp32", **overrides: Any) -> tuple[float, Any]:
    """(steady images/s, summary) of one scan into a fresh store.

    Timed from the first stored batch to the end: model loading, policy compiling and
    the pipeline's fill (the first batch's decode before the model has work) are left out.
    """
    from moderator.pipeline import Pipeline
    from moderator.store import Store

    for stale in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        stale.unlink(missing_ok=True)  # a leftover WAL would be replayed into the new store
    settings = scan_settings(db, precision, **overrides)
    store = Store(settings.database_url)
    marks: list[tuple[float, int]] = []

    def progress(n: int) -> None:
        marks.append((time.perf_counter(), n))

    try:
        summary = Pipeline(settings, store).scan_targets([str(target)], progress=progress)
        end = time.perf_counter()
    finally:
        store.close()
    if summary.scanned == 0 or summary.errors:
        raise RuntimeError(f"benchmark scan went wrong: {summary.as_dict()}")
    first_done, first_n = marks[0]
    return (sum(n for _, n in marks) - first_n) / max(end - first_done, 1e-9), summary


def scan_rate(
    target: Path, work: Path, precision: str = "fp32", repeat: int = 2, **overrides: Any
) -> tuple[float, Any]:
    """The best steady rate of `repeat` scans (the least disturbed by other load), and its summary."""
    runs = [scan_once(target, work / "scan.db", precision, **overrides) for _ in range(repeat)]
    return max(runs, key=lambda run: run[0])


def profile(summary: Any) -> dict[str, float]:
    """The pipeline's stage timer folded into the profile columns (seconds of work, summed over threads)."""
    s = summary.stage_seconds
    return {
        "source": s.get("source", 0.0) + s.get("read", 0.0),
        "decode": s.get("decode", 0.0),
        "preprocess": s.get("preprocess", 0.0),
        "model": s.get("embed", 0.0),
        "score": s.get("score", 0.0),
        "database": s.get("lookup", 0.0) + s.get("store", 0.0) + s.get("store_embeddings", 0.0),
        "wall": summary.seconds,
    }


# -- ONNX Runtime and marginal rates ------------------------------------------------------------


def ort_ceiling(tower: Any, image_size: int, batch_sizes: Sequence[int] = (8, 16, 32)) -> tuple[float, int]:
    """(images/s, batch size) of an ONNX Runtime image tower alone on ready 224x224 arrays, at the best batch size."""
    best = (0.0, 0)
    for bs in batch_sizes:
        x = np.random.default_rng(0).standard_normal((bs, 3, image_size, image_size), dtype=np.float32)
        tower(x)  # warm-up
        reps = max(1, 32 // bs)
        t = best_of(lambda x=x, reps=reps: seconds(lambda: [tower(x) for _ in range(reps)]))  # type: ignore[misc]
        best = max(best, (bs * reps / t, bs))
    return best


def scan_seconds(target: Path, db: Path, precision: str = "fp32", **overrides: Any) -> tuple[float, Any]:
    """(wall seconds, summary) of one whole scan into a fresh store, pipeline set-up included."""
    from moderator.pipeline import Pipeline
    from moderator.store import Store

    for stale in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        stale.unlink(missing_ok=True)  # a leftover WAL would be replayed into the new store
    settings = scan_settings(db, precision, **overrides)
    store = Store(settings.database_url)
    try:
        start = time.perf_counter()
        summary = Pipeline(settings, store).scan_targets([str(target)])
        wall = time.perf_counter() - start
    finally:
        store.close()
    if summary.scanned == 0 or summary.errors:
        raise RuntimeError(f"benchmark scan went wrong: {summary.as_dict()}")
    return wall, summary


def marginal_rate(
    small: Path, large: Path, n: int, work: Path, precision: str = "fp32", **overrides: Any
) -> tuple[float, Any]:
    """n / (t(2n) - t(n)): images/s with start-up and pipeline fill cancelled; and the 2n scan's summary.

    `small` holds the first n photos of `large` (2n). Each scan starts from an empty store.
    """
    t_small, _ = scan_seconds(small, work / "scan.db", precision, **overrides)
    t_large, summary = scan_seconds(large, work / "scan.db", precision, **overrides)
    return n / max(t_large - t_small, 1e-9), summary


# -- a store filled as a scan fills it (issue 17: benchmarks/scale.py) ---------------------------

FLAGGED_SHARE = 0.057  # items whose decision is review or block, as in the measurements
DIM = 512  # ViT-B-32


def fill_settings(database_url: str, **overrides: Any) -> Any:
    """ViT-B-32 with random weights (no download) and the three shipped CLIP policies."""
    from moderator.settings import SHIPPED_POLICIES, Settings

    defaults: dict[str, Any] = {
        "model": MODEL,
        "pretrained": "none",
        "device": "cpu",
        "policies": [SHIPPED_POLICIES / p for p in POLICIES],
    }
    return Settings(database_url=database_url, **(defaults | overrides))


def fill_policies(settings: Any) -> Any:
    """The compiled PolicySet a scan with these settings runs (prompt embeddings cached on disk)."""
    from moderator.engine.verdict import compile_policies
    from moderator.policy.load import load_policies

    policy_set = compile_policies(load_policies(settings.policies), settings)
    if policy_set.not_run:
        raise RuntimeError(f"policies not compiled: {policy_set.not_run}")
    return policy_set


def item_sha(index: int) -> str:
    return hashlib.sha256(f"bench-{index}".encode()).hexdigest()


def item_uri(index: int) -> str:
    return f"s3://bench/photos/{index:09d}.jpg"


def embedding_vectors(n: int, dim: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors: `clustered` around 1,000 centres in a 64-dimensional subspace plus noise (closer
    to CLIP embeddings, and what an approximate index's recall is quoted on), or `random` (uniform
    on the sphere: every neighbour about as far as any other, the hardest case for a graph index)."""
    if kind == "random":
        v = rng.normal(size=(n, dim)).astype(np.float32)
    else:
        basis = np.linalg.qr(np.random.default_rng(7).normal(size=(dim, 64)))[0].T  # [64, dim]
        centres = np.random.default_rng(8).normal(size=(1000, 64))
        low = centres[rng.integers(0, 1000, n)] + 0.7 * rng.normal(size=(n, 64))
        v = (low @ basis + 0.08 * rng.normal(size=(n, dim))).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def scan_records(
    policy_set: Any, start: int, count: int, *, seed: int = 0, flagged: float = FLAGGED_SHARE, data: str = "clustered"
) -> Any:
    """(embeddings, ItemRecords) of items start..start+count, as Pipeline._store hands them to the store.

    Unit float16 embeddings (embedding_vectors of `data`), scored by the compiled policies (PolicySet.score: the
    engine's decide path, second opinions and item decision included). Candidates are drawn
    until `flagged` of the items (rounded) are review or block: random embeddings on random
    weights flag about 10% of either kind. The same (seed, start, count) gives the same items in any process.
    """
    from moderator.engine.prepare import PreparedItem
    from moderator.sources import SourceItem
    from moderator.store import ItemRecord
    from moderator.types import Action

    rng = np.random.default_rng([seed, start, count])
    want_flagged = round(count * flagged)
    chosen_flagged: list[Any] = []
    chosen_clean: list[Any] = []
    while len(chosen_flagged) < want_flagged or len(chosen_clean) < count - want_flagged:
        # scored as stored (float16)
        vectors = embedding_vectors(count, DIM, data, rng).astype(np.float16).astype(np.float32)
        candidates = [PreparedItem(item=SourceItem(uri="", read=bytes), embedding=v[None]) for v in vectors]
        policy_set.score(candidates)
        for p in candidates:
            bad = p.decision in (Action.REVIEW, Action.BLOCK)
            (chosen_flagged if bad else chosen_clean).append(p)
    picked = chosen_flagged[:want_flagged] + chosen_clean[: count - want_flagged]
    order = rng.permutation(count)  # flagged items spread through the batch
    embeddings: dict[str, np.ndarray] = {}
    records = []
    for offset, k in enumerate(order):
        p, index = picked[k], start + offset
        sha = item_sha(index)
        embeddings[sha] = p.embedding.astype(np.float16)
        etag = sha[:32]
        key = f"photos/{index:09d}.jpg"
        size = 200_000 + index % 3_000_000
        meta = {
            "bucket": "bench",
            "key": key,
            "etag": etag,
            "version_id": None,
            "size": size,
            "last_modified": "2026-01-01T00:00:00+00:00",
        }
        records.append(
            ItemRecord(
                uri=item_uri(index),
                sha256=sha,
                size=size,
                fingerprint=f"etag:{etag}",
                status=p.status,
                meta=meta,
                decision=p.decision,
                results=p.results,
            )
        )
    return embeddings, records
