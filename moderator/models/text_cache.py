"""Cache of prompt text embeddings, per (prompt content key, model id).

Encoding a policy's prompts (every template x prompt) is the one model call a
re-score needs; it is kept in memory for the process and in an .npz file under
the user cache dir, so a CLI run or a fresh worker does not encode them again.
Beside them goes the model's logit scale (`scale`), the other thing a zero-shot
policy takes from the model: with both cached, a re-score of stored embeddings
(`peek`) never loads the model at all.
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
        self._memory: dict[tuple[str, str], tuple[np.ndarray, float | None]] = {}

    @property
    def directory(self) -> Path:
        # Resolved late, so a test that points XDG_CACHE_HOME elsewhere is honoured.
        return self._directory if self._directory is not None else default_cache_dir()

    def get(
        self,
        key: str,
        model_id: str,
        texts: Sequence[str],
        encode: Callable[[list[str]], np.ndarray],
        *,
        scale: float | None = None,
    ) -> np.ndarray:
        """Embeddings [len(texts), d] (float32) of `texts`, from memory, disk, or `encode`;
        `scale` (the model's logit scale) is kept with them for peek."""
        texts = list(texts)
        mem_key = (key, model_id)
        cached = self._memory.get(mem_key)
        if cached is None:
            cached = self._read(key, model_id, texts)
        if cached is not None and cached[1] is None and scale is not None:  # a file from before scales were kept
            cached = (cached[0], scale)
            self._write(key, model_id, texts, cached[0], scale)
        if cached is None or (scale is not None and cached[1] != scale):  # another scale: other weights
            emb = np.array(encode(texts), dtype=np.float32)  # a copy: frozen below
            if emb.ndim != 2 or emb.shape[0] != len(texts):
                raise ValueError(f"encode_text returned shape {emb.shape} for {len(texts)} texts")
            cached = (emb, scale)
            self._write(key, model_id, texts, emb, scale)
        cached[0].setflags(write=False)
        self._memory[mem_key] = cached
        return cached[0]

    def peek(self, key: str, model_id: str, texts: Sequence[str]) -> tuple[np.ndarray, float] | None:
        """(embeddings, logit scale) when both are cached for these texts, else None; never encodes."""
        mem_key = (key, model_id)
        cached = self._memory.get(mem_key) or self._read(key, model_id, list(texts))
        if cached is None or cached[1] is None:
            return None
        cached[0].setflags(write=False)
        self._memory[mem_key] = cached
        return cached[0], cached[1]

    def clear_memory(self) -> None:
        self._memory.clear()

    def path_for(self, key: str, model_id: str) -> Path:
        # model ids may be paths or contain slashes: hash them into a file name.
        digest = hashlib.sha256(f"{model_id}\0{key}".encode()).hexdigest()[:32]
        return self.directory / f"{digest}.npz"

    def _read(self, key: str, model_id: str, texts: list[str]) -> tuple[np.ndarray, float | None] | None:
        path = self.path_for(key, model_id)
        try:
            with np.load(path, allow_pickle=False) as npz:
                stored_texts = [str(t) for t in npz["texts"]]
                stored_model = str(npz["model_id"])
                emb = np.asarray(npz["embeddings"], dtype=np.float32)
                scale = float(npz["logit_scale"]) if "logit_scale" in npz.files else None
        except (OSError, KeyError, ValueError, TypeError):
            return None  # missing or unreadable: recompute
        if stored_texts != texts or stored_model != model_id or emb.shape[0] != len(texts):
            return None
        if emb.ndim != 2 or not np.isfinite(emb).all() or (scale is not None and not np.isfinite(scale)):
            return None
        return emb, scale

    def _write(self, key: str, model_id: str, texts: list[str], emb: np.ndarray, scale: float | None) -> None:
        path = self.path_for(key, model_id)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    arrays: dict[str, np.ndarray] = {
                        "texts": np.array(texts, dtype=str),
                        "model_id": np.array(model_id),
                        "embeddings": emb,
                    }
                    if scale is not None:
                        arrays["logit_scale"] = np.array(scale)
                    np.savez(f, **arrays)  # type: ignore[arg-type]
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
