"""Known-bad hash lists as a scorer (entry point ``hashlist``).

    name: known_bad_similar
    mode: multilabel
    scorer: hashlist
    options:
      lists: [lists/known_bad.txt]   # relative to the policy file (and MODERATOR_HASH_LISTS_DIR); see hashlists/
      match: perceptual              # exact: md5 and sha256 lines, decided on the bytes before any decoding
                                     # perceptual: pdq and phash lines, on every sampled frame
      max_distance: {pdq: 31, phash: 8}   # perceptual only: most differing bits that still match, per
                                     # kind (these are the defaults); one number applies to every kind
    classes:
      known_bad_similar: {threshold: 1.0, action: review}
      pdq_low_quality: {threshold: 1.0, action: tag}   # optional: no frame had a PDQ reliable enough

A list may be `{path: lists/x.txt, max_distance: {pdq: 20}}` to match it more strictly than the
others. The policy's first class scores 1.0 on a match (else 0.0); the evidence names the list,
its line and entry, the distance, the frame, and the entry's provenance (source, tags).
``match`` picks the compiled scorer's input: exact policies are BYTES scorers, which the pipeline
runs before decoding, so an exact match is never decoded nor embedded. Perceptual matching hashes
each sampled frame (PDQ with Meta's pdqhash, pHash with imagehash) and the closest frame decides;
a frame whose PDQ quality is below MODERATOR_HASHLIST_PDQ_MIN_QUALITY is not matched by PDQ, and
when no frame is good enough the optional ``pdq_low_quality`` class fires, so it is recorded.
Perceptual matches have false positives, hence a separate policy with its own action. The
scorer's model_id carries a digest of the list content (provenance included), so stored results
say which version of the list matched, and a list that changed makes them stale (re-scored by
the next scan). The compiled scorer names the list files it read (`files`): a long-lived pipeline
(a worker, the API) recompiles when they change.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from moderator.hashlists import (
    DEFAULT_MAX_DISTANCE,
    PERCEPTUAL_BITS,
    HammingIndex,
    HashEntry,
    HashKind,
    HashList,
    HashListError,
    codes,
    exact_hex,
    list_paths,
    lists_digest,
    load_hash_list,
    pdq_of,
    phash_hex,
)
from moderator.scorers import ClassScores, ScorerContext, ScorerInput, ScoringBatch, parse_options

if TYPE_CHECKING:
    from moderator.hashlists import Pdq
    from moderator.policy.schema import PolicySpec

LOW_QUALITY = "pdq_low_quality"
Perceptual = Literal["pdq", "phash"]
Distance = int | dict[Perceptual, int]


class ListRef(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    max_distance: Distance | None = None

    @model_validator(mode="before")
    @classmethod
    def _a_bare_path(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, str) else value


class HashListOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    lists: list[ListRef] = Field(min_length=1)
    match: Literal["exact", "perceptual"] = "exact"
    max_distance: Distance | None = None


def _distances(*layers: Distance | None) -> dict[HashKind, int]:
    """Per perceptual kind, the most differing bits that match: defaults, then each layer over them."""
    out = dict(DEFAULT_MAX_DISTANCE)
    for layer in layers:
        if isinstance(layer, int):
            out = dict.fromkeys(out, layer)
        elif layer:
            out |= {HashKind(k): v for k, v in layer.items()}
    for kind, d in out.items():
        if not 0 <= d <= PERCEPTUAL_BITS[kind] // 2:
            raise ValueError(f"options.max_distance: {kind} is 0..{PERCEPTUAL_BITS[kind] // 2} bits, got {d}")
    return out


def _evidence(
    hl: HashList, entry: HashEntry, distance: int | None = None, limit: int = 0, frame: int = -1, at: str = ""
) -> str:
    text = f"{hl.name}:{entry.line} {entry}"
    if distance is not None:
        text += f" at distance {distance} (<= {limit})"
    if frame >= 0:
        text += f" on frame {frame}{at}"  # at: " at 12.5 s" for a video's frame
    if entry.source:
        text += f" source={entry.source}"
    if entry.tags:
        text += f" tags={','.join(entry.tags)}"
    return text


class ExactHashScorer:
    input = ScorerInput.BYTES

    def __init__(self, class_name: str, lists: list[HashList], files: tuple[Path, ...] = ()) -> None:
        self.class_names = [class_name]
        self.files = files  # read at compile time: a long-lived pipeline recompiles when one changes
        self.model_id = f"hashlist:exact:{lists_digest(lists, (HashKind.MD5, HashKind.SHA256))}"
        # the first list, first line wins when a hash is listed twice
        self._index = {e.key: (hl, e) for hl in reversed(lists) for e in reversed(hl.entries) if e.kind.exact}
        self._md5 = any(e.kind is HashKind.MD5 for hl in lists for e in hl.entries)

    def score(self, batch: ScoringBatch) -> ClassScores:
        data = batch.data or [b""] * len(batch.sha256)
        found = []
        for sha, raw in zip(batch.sha256, data, strict=True):
            hit = self._index.get(f"sha256:{sha.lower()}")
            if hit is None and self._md5 and raw:
                hit = self._index.get(f"md5:{exact_hex(HashKind.MD5, raw)}")
            found.append(hit)
        scores = np.array([[1.0 if f else 0.0] for f in found], dtype=np.float32).reshape(len(found), 1)
        return ClassScores(scores, [[_evidence(*f) if f else ""] for f in found])


@dataclass
class _Group:
    """The entries of one kind matched at one distance, and their index."""

    kind: HashKind
    max_distance: int
    entries: list[tuple[HashList, HashEntry]]
    index: HammingIndex


class PerceptualHashScorer:
    input = ScorerInput.IMAGE

    def __init__(
        self,
        class_names: list[str],
        lists: list[tuple[HashList, dict[HashKind, int]]],
        min_quality: int,
        files: tuple[Path, ...] = (),
    ) -> None:
        self.class_names = class_names
        self.files = files
        self._min_quality = min_quality
        by: dict[tuple[HashKind, int], list[tuple[HashList, HashEntry]]] = {}
        for hl, limits in lists:
            for e in hl.entries:
                if not e.kind.exact:
                    by.setdefault((e.kind, limits[e.kind]), []).append((hl, e))
        self._groups = [
            _Group(k, d, entries, HammingIndex(codes((e.value for _, e in entries), k), d))
            for (k, d), entries in sorted(by.items())
        ]
        shown = sorted({f"{k}<={d}" for _, lim in lists for k, d in lim.items()})
        digest = lists_digest([hl for hl, _ in lists], (HashKind.PDQ, HashKind.PHASH))
        self.model_id = f"hashlist:perceptual:{','.join(shown)}:q{min_quality}:{digest}"
        self._kinds = {g.kind for g in self._groups}

    def score(self, batch: ScoringBatch) -> ClassScores:
        if batch.frames is None:
            raise ValueError("the perceptual hashlist scorer needs decoded frames")
        frames = batch.frames
        n = len(frames)
        scores = np.zeros((n, len(self.class_names)), dtype=np.float32)
        evidence = [[""] * len(self.class_names) for _ in range(n)]
        if not self._groups or n == 0:
            return ClassScores(scores, evidence)
        # hashes of every frame, shared by every perceptual policy of the batch
        pdqs: list[list[Pdq]] = (
            batch.memo("pdq", lambda: [[pdq_of(f) for f in item] for item in frames])
            if HashKind.PDQ in self._kinds
            else []
        )
        phashes: list[list[str]] = (
            batch.memo("phash", lambda: [[phash_hex(f) for f in item] for item in frames])
            if HashKind.PHASH in self._kinds
            else []
        )
        for i in range(n):
            best = self._closest(i, pdqs[i] if pdqs else [], phashes[i] if phashes else [], batch)
            if best is not None:
                scores[i, 0] = 1.0
                evidence[i][0] = best
            if pdqs and len(self.class_names) > 1 and frames[i]:
                qualities = [p.quality for p in pdqs[i]]
                if max(qualities) < self._min_quality:
                    scores[i, 1] = 1.0
                    shown = ", ".join(map(str, qualities))
                    evidence[i][1] = f"PDQ quality {shown} < {self._min_quality}: not matched by PDQ"
        return ClassScores(scores, evidence)

    def _closest(self, i: int, pdqs: list[Pdq], phashes: list[str], batch: ScoringBatch) -> str | None:
        """Evidence of the closest match over every frame and group (distance relative to its limit)."""
        best: tuple[float, str] | None = None
        for group in self._groups:
            if group.kind is HashKind.PDQ:
                wanted = [(f, p.hex) for f, p in enumerate(pdqs) if p.quality >= self._min_quality]
            else:
                wanted = list(enumerate(phashes))
            if not wanted:
                continue
            hits = group.index.search(codes((h for _, h in wanted), group.kind))
            for (frame, _), found in zip(wanted, hits, strict=True):
                if not found:
                    continue
                hit = found[0]
                rank = hit.distance / (group.max_distance + 1)
                if best is None or rank < best[0]:
                    hl, entry = group.entries[hit.index]
                    shown = frame if len(pdqs or phashes) > 1 else -1
                    evidence = _evidence(hl, entry, hit.distance, group.max_distance, shown, batch.at(i, frame))
                    best = (rank, evidence)
        return best[1] if best else None


class HashListPlugin:
    name = "hashlist"
    input = ScorerInput.BYTES  # per policy: see the compiled scorer's input (exact: BYTES, perceptual: IMAGE)

    def compile(self, spec: PolicySpec, ctx: ScorerContext) -> ExactHashScorer | PerceptualHashScorer:
        opts = parse_options(HashListOptions, spec.options, "e.g. lists: [lists/known_bad.txt]")
        classes = list(spec.classes)
        extra = classes[1:]
        if not classes or len(classes) > 2 or (extra and (extra != [LOW_QUALITY] or opts.match == "exact")):
            n = len(classes)
            raise ValueError(
                f"a hashlist policy has exactly one class (the one a match fires), got {n}; a perceptual one"
                f" may add a second named {LOW_QUALITY}"
            )
        base = ctx.policy_file.parent if ctx.policy_file is not None else Path.cwd()
        _distances(opts.max_distance)  # a bad limit is refused whatever the lists hold
        lists: list[tuple[HashList, dict[HashKind, int]]] = []
        files: list[Path] = []
        try:
            for ref in opts.lists:
                name, limits = ref.path, _distances(opts.max_distance, ref.max_distance)
                lists.extend(
                    (load_hash_list(path, shown), limits) for path, shown in list_paths(name, base, ctx.settings)
                )
                files.extend(_list_files(name, base, ctx))
        except HashListError as e:
            raise ValueError(str(e)) from e
        files_read = tuple(dict.fromkeys(files))
        if opts.match == "exact":
            return ExactHashScorer(classes[0], [hl for hl, _ in lists], files_read)
        return PerceptualHashScorer(classes, lists, ctx.settings.hashlist_pdq_min_quality, files_read)


def _list_files(name: str, base: Path, ctx: ScorerContext) -> list[Path]:
    """Every file a list name may read, present or not (a list created later changes the policy too)."""
    mine = [] if Path(name).is_absolute() else [ctx.settings.hash_lists_dir / Path(name).name]
    return [base / name, *mine]


scorer = HashListPlugin()
