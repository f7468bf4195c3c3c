"""`moderator scan` images/s beside a naive loop, in the same run (issue 3's benchmark).

ViT-B-32 with random weights (nothing is downloaded), on this machine's CPU, over 200
JPEGs (half 12 MP, half 1 MP) made in code. The scan is timed in the steady state
(from the first stored batch to the end, best of two scans), the naive loop (open_clip preprocess + encode_image,
one image at a time) over a 40-image sample of the same mix. Prints figures; asserts nothing.

    python benchmarks/scan_speed.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import MODEL, naive_rate, photo_folder, photos, scan_rate  # noqa: E402

N = 100  # 2N images
NAIVE_SAMPLE = 40


def main() -> None:
    import torch

    folder = photo_folder(2 * N)
    with tempfile.TemporaryDirectory() as tmp:
        scan, _ = scan_rate(folder, Path(tmp))
    naive = naive_rate(MODEL, photos(folder, NAIVE_SAMPLE))
    print(f"{MODEL}, random weights, {2 * N} JPEGs (half 12 MP, half 1 MP), torch threads {torch.get_num_threads()}")
    print(f"naive loop (open_clip preprocess + encode_image, one at a time): {naive:6.2f} images/s")
    print(f"moderator scan (steady state, fp32):                             {scan:6.2f} images/s")
    print(f"ratio scan / naive:                                              {scan / naive:6.2f}x")


if __name__ == "__main__":
    main()
