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
from collections.abc import Sequence
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
    gc_paused,
    iter_item_chunks,
    save_results,
    stored_results,
)
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
    store: Store, policy: CompiledPolicy, scored: MatrixScores, items: ItemRows, rules: Sequence[SecondOpinionRule]
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
    others = stored_results(store, {r.needs[0] for r in rules} - {policy.name}, [items.ids[i] for i in todo])
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
    decisions_changed: int = 0
    actions: Counter[str] = field(default_factory=Counter)
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
    """rescore for several policies in one pass over the store: each chunk is read once and
    scored with each policy in turn, each policy's results committed in its own transaction
    with its own checkpoint (a policy that others need for a second opinion should come
    first: they are judged on its new results of the chunk)."""
    for policy in policies:
        check_rescorable(policy)
    with gc_paused():
        summaries = _rescore(store, policies, model_id, rules, chunk_size)
    if analyze:
        store.analyze()
    return summaries


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
    summaries = [
        RescoreSummary(p.name, p.loaded.version, model_id, resumed_after=at.last_item_id)
        for p, at in zip(policies, points, strict=True)
    ]
    ruled = [policy_rules(p, rules) for p in policies]
    seconds = [dict.fromkeys(("load", "score", "results", "write"), 0.0) for _ in policies]
    t = time.perf_counter()
    for chunk in iter_item_chunks(store, model_id, after=min(at.last_item_id for at in points), size=chunk_size):
        load = (time.perf_counter() - t) / len(policies)  # one read for every policy
        for k, policy in enumerate(policies):
            if chunk.last_id <= points[k].last_item_id:
                continue
            points[k] = _rescore_chunk(
                store, policy, keys[k], chunk.after(points[k].last_item_id), points[k], ruled[k], seconds[k]
            )
            seconds[k]["load"] += load
        t = time.perf_counter()
    with store.session() as s:
        for key, at in zip(keys, points, strict=True):
            save_checkpoint(s.connection(), *key, at, finished=True)
    for summary, at, spent in zip(summaries, points, seconds, strict=True):
        summary.items, summary.missing, summary.decisions_changed = at.items, at.missing, at.decisions_changed
        summary.actions, summary.seconds = at.actions, spent
    return summaries


def _rescore_chunk(
    store: Store,
    policy: CompiledPolicy,
    key: tuple[str, str, str],
    chunk: ItemChunk,
    at: Checkpoint,
    ruled: Sequence[SecondOpinionRule],
    seconds: dict[str, float],
) -> Checkpoint:
    """Score, judge, encode and store one chunk for one policy; the checkpoint after it."""
    t1 = time.perf_counter()
    scored = score_matrix(policy, chunk.matrix)
    t2 = time.perf_counter()
    # One encoded result per distinct embedding, shared by the items with those bytes,
    # except where a second opinion changed an item's own.
    judged = second_opinions(store, policy, scored, chunk, ruled)
    per_row = encoded_rows(policy, scored, chunk.row)
    pairs = [(item_id, per_row[row]) for item_id, row in zip(chunk.ids, chunk.row.tolist(), strict=True)]
    for i, result in judged.items():
        pairs[i] = (chunk.ids[i], encode_result(result))
    actions = Counter(encoded.action for _, encoded in pairs)
    t3 = time.perf_counter()
    after = Checkpoint(
        chunk.last_id, at.items + len(pairs), at.missing + chunk.missing, at.decisions_changed, at.actions + actions
    )

    def checkpoint(conn: Connection, changed: int) -> None:
        after.decisions_changed += changed
        save_checkpoint(conn, *key, after)

    save_results(store, policy.meta, pairs, chunk=True, then=checkpoint)
    for name, value in (("score", t2 - t1), ("results", t3 - t2), ("write", time.perf_counter() - t3)):
        seconds[name] += value
    return after
