"""Batch-tagging speed on this machine: baselines, ONNX Runtime, and the scan end to end, fp32 and int8.

All in one run, ViT-B-32 with random weights, JPEGs made in code, on two photo sets of 2N:
"cheap" (half smooth 12 MP, half 1 MP: cheap to decode) and "mix" (half noisy 12 MP, half
1 MP: the decoding is expensive). Every scan rate is N / (t(2N) - t(N)): two whole scans of
N and 2N photos into empty stores, so model loading, policy compiling and the pipeline's
fill cancel. Prints:
  (a) naive loop: open_clip preprocess + encode_image, one image at a time (40-image sample);
  (b) PyTorch fp32 model-only: encode_image on ready 224x224 tensors at the best batch size;
  (c) ONNX Runtime model-only, fp32 and int8 (the graphs the scan uses);
  (d) `moderator scan` end to end: PyTorch fp32 (the old path), ONNX fp32 and int8 (the CPU default),
      the shipped policies (open_nsfw and hash lists too), and fp32 from a tar.gz;
then the ratios against the issue's goals, the minimum cosine of ONNX fp32 and int8 image
embeddings to PyTorch fp32, a never-seen query's text latency on each backend, and where the
time goes (the pipeline's stage timer: seconds of work summed over threads, so decode can
exceed the wall time). Asserts nothing.

    python benchmarks/archive_speed.py [--n 192]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (  # noqa: E402
    MODEL,
    cheap_photo_folder,
    first_n,
    marginal_rate,
    model_ceiling,
    naive_rate,
    ort_ceiling,
    photo_folder,
    photos,
    profile,
    scan_settings,
    table,
    tar_gz,
)
from benchmarks.decode_isolation import decode_in_threads  # noqa: E402

NAIVE_SAMPLE = 40
COSINE_SAMPLE = 64


def min_cosines(folder: Path, work: Path) -> tuple[float, float]:
    """Minimum cosine of ONNX fp32 and ONNX int8 image embeddings to PyTorch fp32, over benchmark photos."""
    from moderator.decode import decode_image
    from moderator.models.clip import get_clip_model

    torch_fp32 = get_clip_model(scan_settings(work / "x.db", "fp32", backend="torch"))
    onnx_fp32 = get_clip_model(scan_settings(work / "x.db", "fp32"))
    onnx_int8 = get_clip_model(scan_settings(work / "x.db", "int8"))
    frames = []
    for path in photos(folder, COSINE_SAMPLE):
        frames += decode_image(path.read_bytes(), max_pixels=10**9, draft_size=torch_fp32.image_size).frames
    pixels = torch_fp32.preprocess_batch(frames)
    reference = torch_fp32.encode_images(pixels)
    return tuple(  # type: ignore[return-value]
        float((reference * m.encode_images(pixels)).sum(axis=1).min()) for m in (onnx_fp32, onnx_int8)
    )


def text_latency_ms(backend: str, work: Path, queries: int = 20) -> float:
    """Median milliseconds to encode one search query never seen before (the model already loaded)."""
    from moderator.models.clip import get_clip_model

    model = get_clip_model(scan_settings(work / "x.db", "fp32", backend=backend))
    model.encode_text(["warm-up"])
    times = []
    for i in range(queries):
        start = time.perf_counter()
        model.encode_text([f"a photo of query number {i} about {backend} {time.time_ns()}"])
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=192, help="N: scans of N and 2N photos per photo set")
    args = parser.parse_args()
    n = args.n

    import onnxruntime
    import torch

    from moderator.models.clip import get_clip_model
    from moderator.settings import SHIPPED_POLICIES

    sets = {"cheap": cheap_photo_folder(2 * n), "mix": photo_folder(2 * n)}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        halves = {name: first_n(folder, n, work / f"{name}-{n}") for name, folder in sets.items()}
        naive = naive_rate(MODEL, photos(sets["mix"], NAIVE_SAMPLE))
        torch_fp32 = get_clip_model(scan_settings(work / "x.db", "fp32", backend="torch"))
        ceiling, best_bs = model_ceiling(torch_fp32.model, torch_fp32.image_size)
        onnx = {p: get_clip_model(scan_settings(work / "x.db", p)) for p in ("fp32", "int8")}
        ort = {p: ort_ceiling(m.onnx.image, m.image_size) for p, m in onnx.items() if m.onnx is not None}

        scans: dict[tuple[str, str], tuple[float, Any]] = {}

        def scan(label: str, photo_set: str, precision: str = "fp32", **overrides: Any) -> None:
            small, large = halves[photo_set], sets[photo_set]
            scans[label, photo_set] = marginal_rate(small, large, n, work, precision, **overrides)

        for photo_set in sets:
            scan("torch fp32", photo_set, backend="torch")
            scan("onnx fp32", photo_set)
            scan("onnx int8", photo_set, "int8")
        with decode_in_threads():  # issue 13: what decoding in worker processes costs against threads
            for photo_set in sets:
                scan("onnx fp32, decode in threads", photo_set)
        scan("shipped policies, onnx fp32", "cheap", policies=[SHIPPED_POLICIES])
        halves["cheap.tar.gz"] = tar_gz(photos(halves["cheap"]), work / "cheap-n.tar.gz")
        sets["cheap.tar.gz"] = tar_gz(photos(sets["cheap"]), work / "cheap-2n.tar.gz")
        scan("onnx fp32", "cheap.tar.gz")
        cosine_fp32, cosine_int8 = min_cosines(sets["cheap"], work)
        latency = {backend: text_latency_ms(backend, work) for backend in ("torch", "onnx")}

    settings = scan_settings(Path("x.db"))
    print(
        f"{MODEL}, random weights; N={n}, 2N={2 * n} JPEGs; rate = N / (t(2N) - t(N)); {os.cpu_count()} CPUs; "
        f"torch threads {torch.get_num_threads()}, onnxruntime {onnxruntime.__version__} intra-op threads "
        f"{settings.onnx_threads or 'auto'}, decode workers {settings.decode_workers or 'auto'}"
    )
    print("photo sets: cheap = half smooth 12 MP + half 1 MP; mix = half noisy 12 MP + half 1 MP")
    print(f"(a) naive loop, one image at a time (mix):    {naive:7.2f} img/s")
    print(f"(b) PyTorch fp32 model-only (batch {best_bs:>2}):      {ceiling:7.2f} img/s")
    for precision, (rate, bs) in ort.items():
        print(
            f"(c) ONNX Runtime {precision} model-only (batch {bs:>2}): {rate:7.2f} img/s  ({rate / ceiling:.2f}x (b))"
        )
    rows = []
    for (label, photo_set), (rate, _) in scans.items():
        ort_rate = ort.get("int8" if "int8" in label else "fp32", (float("nan"), 0))[0]
        rows.append([f"{label} ({photo_set})", rate, rate / ceiling, rate / ort_rate, rate / naive])
    print("\n(d) moderator scan, end to end:")
    print(table(rows, ["scan (photo set)", "img/s", "/(b) PyTorch model", "/(c) ORT model", "/(a) naive"]))
    fp32, int8 = scans["onnx fp32", "cheap"][0], scans["onnx int8", "cheap"][0]
    shipped = scans["shipped policies, onnx fp32", "cheap"][0]
    print("\ngoals (issue 15), on the cheap set:")
    print(f"  e2e fp32 / PyTorch model-only = {fp32 / ceiling:.2f} (>= 2)")
    if "fp32" in ort:
        print(f"  e2e fp32 / ORT fp32 model-only = {fp32 / ort['fp32'][0]:.2f} (>= 0.85)")
    print(f"  e2e int8 / PyTorch model-only = {int8 / ceiling:.2f} (>= 4)")
    print(f"  shipped policies (open_nsfw too) / CLIP-only = {shipped / fp32:.2f} (>= 0.8)")
    print("decode in worker processes (memory cap, time limit) against threads, onnx fp32 (issue 13: >= 0.95):")
    for photo_set in ("cheap", "mix"):
        isolated, threaded = scans["onnx fp32", photo_set][0], scans["onnx fp32, decode in threads", photo_set][0]
        print(f"  {photo_set}: {isolated:.2f} / {threaded:.2f} img/s = {isolated / threaded:.3f}")
    print(
        f"min cosine to PyTorch fp32 image embeddings ({COSINE_SAMPLE} photos): ONNX fp32 {cosine_fp32:.7f}, ", end=""
    )
    print(f"ONNX int8 {cosine_int8:.5f}")
    print(f"never-seen query, text tower: PyTorch {latency['torch']:.1f} ms, ONNX Runtime {latency['onnx']:.1f} ms")
    print("\nwhere the time goes (the 2N scans; seconds of work, summed over threads):")
    columns = ["scan", "source", "decode", "preprocess", "model", "score", "database", "wall"]
    print(
        table([[f"{label} ({s})", *profile(summary).values()] for (label, s), (_, summary) in scans.items()], columns)
    )


if __name__ == "__main__":
    main()
