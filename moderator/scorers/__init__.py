"""Scorer plugins (entry point group ``moderator.scorers``).

A policy names its scorer (``scorer: clip`` by default). The plugin compiles the
policy into a CompiledScorer, which maps a batch to per-class scores in [0, 1].
Decisions (thresholds, bands, actions) are the same for every scorer: see decide.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np
from pydantic import BaseModel, ValidationError

from moderator import plugins

if TYPE_CHECKING:
    from PIL import Image

    from moderator.models.clip import ClipModel
    from moderator.policy.schema import PolicySpec
    from moderator.settings import Settings

GROUP = "moderator.scorers"
Options = TypeVar("Options", bound=BaseModel)


class ScorerInput(StrEnum):
    EMBEDDING = "embedding"  # CLIP image embeddings, [frames, d] per item
    IMAGE = "image"  # decoded RGB frames per item
    BYTES = "bytes"  # the raw bytes and sha256 (e.g. exact hash lists: no decoding)


@dataclass
class ScorerContext:
    """What a scorer may need at compile time; models load lazily, once per process."""

    settings: Settings
    clip: Callable[[], ClipModel]  # raises ScorerUnavailable when weights cannot be had
    policy_file: Path | None = None
    # Compiled only to score stored embeddings (rescore, policy diff): a scorer that has what it
    # needs cached (the clip scorer: its prompts' embeddings) may leave the model unloaded.
    stored_embeddings: bool = False


@dataclass
class ScoringBatch:
    """One batch of items. Lists are aligned; a scorer reads only its own input kind."""

    sha256: list[str]
    data: list[bytes] | None = None
    frames: list[list[Image.Image]] | None = None
    embeddings: list[np.ndarray] | None = None  # float32, L2-normalised, [frames, d]
    # Videos: each item's sampled frames' timestamps (seconds), None for images; see at().
    frame_times: list[list[float] | None] | None = None
    # Shared per-batch results by model key, so a model runs once per batch
    # however many policies use it: memo(key, fn) computes fn() once.
    _memo: dict[str, Any] = field(default_factory=dict)

    def at(self, item: int, frame: int) -> str:
        """' at 12.4 s': where a video's frame `frame` (0-based) of item `item` is, for evidence texts; ''
        for images (and where the times do not match the frames, e.g. an embedding stored with other settings)."""
        times = self.frame_times[item] if self.frame_times is not None and item < len(self.frame_times) else None
        counts = {len(kind[item]) for kind in (self.frames, self.embeddings) if kind is not None}
        if not times or counts != {len(times)} or not 0 <= frame < len(times):
            return ""
        return f" at {times[frame]:g} s"

    def memo(self, key: str, compute: Callable[[], Any]) -> Any:
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]


@dataclass(frozen=True)
class ClassScores:
    """Scores [N, C] in [0, 1] and, per item and class, a short evidence string."""

    scores: np.ndarray
    evidence: list[list[str]]


class CompiledScorer(Protocol):
    input: ScorerInput
    model_id: str  # recorded beside every result it produces
    class_names: list[str]

    def score(self, batch: ScoringBatch) -> ClassScores: ...


class Scorer(Protocol):
    """What an entry point in ``moderator.scorers`` provides."""

    name: str
    input: ScorerInput

    def compile(self, spec: PolicySpec, ctx: ScorerContext) -> CompiledScorer:
        """Raise ScorerUnavailable when it cannot run here; ValueError for a bad policy."""
        ...


def get_scorer(name: str) -> Scorer:
    scorer: Scorer = plugins.get(GROUP, name)
    return scorer


def parse_options(model: type[Options], options: dict[str, Any], hint: str = "") -> Options:
    """A scorer's policy `options`, validated; the ValueError names the field (compile_policy locates it)."""
    try:
        return model.model_validate(options)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(map(str, err["loc"]))
        raise ValueError(f"options.{field}: {err['msg']}" + (f" ({hint})" if hint else "")) from None
