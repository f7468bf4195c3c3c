"""POST /api/moderate under load, beside `moderator scan` of the same images, in one run.

The images are archive_speed.py's "cheap" set (half smooth 12 MP, half noisy 1 MP JPEGs, made
in code); ViT-B-32 with random weights (or --model test-tiny), the shipped CLIP policies
(nsfw, violence, tags) on both sides. Prints:
  - the model's own time for one image (encode_images on one ready crop, median of 20), measured just
    before the lowest concurrency;
  - the scan's rate, N / (t(2N) - t(N)) (two whole scans into empty stores: start-up cancels), and its
    steady rate (2N photos, from the first stored batch to the end) measured again just before each
    concurrency level: on a shared machine the load drifts, so each level is set beside its own scan;
  - for each concurrency (1, 8, 32): requests from a real HTTP client (httpx, asyncio) on loopback
    to `moderator serve` in its own process, N then 2N new images (each request's bytes are made
    unique by a few bytes after the JPEG's end, so nothing is answered from the store), rate =
    N / (t(2N) - t(N)) like the scan's, and the 2N run's steady rate (from the first batch's answers to
    the last); median and p95 latency of the 2N run, and the median of each Server-Timing stage;
then the issue's goals: throughput at 32 >= 0.8x the scan's, median latency at 1 <= model + 30 ms.
Asserts nothing.

    python benchmarks/moderate_api.py [--n 64] [--model ViT-B-32] [--concurrency 1,8,32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (  # noqa: E402
    cheap_photo_folder,
    first_n,
    marginal_rate,
    photos,
    scan_rate,
    scan_seconds,
    scan_settings,
)


def model_ms(model: str, sample: bytes, work: Path) -> float:
    """Median milliseconds of encode_images on one image's ready crop (the model alone, warm)."""
    from moderator.engine.prepare import DecodeSpec, decode_one
    from moderator.models.clip import get_clip_model

    settings = scan_settings(work / "m.db", model=model)
    clip = get_clip_model(settings)
    spec = DecodeSpec(settings.max_image_pixels, 1, clip.image_size, keep_frames=False, crop=clip.crop)
    pixels = decode_one(sample, spec).pixels
    clip.encode_images(pixels)
    times = []
    for _ in range(20):
        start = time.perf_counter()
        clip.encode_images(pixels)
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def start_server(work: Path, model: str, port: int, batch_size: int) -> tuple[subprocess.Popen[bytes], str]:
    """`moderator serve` in its own process on a fresh store, and a client token."""
    from sqlalchemy.orm import Session

    from moderator.review import users
    from moderator.store import Store
    from moderator.store.tables import Role

    settings = scan_settings(work / "api.db", model=model)
    store = Store(settings.database_url)
    with Session(store.engine) as db:
        users.add_user(db, "bench", Role.CLIENT, "bench-password-1")
        token = users.create_token(db, "bench")
        db.commit()
    store.close()
    env = {
        **os.environ,
        "MODERATOR_DATABASE_URL": settings.database_url,
        "MODERATOR_MODEL": model,
        "MODERATOR_PRETRAINED": "none",
        "MODERATOR_DEVICE": "cpu",
        "MODERATOR_POLICIES": json.dumps([str(p) for p in settings.policies]),
        "MODERATOR_BATCH_SIZE": str(batch_size),
        "MODERATOR_MODERATE_MAX_PENDING": "10000",
    }
    exe = Path(sys.executable).parent / "moderator"
    log = (work / "serve.log").open("wb")
    proc = subprocess.Popen([str(exe), "serve", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    return proc, token


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unique(data: bytes, tag: str) -> bytes:
    return data + b"\x00bench:" + tag.encode()  # after the JPEG's end: decoded the same, hashed anew


def timing(header: str) -> dict[str, float]:
    out = {}
    for part in header.split(","):
        name, _, rest = part.strip().partition(";")
        for attr in rest.split(";"):
            if attr.startswith("dur="):
                out[name] = float(attr[4:])
            elif attr.startswith('desc="') and name == "batch":
                out["_n"] = float(attr[6:].split()[0])  # requests in the batch
    return out


def steady(stages: list[dict[str, float]]) -> float:
    """Images/s from the end of the first batch to the last answer (as scan_once times the scan)."""
    ordered = sorted(stages, key=lambda s: s["_done"])
    first = int(ordered[0].get("_n", 1))
    if len(ordered) <= first:
        return float("nan")
    return (len(ordered) - first) / max(ordered[-1]["_done"] - ordered[first - 1]["_done"], 1e-9)


async def run(
    url: str, token: str, images: list[bytes], concurrency: int
) -> tuple[float, list[float], list[dict[str, float]]]:
    """(wall seconds, per-request ms, Server-Timing stages) of all `images` at `concurrency`."""
    import httpx

    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    stages: list[dict[str, float]] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "image/jpeg"}
    async with httpx.AsyncClient(limits=limits, timeout=600, headers=headers) as client:

        async def one(data: bytes) -> None:
            async with gate:
                start = time.perf_counter()
                r = await client.post(f"{url}/api/moderate", content=data)
                latencies.append(1000 * (time.perf_counter() - start))
                if r.status_code != 200 or r.json()["cached"]:
                    raise RuntimeError(f"benchmark request went wrong: {r.status_code} {r.text[:300]}")
                stages.append({**timing(r.headers["server-timing"]), "_done": time.perf_counter()})

        start = time.perf_counter()
        await asyncio.gather(*(one(d) for d in images))
        return time.perf_counter() - start, latencies, stages


def p95(values: list[float]) -> float:
    return sorted(values)[max(0, int(round(0.95 * len(values))) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=64, help="N: scans and request runs of N and 2N images")
    parser.add_argument("--model", default="ViT-B-32", help="open_clip model (random weights)")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated client concurrencies")
    parser.add_argument("--batch-size", type=int, default=16, help="MODERATOR_BATCH_SIZE of scan and server")
    args = parser.parse_args()
    n, levels = args.n, [int(c) for c in args.concurrency.split(",")]
    import httpx

    large = cheap_photo_folder(2 * n)
    data = [p.read_bytes() for p in photos(large, 2 * n)]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        small = first_n(large, n, work / f"cheap-{n}")
        # One small scan first: the decode workers start and the policies' text embeddings are cached, so
        # the N scan does not pay for what the 2N scan finds ready (the rate's start-up would not cancel).
        scan_seconds(first_n(large, 4, work / "warm"), work / "warm.db", model=args.model)
        scan, _ = marginal_rate(small, large, n, work, model=args.model, batch_size=args.batch_size)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc, token = start_server(work, args.model, port, args.batch_size)
        try:
            deadline = time.monotonic() + 300
            while True:
                try:
                    if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"the server did not start: {(work / 'serve.log').read_text()[-2000:]}")
                time.sleep(0.2)
            warm = [unique(d, f"warm-{i}") for i, d in enumerate(data[:4])]
            asyncio.run(run(url, token, warm, 4))  # waits for the models to load; not timed
            results = {}
            own_ms = float("nan")
            beside: dict[int, float] = {}  # the scan's steady rate just before each level: the load drifts
            for c in levels:
                beside[c], _ = scan_rate(large, work, repeat=1, model=args.model, batch_size=args.batch_size)
                if c == min(levels):  # the model alone on one 1 MP photo, here too: beside the run it is set against
                    own_ms = model_ms(args.model, data[1], work)
                t_n, _, _ = asyncio.run(run(url, token, [unique(d, f"{c}-a-{i}") for i, d in enumerate(data[:n])], c))
                batch = [unique(d, f"{c}-b-{i}") for i, d in enumerate(data)]
                t_2n, lat, stages = asyncio.run(run(url, token, batch, c))
                results[c] = (n / max(t_2n - t_n, 1e-9), lat, stages, steady(stages))
        finally:
            proc.terminate()
            proc.wait(30)

    print(
        f"{args.model}, random weights, CPU ({os.cpu_count()} CPUs); images: the cheap set (half smooth 12 MP, half"
        f" 1 MP JPEGs); N={n}, 2N={2 * n}; batch size {args.batch_size}; moderate window 5 ms (default)"
    )
    print(f"model alone, one image (encode_images, median of 20):  {own_ms:7.1f} ms")
    print(f"moderator scan, N / (t(2N) - t(N)):                    {scan:7.2f} img/s")
    print(
        "moderator scan, steady (2N, first stored batch to end), run just before each level: "
        + ", ".join(f"{beside[c]:.2f}" for c in levels)
        + " img/s"
    )
    print("\nPOST /api/moderate, httpx on loopback to `moderator serve` (its own process):")
    print("  conc  N/(t(2N)-t(N)) /scan   steady /scan   median ms   p95 ms   median of (latency - embed) ms")
    for c, (rate, lat, stages, rate_steady) in results.items():
        over = statistics.median(ms - st.get("embed", 0.0) for ms, st in zip(lat, stages, strict=True))
        print(
            f"  {c:>4}  {rate:9.2f} {rate / scan:9.2f}  {rate_steady:6.2f} {rate_steady / beside[c]:5.2f}"
            f" {statistics.median(lat):10.1f} {p95(lat):8.1f}   {over:8.1f}"
        )
    print("\nmedian Server-Timing stages (ms; the batch's stages, shared by the requests in it):")
    for c, (_, _, stages, _) in results.items():
        names = list(dict.fromkeys(k for s in stages for k in s if not k.startswith("_")))
        print(f"  {c:>4}  " + " ".join(f"{k}={statistics.median(s.get(k, 0.0) for s in stages):.0f}" for k in names))
    top = results[max(levels)]
    one = results.get(1)
    print("\ngoals (issue 14):")
    print(
        f"  throughput at concurrency {max(levels)} / scan = {top[0] / scan:.2f} (N/(t(2N)-t(N)) both),"
        f" {top[3] / beside[max(levels)]:.2f} (steady, against the scan run just before it) (>= 0.8)"
    )
    if one is not None:
        median = statistics.median(one[1])
        print(f"  median latency at concurrency 1 = {median:.1f} ms; model alone + 30 ms = {own_ms + 30:.1f} ms")
        print("  (the requests' own embed stage is the model's time in the same run: see latency - embed above)")


if __name__ == "__main__":
    main()
