"""Batch-tagging speed on this machine: baselines, the scan from a folder and a tar.gz, fp32 and int8.

All in one run, ViT-B-32 with random weights, 200 JPEGs (half 12 MP, half 1 MP) made in code:
  (a) naive loop: open_clip preprocess + encode_image, one image at a time (40-image sample);
  (b) model-only ceiling: fp32 encode_image on ready 224x224 tensors at the best batch size;
  (c) the scan end to end, fp32 (timed from the first stored batch: start-up left out; best of 2);
  (d) the same with MODERATOR_PRECISION=int8;
then the ratios (c)/(b), (d)/(b), (c)/(a), the minimum cosine of int8 to fp32 embeddings, and
where the time goes (the pipeline's stage timer: seconds of work summed over threads, so
decode can exceed the wall time). Prints figures; asserts nothing.

    python benchmarks/archive_speed.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (  # noqa: E402
    MODEL,
    model_ceiling,
    naive_rate,
    photo_folder,
    photos,
    profile,
    scan_rate,
    scan_settings,
    table,
    tar_gz,
)

N = 100
NAIVE_SAMPLE = 40


def int8_cosine(work: Path) -> float:
    """Minimum cosine between int8 and fp32 image embeddings of the benchmark photos (first 32)."""
    from PIL import Image

    from moderator.models.clip import get_clip_model

    fp32 = get_clip_model(scan_settings(work / "x.db", "fp32"))
    int8 = get_clip_model(scan_settings(work / "x.db", "int8"))
    images = []
    for path in photos(photo_folder(2 * N), 32):
        with Image.open(path) as img:
            img.draft("RGB", (fp32.image_size, fp32.image_size))
            images.append(img.convert("RGB"))
    pixels = fp32.preprocess_batch(images)
    return float((fp32.encode_images(pixels) * int8.encode_images(pixels)).sum(axis=1).min())


def main() -> None:
    import torch

    from moderator.models.clip import get_clip_model

    folder = photo_folder(2 * N)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        targets = {"folder": folder, "tar.gz": tar_gz(photos(folder), work / "photos.tar.gz")}
        naive = naive_rate(MODEL, photos(folder, NAIVE_SAMPLE))
        fp32 = get_clip_model(scan_settings(work / "x.db", "fp32"))
        ceiling, best_bs = model_ceiling(fp32.model, fp32.image_size)
        ceiling8, best_bs8 = model_ceiling(get_clip_model(scan_settings(work / "x.db", "int8")).model, fp32.image_size)
        rates: dict[tuple[str, str], float] = {}
        profiles = []
        for precision in ("fp32", "int8"):
            for kind, target in targets.items():
                rate, summary = scan_rate(target, work, precision)
                rates[kind, precision] = rate
                profiles.append([f"{kind} {precision}", *profile(summary).values()])
        cosine = int8_cosine(work)

    print(f"{MODEL}, random weights, {2 * N} JPEGs (half 12 MP, half 1 MP); torch threads {torch.get_num_threads()}")
    print(f"(a) naive loop, one image at a time:        {naive:6.2f} images/s")
    print(f"(b) model-only ceiling fp32 (batch {best_bs:>2}):     {ceiling:6.2f} images/s")
    print(f"    model-only int8, for reference (batch {best_bs8:>2}): {ceiling8:6.2f} images/s")
    rows = []
    for kind in targets:
        c, d = rates[kind, "fp32"], rates[kind, "int8"]
        rows.append([kind, c, d, c / ceiling, d / ceiling, c / naive, d / c])
    print(table(rows, ["source", "(c) fp32 img/s", "(d) int8 img/s", "(c)/(b)", "(d)/(b)", "(c)/(a)", "(d)/(c)"]))
    print("goals: (c)/(b) >= 0.85, (d)/(b) >= 1.3")
    print(f"int8 vs fp32 image embeddings: minimum cosine {cosine:.5f} (32 photos)")
    print("\nwhere the time goes (the faster scan of each; seconds of work, summed over threads):")
    print(table(profiles, ["scan", "source", "decode", "preprocess", "model", "score", "database", "wall"]))


if __name__ == "__main__":
    main()
