"""Computing hashes of images and comparing them: PDQ (Meta's pdqhash), pHash, MD5 and SHA-256.

PDQ is computed by `pdqhash`, the C++ PDQ hasher that threatexchange's PdqSignal uses, on the
frame as decoded (RGB); the hex form is the one threatexchange writes (bits, most significant
first). PDQ also gives a quality in [0, 100]: below the cut-off (threatexchange's
PdqSignal.QUALITY_THRESHOLD, 50) a hash is too unreliable to match on (flat, near-blank images)
and is not matched.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from moderator.hashlists.entries import HashKind

PHASH_BITS = 64  # imagehash.phash with hash_size=8
PDQ_MIN_QUALITY = 50  # threatexchange's PdqSignal.QUALITY_THRESHOLD (a test checks they agree)


@dataclass(frozen=True)
class Pdq:
    hex: str  # 64 hex digits
    quality: int  # 0..100


def pdq_of(image: Image.Image) -> Pdq:
    import pdqhash  # C++ extension: loaded when a PDQ is first wanted

    rgb = image if image.mode == "RGB" else image.convert("RGB")
    bits, quality = pdqhash.compute(np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8)))
    return Pdq(np.packbits(np.asarray(bits, dtype=np.uint8)).tobytes().hex(), int(quality))


def phash_hex(image: Image.Image) -> str:
    import imagehash

    return str(imagehash.phash(image))


def exact_hex(kind: HashKind, data: bytes) -> str:
    if kind is HashKind.MD5:
        return hashlib.md5(data, usedforsecurity=False).hexdigest()
    if kind is HashKind.SHA256:
        return hashlib.sha256(data).hexdigest()
    raise ValueError(f"{kind} is not an exact hash")


# --- comparing -------------------------------------------------------------------------


def codes(hexes: Iterable[str], kind: HashKind) -> np.ndarray:
    """Hashes as packed bits, uint8 [N, bytes] (the form faiss binary indexes take)."""
    width = {HashKind.PDQ: 32, HashKind.PHASH: 8}[kind]
    joined = "".join(hexes)
    return np.frombuffer(bytes.fromhex(joined), dtype=np.uint8).reshape(-1, width).copy()


def hamming_codes(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise Hamming distances [len(a), len(b)] between packed hashes uint8 [N, bytes]."""
    xa = a.view(np.uint64) if a.shape[1] % 8 == 0 else a
    xb = b.view(np.uint64) if b.shape[1] % 8 == 0 else b
    return np.bitwise_count(xa[:, None, :] ^ xb[None, :, :]).sum(axis=2, dtype=np.int64)


def phash_array(hexes: Iterable[str]) -> np.ndarray:
    return np.array([int(h, 16) for h in hexes], dtype=np.uint64)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise Hamming distances [len(a), len(b)] between 64-bit hashes."""
    return np.bitwise_count(a[:, None] ^ b[None, :]).astype(np.int64)
