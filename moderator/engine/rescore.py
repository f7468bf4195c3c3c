"""Policies applied to stored embeddings: no image is read and no image model runs.

Scores come from the policy's own scorer (so a plugin such as linear_probe works the
same), fed from the store a chunk of items at a time in id order (store.bulk.iter_item_chunks:
memory is one chunk's, however large the store); each distinct sha256 of a chunk is
scored once however many of its items share it. Decisions come from
decide.apply_rules, the rule a scan applies too. Second opinions are applied as the
pipeline applies them (decide.apply_second_opinions), judged against the other
policies' stored results; a stored result of another policy is not revisited here.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import Connection

from moderator.decide import (
    Decided,
    SecondOpinionRule,
    apply_rules,
    apply_second_opinions,
    policy_result,
    second_opinion_rules,
)
from moderator.engine.compile import CompiledPolicy
from moderator.scorers import ScorerInput, ScoringBatch
from moderator.store import Store
from moderator.store.bulk import (
    CHUNK_ITEMS,
    EmbeddingMatrix,
    ItemChunk,
    iter_item_chunks,
    save_results,
    stored_results,
)
from moderator.store.engine import Aside, IdRange, gc_paused
from moderator.store.results import EncodedResult, ResultEncoder, encode_result
from moderator.store.runs import Checkpoint, save_checkpoint, start_run
from moderator.types import PolicyResult

SCORE_CHUNK = 4096  # distinct embeddings per scorer call


@dataclass(frozen=True)
class MatrixScores:
    """A policy's scores over an EmbeddingMatrix (row i is matrix.shas[i]) and what the rule decided."""

    scores: np.ndarray  # float64 [S, C] in [0, 1]
    evidence: list[list[str]]
    decided: Decided

    @property
    def severity(self) -> np.ndarray:
        """int8 [S, C]: 0 not fired, else the fired action's severity."""
        return self.decided.severity

    @property
    def threshold(self) -> np.ndarray:
        """[S, C]: threshold of the band that fired (NaN when none)."""
        return self.decided.threshold

    @property
    def action(self) -> np.ndarray:
        """int8 [S]: the policy's action severity per row."""
        return self.decided.action


def check_rescorable(policy: CompiledPolicy) -> None:
    if policy.scorer.input is not ScorerInput.EMBEDDING:
        raise ValueError(
            f"policy {policy.name!r} uses scorer {policy.loaded.spec.scorer!r}, which reads the "
            f"{policy.scorer.input.value}s of each image: it cannot run from stored embeddings (scan again instead)"
        )


def score_matrix(policy: CompiledPolicy, matrix: EmbeddingMatrix, *, chunk: int = SCORE_CHUNK) -> MatrixScores:
    check_rescorable(policy)
    n_classes = len(policy.rules.classes)
    parts: list[np.ndarray] = []
    evidence: list[list[str]] = []
    for start in range(0, len(matrix), chunk):
        stop = min(start + chunk, len(matrix))
        batch = ScoringBatch(sha256=matrix.shas[start:stop], embeddings=matrix.rows(start, stop))
        out = policy.scorer.score(batch)
        if out.scores.shape != (stop - start, n_classes) or len(out.evidence) != stop - start:
            raise ValueError(f"scorer of policy {policy.name!r} returned scores of shape {out.scores.shape}")
        if not ((out.scores >= 0) & (out.scores <= 1)).all():
            raise ValueError(f"scorer of policy {policy.name!r} returned scores outside [0, 1] (or NaN)")
        parts.append(np.asarray(out.scores, dtype=np.float64))
        evidence.extend(out.evidence)
    scores = np.concatenate(parts) if parts else np.zeros((0, n_classes))
    return MatrixScores(scores, evidence, apply_rules(policy.rules, scores))


def result_at(policy: CompiledPolicy, scored: MatrixScores, row: int) -> PolicyResult:
    """The PolicyResult of one row, as decide.decide would build it."""
    return policy_result(
        policy.rules,
        policy.meta,
        scored.scores[row].tolist(),
        scored.severity[row].tolist(),
        scored.threshold[row].tolist(),
        scored.evidence[row],
        int(scored.action[row]),
    )


def encoded_rows(policy: CompiledPolicy, scored: MatrixScores, rows: np.ndarray) -> dict[int, EncodedResult]:
    """Matrix row -> encode_result(result_at(policy, scored, row)), for each distinct row given."""
    wanted = np.unique(rows)
    values, severity = scored.scores[wanted].tolist(), scored.severity[wanted].tolist()
    threshold, action = scored.threshold[wanted].tolist(), scored.action[wanted].tolist()
    encoder = ResultEncoder(policy.rules.classes)
    return {
        row: encoder.encode(values[i], severity[i], threshold[i], scored.evidence[row], action[i])
        for i, row in enumerate(wanted.tolist())
    }


def policy_rules(policy: CompiledPolicy, rules: Sequence[SecondOpinionRule] | None) -> list[SecondOpinionRule]:
    """The second-opinion rules that can change this policy's results (its own, by default)."""
    every = second_opinion_rules([policy.loaded.spec]) if rules is None else rules
    return [r for r in every if r.policy == policy.name]


