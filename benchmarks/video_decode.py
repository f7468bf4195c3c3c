"""Decode time per video against per JPEG: the decode stage alone, in the decode worker processes.

A few hundred short clips (default 200: 2 s at 24 fps, 640x360, H.264 MP4 and VP8 WebM, half each,
built in code with PyAV), each sampled as the scan samples it (the first frame + MODERATOR_VIDEO_FRAMES),
and the same number of JPEG frames (640x360), all cut to ViT-B-32's 224x224 crops and the 256-side
frames image scorers keep, by decode_frames in a DecodePool with the scan's worker count, in batches of
16. Best of 3; prints seconds per file and per sampled frame for each.

    python benchmarks/video_decode.py [--n 200] [--workers N]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

BATCH = 16
W, H, FPS, SECONDS = 640, 360, 24, 2


def clip(i: int, kind: str) -> bytes:
    from tests.videos import video

    rng = np.random.default_rng(i)
    base = rng.integers(0, 256, (H // 40, W // 40, 3), dtype=np.uint8)
    frames = []
    for t in range(FPS * SECONDS):  # a slowly moving pattern: real motion for the encoder
        shifted = np.roll(base, t // 6, axis=1)
        frames.append(np.ascontiguousarray(np.repeat(np.repeat(shifted, 40, 0), 40, 1)))
    return video(kind, frames=frames, fps=FPS, size=(W, H))


def jpeg(i: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(10_000 + i)
    a = np.repeat(np.repeat(rng.integers(0, 256, (H // 40, W // 40, 3), dtype=np.uint8), 40, 0), 40, 1)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def request() -> Any:
    from moderator.decode import CropSpec, FrameRequest
    from moderator.decode.video import VideoLimits
    from moderator.settings import Settings

    d = Settings.model_fields
    return FrameRequest(
        max_pixels=d["max_image_pixels"].default,
        max_frames=d["max_frames"].default,
        draft_size=256,
        crop=CropSpec(224, 224, "short_side", short_side=224),
        keep_side=256,
        video=VideoLimits(d["video_frames"].default, d["video_max_seconds"].default, d["video_max_frames"].default),
    )


def run(pool: Any, files: list[bytes], req: Any) -> tuple[float, int]:
    from moderator.decode import DecodeError, decode_frames

    start = time.perf_counter()
    frames = 0
    for i in range(0, len(files), BATCH):
        chunk = files[i : i + BATCH]
        for out in pool.map(decode_frames, chunk, [req] * len(chunk)):
            if isinstance(out, DecodeError):
                raise SystemExit(f"decode failed: {out.reason}: {out}")
            frames += len(out.crops)
    return time.perf_counter() - start, frames


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--workers", type=int, default=max(2, os.cpu_count() or 1))
    args = parser.parse_args()
    from moderator.decode import DecodePool

    start = time.perf_counter()
    videos = [clip(i, "mp4" if i % 2 == 0 else "webm") for i in range(args.n)]
    jpegs = [jpeg(i) for i in range(args.n)]
    built = time.perf_counter() - start
    req = request()
    mb = sum(map(len, videos)) / 1e6
    print(f"{args.n} clips ({W}x{H}, {SECONDS} s at {FPS} fps, H.264 MP4 + VP8 WebM, {mb:.1f} MB) and {args.n} JPEGs")
    print(f"built in {built:.1f} s; decode workers: {args.workers}; sampled frames per clip: 1 + {req.video.frames}")
    with DecodePool(args.workers, memory_mb=2048, timeout_s=60) as pool:
        run(pool, videos[:BATCH] + jpegs[:BATCH], req)  # workers started and warm
        for name, files in (("video", videos), ("jpeg", jpegs)):
            best, frames = min(run(pool, files, req) for _ in range(3))
            print(
                f"{name:5s}: {best:.2f} s for {len(files)} files ({args.workers} workers):"
                f" {best / len(files) * 1000:.1f} ms per file, {best / frames * 1000:.2f} ms per sampled frame"
                f" ({frames} frames)"
            )
    with DecodePool(1, memory_mb=2048, timeout_s=60) as one:  # one file at a time: the latency of one file
        run(one, videos[:4] + jpegs[:4], req)
        for name, files in (("video", videos[:32]), ("jpeg", jpegs[:32])):
            best, _ = min(run(one, files, req) for _ in range(3))
            print(f"{name:5s}: {best / len(files) * 1000:.1f} ms per file with 1 worker ({len(files)} files)")


if __name__ == "__main__":
    main()
