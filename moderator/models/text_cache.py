"""Cache of prompt text embeddings, per (prompt content key, model id).

Encoding a policy's prompts (every template x prompt) is the one model call a
re-score needs; it is kept in memory for the process and in an .npz file under
the user cache dir, so a CLI run or a fresh worker does not encode them again.
Files are written atomically and checked on read (same texts, finite values);
anything odd is recomputed, never trusted.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from platformdirs import user_cache_dir


def default_cache_dir() -> Path:
    return Path(user_cache_dir("moderator", appauthor=False)) / "text-embeddings"


class TextEmbeddingCache:
    def __init__(self, directory: Path | str | None = None) -> None:
        self._directory = Path(directory) if directory is not None else None
        self._memory: dict[tuple[str, str], np.ndarray] = {}

    @property
    def directory(self) -> Path:
        # Resolved late, so a test that points XDG_CACHE_HOME elsewhere is honoured.
        return self._directory if self._directory is not None else default_cache_dir()

    def get(
        self, key: str, model_id: str, texts: Sequence[str], encode: Callable[[list[str]], np.ndarray]
    ) -> np.ndarray:
        """Embeddings [len(texts), d] (float32) of `texts`, from memory, disk, or `encode`."""
        texts = list(texts)
        mem_key = (key, model_id)
        cached = self._memory.get(mem_key)
        if cached is None:
            cached = self._read(key, model_id, texts)
        if cached is None:
            cached = np.array(encode(texts), dtype=np.float32)  # a copy: frozen below
            if cached.ndim != 2 or cached.shape[0] != len(texts):
                raise ValueError(f"encode_text returned shape {cached.shape} for {len(texts)} texts")
            self._write(key, model_id, texts, cached)
        cached.setflags(write=False)
        self._memory[mem_key] = cached
        return cached

    def clear_memory(self) -> None:
        self._memory.clear()

    def path_for(self, key: str, model_id: str) -> Path:
        # model ids may be paths or contain slashes: hash them into a file name.
        digest = hashlib.sha256(f"{model_id}\0{key}".encode()).hexdigest()[:32]
        return self.directory / f"{digest}.npz"

    def _read(self, key: str, model_id: str, texts: list[str]) -> np.ndarray | None:
        path = self.path_for(key, model_id)
        try:
            with np.load(path, allow_pickle=False) as npz:
                stored_texts = [str(t) for t in npz["texts"]]
                stored_model = str(npz["model_id"])
                emb = np.asarray(npz["embeddings"], dtype=np.float32)
        except (OSError, KeyError, ValueError):
            return None  # missing or unreadable: recompute
        if stored_texts != texts or stored_model != model_id or emb.shape[0] != len(texts):
            return None
        if emb.ndim != 2 or not np.isfinite(emb).all():
            return None
        return emb

    def _write(self, key: str, model_id: str, texts: list[str], emb: np.ndarray) -> None:
        path = self.path_for(key, model_id)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    np.savez(f, texts=np.array(texts, dtype=str), model_id=np.array(model_id), embeddings=emb)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError:
            pass  # a read-only or full cache dir only costs a re-encode next time


_default: TextEmbeddingCache | None = None


def default_cache() -> TextEmbeddingCache:
    global _default
    if _default is None:
        _default = TextEmbeddingCache()
    return _default
