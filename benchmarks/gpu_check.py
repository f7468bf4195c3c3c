"""GPU check: the CUDA path, half precision and throughput, on a machine with a GPU.

    python benchmarks/gpu_check.py [--images 600] [--batch-sizes 32,64,128]

ViT-B-32 with random weights (pretrained=none): what is measured is speed and the
fp16-vs-fp32 agreement of embeddings, never what a score says. Prints:
- the model-only ceiling: fp16 encode_image on ready 224x224 tensors, per batch size;
- the cosine of fp16 to fp32 image embeddings on real decoded photos;
- `moderator scan` end to end on CUDA (fp16, the default there) over the 12 MP / 1 MP mix,
  with the pipeline's stage profile, and decode-only throughput of the same photos with
  the same threads, to say whether decoding or the model bounds the scan.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import CACHE, LARGE, SMALL, make_photo, profile, scan_once, table  # noqa: E402


def _write(args: tuple[int, Path]) -> None:
    i, folder = args
    (folder / f"{i:04d}.jpg").write_bytes(make_photo(i, LARGE if i % 2 == 0 else SMALL))


def photo_folder_parallel(n: int) -> Path:
    """The same photos as benchmarks.common.photo_folder, made on all cores."""
    folder = CACHE / f"photos-{n}-v1"
    complete = folder.with_suffix(".complete")
    if not complete.exists():
        folder.mkdir(parents=True, exist_ok=True)
        with ProcessPoolExecutor() as pool:
            list(pool.map(_write, [(i, folder) for i in range(n)]))
        complete.write_text("")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--batch-sizes", default="32,64,128")
    parser.add_argument("--device", default="cuda", help="cpu only for a dry run of this script")
    parser.add_argument("--model", default="ViT-B-32")
    args = parser.parse_args()

    import torch

    from moderator.decode import decode_image
    from moderator.models.clip import get_clip_model
    from moderator.settings import Settings

    dev = args.device
    if dev == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to check here")
        return
    name = torch.cuda.get_device_name(0) if dev == "cuda" else "cpu (dry run)"
    print(f"device: {name}, torch {torch.__version__}, {os.cpu_count()} CPU cores")
    start = time.perf_counter()
    folder = photo_folder_parallel(args.images)
    print(f"{args.images} photos (half 12 MP, half 1 MP) ready in {time.perf_counter() - start:.1f} s")

    fp16 = get_clip_model(Settings(model=args.model, pretrained="none", device=dev))
    fp32 = get_clip_model(Settings(model=args.model, pretrained="none", device=dev, precision="fp32"))
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    print(f"precision on CUDA by default: {fp16.precision.value}")

    rows = []
    with torch.inference_mode():
        for bs in (32, 64, 128, 256, 512):
            x = torch.randn(bs, 3, 224, 224, device=dev, dtype=fp16.dtype)
            fp16.model.encode_image(x)
            sync()
            reps = 20 if dev == "cuda" else 1
            t = time.perf_counter()
            for _ in range(reps):
                fp16.model.encode_image(x)
            sync()
            rows.append((bs, bs * reps / (time.perf_counter() - t)))
    print("\nmodel-only ceiling, fp16 encode_image on ready tensors")
    print(table([(bs, rate) for bs, rate in rows], ["batch", "images/s"]))

    paths = sorted(folder.glob("*.jpg"))
    frames = [decode_image(p.read_bytes(), max_pixels=89_478_485, draft_size=224).frames[0] for p in paths[:64]]
    pixels = fp16.preprocess_batch(frames)
    cos = (fp16.encode_images(pixels) * fp32.encode_images(pixels)).sum(axis=1)
    label = f"{fp16.precision.value} vs fp32 image embeddings on 64 photos"
    print(f"\n{label}: min cosine {cos.min():.5f}, mean {cos.mean():.5f}")

    workers = 2 * (os.cpu_count() or 1)

    def decode_one(p: Path) -> None:
        decode_image(p.read_bytes(), max_pixels=89_478_485, draft_size=224)

    with ThreadPoolExecutor(workers) as pool:
        t = time.perf_counter()
        list(pool.map(decode_one, paths))
        decode_rate = len(paths) / (time.perf_counter() - t)
    print(f"decode only (draft to 224, {workers} threads): {decode_rate:.1f} images/s")

    work = Path(tempfile.mkdtemp(prefix="moderator-gpu-"))
    results = []
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        overrides = {"device": dev, "batch_size": bs, "decode_workers": workers, "model": args.model}
        scan_once(folder, work / "warm.db", "auto", **overrides)  # CUDA kernels and caches warm
        steady, summary = scan_once(folder, work / f"scan{bs}.db", "auto", **overrides)
        prof = profile(summary)
        whole = summary.scanned / summary.seconds
        results.append((bs, steady, whole, prof["decode"], prof["preprocess"], prof["model"], prof["database"]))
    print("\n`moderator scan` on CUDA fp16 (steady: from the first stored batch; whole: the entire scan)")
    header = ["batch", "steady img/s", "whole img/s", "decode s", "preprocess s", "model s", "database s"]
    print(table(results, header))
    best = max(r[1] for r in results)
    ceiling = max(rate for _, rate in rows)
    if best >= 0.8 * decode_rate:
        bound = "decoding (the scan runs near decode-only speed)"
    elif best >= 0.8 * ceiling:
        bound = "the model"
    else:
        bound = "neither alone: pipeline overhead between stages"
    print(
        f"\nscan {best:.1f} images/s vs decode-only {decode_rate:.1f} vs model ceiling {ceiling:.1f}: bound by {bound}"
    )
    print(f"total {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
