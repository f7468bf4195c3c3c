"""Shared helpers of the policy-lifecycle tests: known embeddings, a text encoder that maps
prompts to known axes, and a store seeded with items whose right answers are known.

Every image embedding is a unit basis vector (or a mix of two), every prompt an axis,
so each score is written down by hand: with logit scale L, an item on axis a scores
sigmoid-like e^L / (e^L + C - 1) for the class on axis a in an exclusive policy.
"""

from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path

import numpy as np
import pytest

from moderator.engine.compile import CompiledPolicy, compile_policy
from moderator.models.text_cache import TextEmbeddingCache
from moderator.policy.load import load_policy
from moderator.scorers import ScorerContext
from moderator.scorers import zero_shot as zero_shot_module
from moderator.settings import Settings
from moderator.store import ItemRecord, Store
from moderator.types import ItemStatus

D = 8
L = 10.0
MODEL_ID = "test-tiny/none"  # what model_id_for(TINY) says: the store's embeddings are "of" it
TINY = Settings(model="test-tiny", pretrained="none", device="cpu")


def axis(*axes: int, dim: int = D) -> np.ndarray:
    v = np.zeros(dim, dtype=np.float32)
    v[list(axes)] = 1.0
    return v / np.linalg.norm(v)


class FakeClip:
    """encode_text puts the prompt "axisN" (in any template) on axis N."""

    model_id = MODEL_ID
    logit_scale = L

    def __init__(self) -> None:
        self.calls = 0

    def encode_text(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        out = []
        for text in texts:
            n = int(text.split("axis", 1)[1].split(" ")[0].rstrip("."))
            out.append(axis(n))
        return np.stack(out)


def context(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings: Settings = TINY
) -> tuple[ScorerContext, FakeClip]:
    clip = FakeClip()
    monkeypatch.setattr(zero_shot_module.scorer, "cache", TextEmbeddingCache(tmp_path / "text-cache"))
    return ScorerContext(settings=settings, clip=lambda: clip), clip  # type: ignore[arg-type,return-value]


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def compiled(path: Path, ctx: ScorerContext) -> CompiledPolicy:
    result = compile_policy(load_policy(path), ctx)
    assert isinstance(result, CompiledPolicy), result
    return result


# cat on axis 0, dog on axis 1, other on axis 2.
PETS = """
name: pets
mode: exclusive
templates: ["{}"]
classes:
  cat: {prompts: [axis0], threshold: 0.5, action: tag}
  dog: {prompts: [axis1], threshold: 0.5, action: review}
  other: {prompts: [axis2]}
"""


def seed(store: Store, items: dict[str, np.ndarray], model_id: str = MODEL_ID) -> None:
    """Items uri -> embedding [d] or [frames, d]; the sha256 is derived from the uri (one per item)."""
    shas = {uri: sha_of(uri) for uri in items}
    store.save_embeddings({shas[u]: np.atleast_2d(e) for u, e in items.items()}, model_id)
    store.save_items([ItemRecord(uri=u, sha256=shas[u], size=1, fingerprint=None, status=ItemStatus.OK) for u in items])


def sha_of(uri: str) -> str:
    return hashlib.sha256(uri.encode()).hexdigest()