def second_opinions(
    source: Store | Connection,
    policy: CompiledPolicy,
    scored: MatrixScores,
    items: ItemRows,
    rules: Sequence[SecondOpinionRule],
) -> dict[int, PolicyResult]:
    """Item index -> its result after second opinions, for the items whose result they change.

    Only items with a ruled class at its most severe action can change; for those, the
    other policies' stored results are read and decide.apply_second_opinions decides.
    """
    if not rules or not items.ids:
        return {}
    column = {name: j for j, name in enumerate(policy.rules.classes)}
    severity = scored.severity[items.row]
    at_top = np.zeros(len(items.ids), dtype=bool)
    for rule in rules:
        at_top |= severity[:, column[rule.class_name]] == rule.top.severity
    todo = np.flatnonzero(at_top).tolist()
    others = stored_results(source, {r.needs[0] for r in rules} - {policy.name}, [items.ids[i] for i in todo])
    out: dict[int, PolicyResult] = {}
    for i in todo:
        result = result_at(policy, scored, int(items.row[i]))
        (judged, *_) = apply_second_opinions([result, *others.get(items.ids[i], ())], rules)
        if judged != result:
            out[i] = judged
    return out


def severity_of(result: PolicyResult, classes: tuple[str, ...]) -> np.ndarray:
    """int8 [C]: per class, the severity of its fired action (0 when it did not fire)."""
    fired = {f.name: f.action.severity for f in result.fired}
    return np.array([fired.get(c, 0) for c in classes], dtype=np.int8)


# A chunk of stored items mapped onto its distinct embeddings (store.bulk.iter_item_chunks).
ItemRows = ItemChunk


@dataclass
class RescoreSummary:
    policy: str
    version: str
    model_id: str
    items: int = 0
    missing: int = 0  # scored items with no stored embedding of this model
    decisions_changed: int = 0  # item decisions changed by the chunks this policy was written in
    actions: Counter[str] = field(default_factory=Counter)
    # Stage seconds; shared stages (the read, the chunk's write) are split between the policies.
    # The writes overlap the scoring of the next chunk, so the stages add up to more than the wall.
    seconds: dict[str, float] = field(default_factory=dict)
    resumed_after: int = 0  # the item id an unfinished run went on after (0: from the start)

    def as_dict(self) -> dict[str, object]:
        return {
            "policy": self.policy,
            "version": self.version,
            "model_id": self.model_id,
            "items": self.items,
            "missing_embeddings": self.missing,
            "decisions_changed": self.decisions_changed,
            "actions": dict(self.actions),
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }


def rescore(
    store: Store,
    policy: CompiledPolicy,
    model_id: str,
    *,
    rules: Sequence[SecondOpinionRule] | None = None,
    chunk_size: int = CHUNK_ITEMS,
    analyze: bool = True,
) -> RescoreSummary:
    """Score every stored item with `policy` and store the results under its version.

    `rules`: second-opinion rules in force (decide.second_opinion_rules of every policy
    deployed); by default the policy's own. Only those of this policy apply here.

    Streams: `chunk_size` items at a time in id order, each chunk's results, decision
    refresh and checkpoint (store.runs) in one transaction. A run of this version that did
    not finish (killed, failed) goes on after its last committed chunk; once finished, a
    new run starts from the first item again. `analyze`: refresh the planner's statistics
    at the end (Store.analyze).
    """
    (summary,) = rescore_many(store, [policy], model_id, rules=rules, chunk_size=chunk_size, analyze=analyze)
    return summary


def rescore_many(
    store: Store,
    policies: Sequence[CompiledPolicy],
    model_id: str,
    *,
    rules: Sequence[SecondOpinionRule] | None = None,
    chunk_size: int = CHUNK_ITEMS,
    analyze: bool = True,
) -> list[RescoreSummary]:
    """rescore for several policies in one pass over the store: each chunk is read once,
    scored with each policy in turn, and its results of every policy, one refresh of its
    decisions and queue rows, and each policy's checkpoint are committed in one transaction
    (a policy that others need for a second opinion should come first: they are judged on
    its new results of the chunk). A policy whose checkpoint lies further on joins the pass
    at its checkpoint. A chunk's decision changes count for every policy written in it."""
    for policy in policies:
        check_rescorable(policy)
    with gc_paused():
        summaries = _rescore(store, policies, model_id, rules, chunk_size)
    if analyze:
        store.analyze()
    return summaries


@dataclass
class _Part:
    """One policy's share of a chunk, scored and encoded, for the writer."""

    k: int  # the policy's index in the pass
    chunk: ItemChunk
    scored: MatrixScores
    pairs: list[tuple[int, EncodedResult]]


