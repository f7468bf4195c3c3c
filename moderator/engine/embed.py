"""A few local image files -> CLIP embeddings (eval, probe training, policy test, search by image).

Embeddings already stored for the same bytes and model are reused; new ones are
stored (float16, like the pipeline's) when a store is given, and every embedding
is used exactly as stored, so a later re-score gives the same answer. A file that
cannot be read or decoded gets an error message instead of an embedding.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from moderator.decode import DecodeError, decode_image
from moderator.models.clip import get_clip_model, model_id_for
from moderator.settings import Settings

if TYPE_CHECKING:
    from PIL import Image

    from moderator.store import Store


@dataclass
class EmbeddedFile:
    path: Path
    sha256: str | None = None
    data: bytes | None = None  # kept only with keep_images
    frames: list[Image.Image] | None = None  # kept only with keep_images
    embedding: np.ndarray | None = None  # float32 [frames, d]
    error: str | None = None


def embed_files(
    paths: Sequence[Path],
    settings: Settings,
    *,
    store: Store | None = None,
    save: bool = True,
    keep_images: bool = False,
) -> list[EmbeddedFile]:
    """One EmbeddedFile per path, in order. The model is loaded only if something needs encoding.

    With a store, stored embeddings are reused, and new ones saved unless `save` is False.
    """
    files = [EmbeddedFile(Path(p)) for p in paths]
    model_id = model_id_for(settings)
    size = settings.batch_size
    with ThreadPoolExecutor(max(2, settings.decode_workers or 4)) as pool:
        for start in range(0, len(files), size):
            chunk = files[start : start + size]
            list(pool.map(_read, chunk))
            stored = store.load_embeddings([f.sha256 for f in chunk if f.sha256], model_id) if store else {}
            for f in chunk:
                if f.sha256 in stored:
                    f.embedding = stored[f.sha256].astype(np.float32)
            todo = [f for f in chunk if f.error is None and (f.embedding is None or keep_images)]
            # Decoded at the model's input size (JPEG draft mode); the model loads only when needed.
            needs_model = any(f.embedding is None for f in todo)
            draft = get_clip_model(settings).image_size if needs_model else 256
            list(pool.map(partial(_decode, settings=settings, draft_size=draft), todo))
            _encode([f for f in todo if f.error is None and f.embedding is None], settings, store if save else None)
            if not keep_images:
                for f in chunk:
                    f.data, f.frames = None, None
    return files


def _read(f: EmbeddedFile) -> None:
    try:
        f.data = f.path.read_bytes()
    except OSError as exc:
        f.error = f"cannot read: {exc.strerror or exc}"
        return
    f.sha256 = hashlib.sha256(f.data).hexdigest()


def _decode(f: EmbeddedFile, settings: Settings, draft_size: int) -> None:
    try:
        decoded = decode_image(
            f.data or b"", max_pixels=settings.max_image_pixels, max_frames=settings.max_frames, draft_size=draft_size
        )
    except DecodeError as exc:
        f.error = str(exc)
        return
    f.frames = decoded.frames


def _encode(files: list[EmbeddedFile], settings: Settings, store: Store | None) -> None:
    if not files:
        return
    import torch

    clip = get_clip_model(settings)
    pixels = [clip.preprocess_batch(f.frames or []) for f in files]
    flat = torch.cat(pixels)
    parts = [clip.encode_images(flat[i : i + settings.batch_size]) for i in range(0, len(flat), settings.batch_size)]
    features = np.concatenate(parts).astype(np.float16)
    new: dict[str, np.ndarray] = {}
    row = 0
    for f, p in zip(files, pixels, strict=True):
        stored = features[row : row + len(p)]
        row += len(p)
        f.embedding = stored.astype(np.float32)
        if f.sha256:
            new[f.sha256] = stored
    if store is not None:
        store.save_embeddings(new, clip.model_id)
