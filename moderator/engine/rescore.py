"""Policies applied to stored embeddings: no image is read and no image model runs.

Scores come from the policy's own scorer (so a plugin such as linear_probe works the
same), fed chunk by chunk from one float16 matrix of every stored embedding; each
distinct sha256 is scored once however many items share it. Decisions come from
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
    EmbeddingMatrix,
    gc_paused,
    load_embedding_matrix,
    load_scored_items,
    save_results,
    stored_results,
)
from moderator.store.results import EncodedResult, ResultEncoder, encode_result
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


@dataclass(frozen=True)
class ItemRows:
    """Stored items mapped onto matrix rows; items whose embedding is missing are left out."""

    ids: list[int]
    uris: list[str]
    row: np.ndarray  # int64 [items]: matrix row of each item
    missing: int


def map_items(store: Store, matrix: EmbeddingMatrix) -> ItemRows:
    items = load_scored_items(store)
    index = {sha: i for i, sha in enumerate(matrix.shas)}
    keep = [(i, index[sha]) for i, sha in enumerate(items.shas) if sha in index]
    return ItemRows(
        ids=[items.ids[i] for i, _ in keep],
        uris=[items.uris[i] for i, _ in keep],
        row=np.array([r for _, r in keep], dtype=np.int64),
        missing=len(items.ids) - len(keep),
    )


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
    matrix: EmbeddingMatrix | None = None,
    rules: Sequence[SecondOpinionRule] | None = None,
) -> RescoreSummary:
    """Score every stored item with `policy` and store the results under its version.

    `rules`: second-opinion rules in force (decide.second_opinion_rules of every policy
    deployed); by default the policy's own. Only those of this policy apply here.
    """
    check_rescorable(policy)
    with gc_paused():
        return _rescore(store, policy, model_id, matrix, rules)


def _rescore(
    store: Store,
    policy: CompiledPolicy,
    model_id: str,
    matrix: EmbeddingMatrix | None,
    rules: Sequence[SecondOpinionRule] | None,
) -> RescoreSummary:
    summary = RescoreSummary(policy.name, policy.loaded.version, model_id)
    t0 = time.perf_counter()
    matrix = matrix if matrix is not None else load_embedding_matrix(store, model_id)
    items = map_items(store, matrix)
    t1 = time.perf_counter()
    scored = score_matrix(policy, matrix)
    t2 = time.perf_counter()
    # One encoded result per distinct embedding, shared by the items with those bytes,
    # except where a second opinion changed an item's own.
    judged = second_opinions(store, policy, scored, items, policy_rules(policy, rules))
    per_row = encoded_rows(policy, scored, items.row)
    pairs = [(item_id, per_row[row]) for item_id, row in zip(items.ids, items.row.tolist(), strict=True)]
    for i, result in judged.items():
        pairs[i] = (items.ids[i], encode_result(result))
    summary.actions.update(encoded.action for _, encoded in pairs)
    t3 = time.perf_counter()
    summary.decisions_changed = save_results(store, policy.meta, pairs)
    summary.items, summary.missing = len(pairs), items.missing
    summary.seconds = {"load": t1 - t0, "score": t2 - t1, "results": t3 - t2, "write": time.perf_counter() - t3}
    return summary