class _Pass:
    """The state of one rescore pass: its checkpoints and stage seconds, kept by the writer.

    Chunks are written on one background thread, in order, while the caller scores the next
    (at most one chunk waits): the database's work on a chunk overlaps Python's on the next
    (measured at 1M items on PostgreSQL: the store's statements were ~60% of a serial run).
    A store whose engine shares one connection (in-memory SQLite) is written inline (store.engine.Aside).
    """

    def __init__(
        self,
        store: Store,
        policies: Sequence[CompiledPolicy],
        keys: list[tuple[str, str, str]],
        points: list[Checkpoint],
        ruled: list[list[SecondOpinionRule]],
    ) -> None:
        self.store, self.policies, self.keys, self.points, self.ruled = store, policies, keys, points, ruled
        self.seconds = [dict.fromkeys(("load", "score", "results", "write"), 0.0) for _ in policies]
        self.writer = Aside(store.engine, "rescore-writer")
        self._pending: Future[None] | None = None

    def submit(self, chunk: ItemChunk, parts: list[_Part]) -> None:
        """Write the chunk's parts (after the chunk before it committed); raises the error of an earlier write."""
        self.wait()
        self._pending = self.writer.submit(self._write, chunk, parts)

    def wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def _write(self, chunk: ItemChunk, parts: list[_Part]) -> None:
        t = time.perf_counter()
        save_results(
            self.store,
            [(self.policies[part.k].meta, self._rows_of(part)) for part in parts],
            id_range=IdRange(chunk.ids[0] if chunk.ids else chunk.last_id, chunk.last_id),
            then=lambda conn, changed: self._checkpoint(conn, chunk, parts, changed),
        )
        for part in parts:
            self.seconds[part.k]["write"] += (time.perf_counter() - t) / len(parts)

    def _rows_of(self, part: _Part) -> Callable[[Connection], list[tuple[int, EncodedResult]]]:
        def rows(conn: Connection) -> list[tuple[int, EncodedResult]]:
            # Judged in the chunk's transaction: the new results of policies written before it count.
            judged = second_opinions(conn, self.policies[part.k], part.scored, part.chunk, self.ruled[part.k])
            for i, result in judged.items():
                part.pairs[i] = (part.chunk.ids[i], encode_result(result))
            return part.pairs

        return rows

    def _checkpoint(self, conn: Connection, chunk: ItemChunk, parts: list[_Part], changed: int) -> None:
        for part in parts:
            at = self.points[part.k]
            actions = Counter(encoded.action for _, encoded in part.pairs)
            self.points[part.k] = after = Checkpoint(
                chunk.last_id,
                at.items + len(part.pairs),
                at.missing + part.chunk.missing,
                at.decisions_changed + changed,
                at.actions + actions,
            )
            save_checkpoint(conn, *self.keys[part.k], after)


def _rescore(
    store: Store,
    policies: Sequence[CompiledPolicy],
    model_id: str,
    rules: Sequence[SecondOpinionRule] | None,
    chunk_size: int,
) -> list[RescoreSummary]:
    keys = [(p.name, p.loaded.version, model_id) for p in policies]
    with store.session() as s:
        points = [start_run(s.connection(), *key) for key in keys]
    starts = [at.last_item_id for at in points]
    summaries = [
        RescoreSummary(p.name, p.loaded.version, model_id, resumed_after=start)
        for p, start in zip(policies, starts, strict=True)
    ]
    work = _Pass(store, policies, keys, points, [policy_rules(p, rules) for p in policies])
    with work.writer:  # leaving waits for the chunk in flight, committed or failed
        t = time.perf_counter()
        for chunk in iter_item_chunks(store, model_id, after=min(starts), size=chunk_size):
            due = [k for k in range(len(policies)) if chunk.last_id > starts[k]]
            for k in due:
                work.seconds[k]["load"] += (time.perf_counter() - t) / len(due)  # one read for every policy
            work.submit(chunk, [_score_part(policies[k], k, chunk.after(starts[k]), work.seconds[k]) for k in due])
            t = time.perf_counter()
        work.wait()
    with store.session() as s:
        for key, at in zip(keys, work.points, strict=True):
            save_checkpoint(s.connection(), *key, at, finished=True)
    for summary, at, spent in zip(summaries, work.points, work.seconds, strict=True):
        summary.items, summary.missing, summary.decisions_changed = at.items, at.missing, at.decisions_changed
        summary.actions, summary.seconds = at.actions, spent
    return summaries


def _score_part(policy: CompiledPolicy, k: int, chunk: ItemChunk, seconds: dict[str, float]) -> _Part:
    """Score and encode one chunk for one policy (second opinions are judged by the writer)."""
    t1 = time.perf_counter()
    scored = score_matrix(policy, chunk.matrix)
    t2 = time.perf_counter()
    # One encoded result per distinct embedding, shared by the items with those bytes.
    per_row = encoded_rows(policy, scored, chunk.row)
    pairs = [(item_id, per_row[row]) for item_id, row in zip(chunk.ids, chunk.row.tolist(), strict=True)]
    seconds["score"] += t2 - t1
    seconds["results"] += time.perf_counter() - t2
    return _Part(k, chunk, scored, pairs)
