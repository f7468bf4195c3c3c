"""Known-bad hash lists as a scorer (entry point ``hashlist``).

    name: known_bad
    mode: multilabel
    scorer: hashlist
    options:
      lists: [lists/known_bad.txt]   # relative to the policy file (and MODERATOR_HASH_LISTS_DIR); see hashlists.py
      match: exact                   # exact: sha256 lines, decided on the bytes before any decoding
                                     # perceptual: phash lines, on the first decoded frame
      max_distance: 8                # perceptual only: most differing bits (of 64) that still match
    classes:
      known_bad: {threshold: 1.0, action: block}

The policy has exactly one class; it scores 1.0 on a match (else 0.0) and the
evidence names the list, the line and the matched entry. ``match`` picks the
compiled scorer's input: exact policies are BYTES scorers, which the pipeline runs
before decoding, so an exact match is never decoded nor embedded. Perceptual matches
have false positives (flat, near-blank images collide), hence a separate policy with
its own action. The scorer's model_id carries a digest of the list content, so
stored results say which version of the list matched, and a list that changed makes
them stale (re-scored by the next scan). The compiled scorer names the list files it
read (`files`): a long-lived pipeline (a worker, the API) recompiles when they change.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from moderator.hashlists import (
    PHASH_BITS,
    HashEntry,
    HashKind,
    HashList,
    HashListError,
    hamming,
    lists_digest,
    phash_array,
    phash_hex,
    policy_lists,
)
from moderator.scorers import ClassScores, ScorerContext, ScorerInput, ScoringBatch, parse_options

if TYPE_CHECKING:
    from moderator.policy.schema import PolicySpec


class HashListOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    lists: list[str] = Field(min_length=1)
    match: Literal["exact", "perceptual"] = "exact"
    max_distance: int = Field(8, ge=0, le=PHASH_BITS // 2)


def _evidence(hl: HashList, entry: HashEntry, distance: int | None = None) -> str:
    near = f" at distance {distance}" if distance is not None else ""
    return f"{hl.name}:{entry.line} {entry}{near}"


class ExactHashScorer:
    input = ScorerInput.BYTES

    def __init__(self, class_name: str, lists: list[HashList], files: tuple[Path, ...] = ()) -> None:
        self.class_names = [class_name]
        self.files = files  # read at compile time: a long-lived pipeline recompiles when one changes
        self.model_id = f"hashlist:sha256:{lists_digest(lists, HashKind.SHA256)}"
        self._index = {e.value: (hl, e) for hl in reversed(lists) for e in reversed(hl.of_kind(HashKind.SHA256))}

    def score(self, batch: ScoringBatch) -> ClassScores:
        found = [self._index.get(sha.lower()) for sha in batch.sha256]
        scores = np.array([[1.0 if f else 0.0] for f in found], dtype=np.float32).reshape(len(found), 1)
        return ClassScores(scores, [[_evidence(*f) if f else ""] for f in found])


class PerceptualHashScorer:
    input = ScorerInput.IMAGE

    def __init__(self, class_name: str, lists: list[HashList], max_distance: int, files: tuple[Path, ...] = ()) -> None:
        self.class_names = [class_name]
        self.files = files
        self.model_id = f"hashlist:phash<={max_distance}:{lists_digest(lists, HashKind.PHASH)}"
        self._entries = [(hl, e) for hl in lists for e in hl.of_kind(HashKind.PHASH)]
        self._hashes = phash_array(e.value for _, e in self._entries)
        self._max = max_distance

    def score(self, batch: ScoringBatch) -> ClassScores:
        if batch.frames is None:
            raise ValueError("the perceptual hashlist scorer needs decoded frames")
        n = len(batch.frames)
        scores = np.zeros((n, 1), dtype=np.float32)
        evidence = [[""] for _ in range(n)]
        if not self._entries or n == 0:
            return ClassScores(scores, evidence)
        # phash of the first frame, shared by every perceptual policy of the batch
        hashes = batch.memo("phash", lambda: [phash_hex(f[0]) if f else None for f in batch.frames or []])
        for i, h in enumerate(hashes):
            if h is None:
                continue
            d = hamming(phash_array([h]), self._hashes)[0]
            best = int(np.argmin(d))
            if d[best] <= self._max:
                scores[i, 0] = 1.0
                evidence[i][0] = _evidence(*self._entries[best], distance=int(d[best]))
        return ClassScores(scores, evidence)


class HashListPlugin:
    name = "hashlist"
    input = ScorerInput.BYTES  # per policy: see the compiled scorer's input (exact: BYTES, perceptual: IMAGE)

    def compile(self, spec: PolicySpec, ctx: ScorerContext) -> ExactHashScorer | PerceptualHashScorer:
        opts = parse_options(HashListOptions, spec.options, "e.g. lists: [lists/known_bad.txt]")
        if len(spec.classes) != 1:
            n = len(spec.classes)
            raise ValueError(f"a hashlist policy has exactly one class (the one a match fires), got {n}")
        base = ctx.policy_file.parent if ctx.policy_file is not None else Path.cwd()
        try:
            lists = policy_lists(opts.lists, base, ctx.settings)
        except HashListError as e:
            raise ValueError(str(e)) from e
        (class_name,) = spec.classes
        files = _list_files(opts.lists, base, ctx)
        if opts.match == "exact":
            return ExactHashScorer(class_name, lists, files)
        return PerceptualHashScorer(class_name, lists, opts.max_distance, files)


def _list_files(names: list[str], base: Path, ctx: ScorerContext) -> tuple[Path, ...]:
    """Every file policy_lists may read, present or not (a list created later changes the policy too)."""
    mine = [ctx.settings.hash_lists_dir / Path(n).name for n in names if not Path(n).is_absolute()]
    return tuple(dict.fromkeys([*(base / n for n in names), *mine]))


scorer = HashListPlugin()
