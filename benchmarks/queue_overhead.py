"""Queue overhead: the same images scanned in-process and through enqueue + one worker.

    python benchmarks/queue_overhead.py [--images 200] [--model ViT-B-32] [--device auto]

Starts a private redis-server; random weights (pretrained=none), so no download. The model
is loaded before timing on both sides (a warm-up job for the worker): the figures compare the
steady state. Prints both rates and their ratio (goal: queued >= 0.9 x in-process).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def write_images(folder: Path, n: int, seed: int) -> None:
    folder.mkdir(parents=True)
    rng = random.Random(seed)
    for i in range(n):
        img = Image.new("RGB", (640, 480), tuple(rng.randrange(256) for _ in range(3)))  # type: ignore[arg-type]
        for _ in range(20):
            x, y = rng.randrange(600), rng.randrange(440)
            img.paste(tuple(rng.randrange(256) for _ in range(3)), (x, y, x + 40, y + 40))  # type: ignore[arg-type]
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        (folder / f"img{i:04d}.jpg").write_bytes(buf.getvalue())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--model", default="test-tiny")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--queue-batch-size", type=int, default=64, help="item references per queued task")
    args = parser.parse_args()

    from moderator.pipeline import Pipeline
    from moderator.queue import enqueue_targets
    from moderator.settings import SHIPPED_POLICIES, Settings
    from moderator.store import JobState, Store

    tmp = Path(tempfile.mkdtemp(prefix="moderator-bench-"))
    port = free_port()
    redis = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    worker = None
    enqueue_seconds: list[float] = []
    try:
        for name, seed in (("warm_local", 1), ("warm_queue", 2), ("local", 3), ("queued", 4)):
            write_images(tmp / name, 4 if name.startswith("warm") else args.images, seed)
        base = {
            "model": args.model,
            "pretrained": "none",
            "device": args.device,
            "batch_size": args.batch_size,
            "policies": [SHIPPED_POLICIES / "nsfw.yaml", SHIPPED_POLICIES / "tags.yaml"],
            "broker_url": f"redis://127.0.0.1:{port}/0",
            "queue_batch_size": args.queue_batch_size,
            "worker_metrics_port": 0,
        }
        local_settings = Settings(**base, database_url=f"sqlite:///{tmp / 'local.db'}")  # type: ignore[arg-type]
        queue_settings = Settings(**base, database_url=f"sqlite:///{tmp / 'queue.db'}")  # type: ignore[arg-type]

        store = Store(local_settings.database_url)
        pipeline = Pipeline(local_settings, store)
        pipeline.scan_targets([str(tmp / "warm_local")])
        start = time.perf_counter()
        summary = pipeline.scan_targets([str(tmp / "local")])
        local_s = time.perf_counter() - start
        device = pipeline.clip.device if pipeline.clip else "?"
        stages = {k: round(v, 2) for k, v in summary.stage_seconds.items()}
        store.close()

        env = {k: v for k, v in os.environ.items() if not k.startswith("MODERATOR_")}
        for key, value in json.loads(queue_settings.model_dump_json()).items():
            if value is not None and key in base | {"database_url": 1}:
                env[f"MODERATOR_{key.upper()}"] = json.dumps(value) if isinstance(value, list) else str(value)
        env["PYTHONPATH"] = str(REPO)
        log = (tmp / "worker.log").open("wb")
        worker = subprocess.Popen(
            [sys.executable, "-m", "moderator.cli.worker", "--loglevel=WARNING"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        qstore = Store(queue_settings.database_url)

        def run(folder: str) -> float:
            t0 = time.perf_counter()
            job_id = enqueue_targets([str(tmp / folder)], queue_settings)
            enqueue_seconds.append(time.perf_counter() - t0)  # listing + ledger rows + publishing
            while (job := qstore.get_job(job_id)) is None or job.state not in (JobState.DONE, JobState.FAILED):
                if worker.poll() is not None:
                    raise SystemExit(f"worker exited; see {tmp / 'worker.log'}")
                time.sleep(0.05)
            assert job.state is JobState.DONE and job.done == job.total, job
            return time.perf_counter() - t0

        run("warm_queue")  # model loaded in the worker's pool process
        queued_s = run("queued")
        qstore.close()
    finally:
        if worker is not None and worker.poll() is None:
            os.killpg(worker.pid, 15)
            worker.wait(60)
        redis.terminate()
        shutil.rmtree(tmp, ignore_errors=True)

    n = args.images
    local_rate, queued_rate = n / local_s, n / queued_s
    print(
        f"model {args.model} (random weights) on {device}, {n} JPEGs 640x480, "
        f"batch {args.batch_size}, queue batch {args.queue_batch_size}, cpus {os.cpu_count()}"
    )
    print(f"in-process scan : {local_rate:7.1f} img/s ({local_s:.2f} s)  stages {stages}")
    print(f"enqueue + worker: {queued_rate:7.1f} img/s ({queued_s:.2f} s, enqueue to job done)")
    batches = -(-n // args.queue_batch_size)
    print(f"enqueue alone   : {enqueue_seconds[-1] * 1000:7.1f} ms for {batches} batches (ledger + publish)")
    print(f"ratio queued / in-process: {queued_rate / local_rate:.2f} (goal >= 0.90)")


if __name__ == "__main__":
    main()
