"""Policies applied to stored embeddings: no image is read and no image model runs.

Scores come from the policy's own scorer (so a plugin such as linear_probe works the
same), fed chunk by chunk from one float16 matrix of every stored embedding; each
distinct sha256 is scored once however many items share it. Decisions are the
vectorised form of decide.fire (most severe band reached, score >= threshold),
checked against decide.decide in the tests.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from moderator.decide import DecisionRules
from moderator.policy.compile import CompiledPolicy
from moderator.scorers import ScorerInput, ScoringBatch
from moderator.store import Store
from moderator.store.bulk import EmbeddingMatrix, load_embedding_matrix, load_scored_items, save_results
from moderator.types import Action, FiredClass, PolicyResult

SCORE_CHUNK = 4096  # distinct embeddings per scorer call
ACTIONS = (Action.ALLOW, Action.TAG, Action.REVIEW, Action.BLOCK)  # index = severity


@dataclass(frozen=True)
class MatrixScores:
    """A policy's scores over an EmbeddingMatrix: row i is matrix.shas[i]."""

    scores: np.ndarray  # [S, C] in [0, 1]
    evidence: list[list[str]]
    severity: np.ndarray  # int8 [S, C]: 0 not fired, else the fired action's severity
    threshold: np.ndarray  # [S, C]: threshold of the band that fired (NaN when none)

    @property
    def action(self) -> np.ndarray:
        """int8 [S]: the policy's action severity per row."""
        if self.severity.shape[1] == 0:
            return np.zeros(self.severity.shape[0], np.int8)
        return np.asarray(self.severity.max(axis=1), dtype=np.int8)


def fire_matrix(rules: DecisionRules, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row and class, the severity and threshold of the most severe band reached."""
    n, c = scores.shape
    if c != len(rules.classes):
        raise ValueError(f"{len(rules.classes)} classes but scores of shape {scores.shape}")
    severity = np.zeros((n, c), np.int8)
    threshold = np.full((n, c), np.nan)
    for j, bands in enumerate(rules.bands):
        for band in bands:  # thresholds rise with severity, so a later band reached wins
            reached = (scores[:, j] >= band.threshold) & (band.action.severity > severity[:, j])
            severity[reached, j] = band.action.severity
            threshold[reached, j] = band.threshold
    return severity, threshold


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
    severity, threshold = fire_matrix(policy.rules, scores)
    return MatrixScores(scores, evidence, severity, threshold)


def result_at(policy: CompiledPolicy, scored: MatrixScores, row: int) -> PolicyResult:
    """The PolicyResult of one row, as decide.decide would build it."""
    classes = policy.rules.classes
    values = scored.scores[row].tolist()
    sev = scored.severity[row]
    fired = tuple(
        FiredClass(
            name=classes[j],
            action=ACTIONS[int(sev[j])],
            score=values[j],
            threshold=float(scored.threshold[row, j]),
            evidence=scored.evidence[row][j],
        )
        for j in np.flatnonzero(sev).tolist()
    )
    meta = policy.meta
    return PolicyResult(
        policy=meta.policy,
        policy_version=meta.policy_version,
        scorer=meta.scorer,
        model_id=meta.model_id,
        scores=dict(zip(classes, values, strict=True)),
        fired=fired,
        action=ACTIONS[int(sev.max(initial=0))],
    )


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
    store: Store, policy: CompiledPolicy, model_id: str, *, matrix: EmbeddingMatrix | None = None
) -> RescoreSummary:
    """Score every stored item with `policy` and store the results under its version."""
    check_rescorable(policy)
    summary = RescoreSummary(policy.name, policy.loaded.version, model_id)
    t0 = time.perf_counter()
    matrix = matrix if matrix is not None else load_embedding_matrix(store, model_id)
    items = map_items(store, matrix)
    t1 = time.perf_counter()
    scored = score_matrix(policy, matrix)
    t2 = time.perf_counter()
    # One PolicyResult per distinct embedding, shared by the items with those bytes.
    per_row: dict[int, PolicyResult] = {}
    pairs: list[tuple[int, PolicyResult]] = []
    for item_id, row in zip(items.ids, items.row.tolist(), strict=True):
        result = per_row.get(row)
        if result is None:
            result = per_row[row] = result_at(policy, scored, row)
        pairs.append((item_id, result))
        summary.actions[result.action.value] += 1
    t3 = time.perf_counter()
    summary.decisions_changed = save_results(store, pairs)
    summary.items, summary.missing = len(pairs), items.missing
    summary.seconds = {"load": t1 - t0, "score": t2 - t1, "results": t3 - t2, "write": time.perf_counter() - t3}
    return summary
