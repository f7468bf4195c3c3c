"""What a policy edit would change, over every stored item, before it is deployed.

Both versions are scored from stored embeddings (moderator.engine.rescore), a chunk of
items at a time: no image is read, no image model runs, memory is one chunk's. When the
edit leaves scoring alone (thresholds, actions, description), the scores are computed once.
Each version's second opinions apply as in a scan, judged against the other policies'
stored results. An item's decision is the most severe action over its other policies'
stored results and this policy's (old or new).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field

import numpy as np

from moderator.decide import ACTIONS, SecondOpinionRule, apply_rules, policy_actions
from moderator.engine.compile import CompiledPolicy
from moderator.engine.rescore import (
    ItemRows,
    MatrixScores,
    check_rescorable,
    policy_rules,
    score_matrix,
    second_opinions,
    severity_of,
)
from moderator.policy.schema import PolicySpec
from moderator.store import Store
from moderator.store.bulk import CHUNK_ITEMS, ItemChunk, iter_item_chunks, stored_actions
from moderator.store.engine import Aside, gc_paused
from moderator.types import Action

TAG = Action.TAG.severity


@dataclass(frozen=True)
class ClassChange:
    name: str
    fired_old: int  # items where the class fired (any action)
    fired_new: int
    newly_fired: int
    no_longer_fired: int
    action_changed: int  # fired in both, with another action


@dataclass(frozen=True)
class ChangedItem:
    uri: str
    decision_old: str
    decision_new: str
    action_old: str
    action_new: str
    fired_added: list[str]  # "class:action" in the new version only
    fired_removed: list[str]  # ... in the old version only
    scores: dict[str, tuple[float | None, float | None]]  # class -> (old, new), for classes that changed


@dataclass
class PolicyDiff:
    policy_old: str
    policy_new: str
    version_old: str
    version_new: str
    model_id: str
    items: int = 0
    missing: int = 0  # scored items with no stored embedding of this model
    scores_reused: bool = False
    decisions_changed: int = 0
    decision_moves: Counter[str] = field(default_factory=Counter)  # "allow -> review": items
    actions_changed: int = 0  # this policy's own action
    tags_changed: int = 0  # items whose tag set changed
    tags_added: int = 0
    tags_removed: int = 0
    classes: list[ClassChange] = field(default_factory=list)
    sample: list[ChangedItem] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["decision_moves"] = dict(self.decision_moves)
        return out


def scoring_part(spec: PolicySpec) -> dict[str, object]:
    """What scores depend on: everything but thresholds, actions, description and second opinions."""
    dump = spec.model_dump(mode="json", exclude={"description", "second_opinion"})
    # A list, not a dict: class order is column order, and dict equality ignores it.
    dump["classes"] = [[name, c.get("prompts")] for name, c in dump["classes"].items()]
    return dump


def _fired(severity: np.ndarray, classes: tuple[str, ...], names: list[str]) -> np.ndarray:
    """Severity [items, len(names)] aligned to `names` (0 for a class this version lacks)."""
    out = np.zeros((severity.shape[0], len(names)), np.int8)
    for j, name in enumerate(names):
        if name in classes:
            out[:, j] = severity[:, classes.index(name)]
    return out


def item_severity(
    store: Store,
    policy: CompiledPolicy,
    scored: MatrixScores,
    items: ItemRows,
    rules: Sequence[SecondOpinionRule] | None,
) -> np.ndarray:
    """int8 [items, C]: per item and class, the fired action's severity after second opinions."""
    severity = scored.severity[items.row]
    for i, result in second_opinions(store, policy, scored, items, policy_rules(policy, rules)).items():
        severity[i] = severity_of(result, policy.rules.classes)
    return severity


def diff_policies(
    store: Store,
    old: CompiledPolicy,
    new: CompiledPolicy,
    model_id: str,
    *,
    sample: int = 10,
    rules: Sequence[SecondOpinionRule] | None = None,
    chunk_size: int = CHUNK_ITEMS,
) -> PolicyDiff:
    """`rules`: second-opinion rules in force besides the policies' own (as for rescore).

    Streams over the store `chunk_size` items at a time (store.bulk.iter_item_chunks): the
    counts add up chunk by chunk, the sample keeps the first items in id order.
    """
    with gc_paused():
        return _diff(store, old, new, model_id, sample, rules, chunk_size)


class _Tally:
    """What _diff adds up over the chunks."""

    def __init__(self, names: list[str], sample: int) -> None:
        n = len(names)
        self.fired_old, self.fired_new = np.zeros(n, np.int64), np.zeros(n, np.int64)
        self.newly, self.no_longer, self.action_changed = (
            np.zeros(n, np.int64),
            np.zeros(n, np.int64),
            np.zeros(n, np.int64),
        )
        self.moved: list[ChangedItem] = []  # the first `sample` items whose decision moved
        self.touched: list[ChangedItem] = []  # ... whose fired classes changed, decision not
        self.sample = sample


def _diff(
    store: Store,
    old: CompiledPolicy,
    new: CompiledPolicy,
    model_id: str,
    sample: int,
    rules: Sequence[SecondOpinionRule] | None,
    chunk_size: int,
) -> PolicyDiff:
    result = PolicyDiff(old.name, new.name, old.loaded.version, new.loaded.version, model_id)
    check_rescorable(old)
    check_rescorable(new)
    same_scorer = old.scorer.model_id == new.scorer.model_id and old.loaded.spec.scorer == new.loaded.spec.scorer
    result.scores_reused = same_scorer and scoring_part(old.loaded.spec) == scoring_part(new.loaded.spec)
    names = list(dict.fromkeys([*old.rules.classes, *new.rules.classes]))
    tally = _Tally(names, sample)
    with Aside(store.engine, "diff-reader") as aside:
        for chunk in iter_item_chunks(store, model_id, size=chunk_size):
            result.items += len(chunk.ids)
            result.missing += chunk.missing
            # The other policies' stored actions are read while this chunk is scored.
            others = aside.submit(stored_actions, store, leave_out={old.name, new.name}, item_ids=chunk.ids)
            _diff_chunk(store, old, new, chunk, others, rules, names, result, tally)
    result.classes = [
        ClassChange(
            name=name,
            fired_old=int(tally.fired_old[j]),
            fired_new=int(tally.fired_new[j]),
            newly_fired=int(tally.newly[j]),
            no_longer_fired=int(tally.no_longer[j]),
            action_changed=int(tally.action_changed[j]),
        )
        for j, name in enumerate(names)
    ]
    # The sample: items whose decision moved first, then those whose fired classes changed.
    result.sample = (tally.moved + tally.touched)[:sample]
    return result


def _diff_chunk(
    store: Store,
    old: CompiledPolicy,
    new: CompiledPolicy,
    items: ItemChunk,
    stored: Future[dict[int, int]],
    rules: Sequence[SecondOpinionRule] | None,
    names: list[str],
    result: PolicyDiff,
    tally: _Tally,
) -> None:
    if not items.ids:
        return
    old_scored = score_matrix(old, items.matrix)
    if result.scores_reused:
        new_scored = MatrixScores(old_scored.scores, old_scored.evidence, apply_rules(new.rules, old_scored.scores))
    else:
        new_scored = score_matrix(new, items.matrix)

    sev_old = _fired(item_severity(store, old, old_scored, items, rules), old.rules.classes, names)
    sev_new = _fired(item_severity(store, new, new_scored, items, rules), new.rules.classes, names)
    act_old, act_new = policy_actions(sev_old), policy_actions(sev_new)

    others = stored.result()
    other = np.array([others.get(i, 0) for i in items.ids], dtype=np.int8)
    dec_old, dec_new = np.maximum(other, act_old), np.maximum(other, act_new)

    moved = dec_old != dec_new
    result.decisions_changed += int(moved.sum())
    for a, b in zip(dec_old[moved].tolist(), dec_new[moved].tolist(), strict=True):
        result.decision_moves[f"{ACTIONS[a].value} -> {ACTIONS[b].value}"] += 1
    result.actions_changed += int((act_old != act_new).sum())
    tag_old, tag_new = sev_old == TAG, sev_new == TAG
    result.tags_changed += int((tag_old != tag_new).any(axis=1).sum())
    result.tags_added += int((tag_new & ~tag_old).sum())
    result.tags_removed += int((tag_old & ~tag_new).sum())
    fo, fn = sev_old > 0, sev_new > 0
    tally.fired_old += fo.sum(axis=0)
    tally.fired_new += fn.sum(axis=0)
    tally.newly += (fn & ~fo).sum(axis=0)
    tally.no_longer += (fo & ~fn).sum(axis=0)
    tally.action_changed += (fo & fn & (sev_old != sev_new)).sum(axis=0)

    touched = (sev_old != sev_new).any(axis=1)
    picks = (
        (tally.moved, np.flatnonzero(moved)),
        (tally.touched, np.flatnonzero(touched & ~moved)),
    )
    for kept, found in picks:
        for i in found[: tally.sample - len(kept)].tolist():
            row = int(items.row[i])
            changed = [j for j in range(len(names)) if sev_old[i, j] != sev_new[i, j]]
            kept.append(
                ChangedItem(
                    uri=items.uris[i],
                    decision_old=ACTIONS[dec_old[i]].value,
                    decision_new=ACTIONS[dec_new[i]].value,
                    action_old=ACTIONS[act_old[i]].value,
                    action_new=ACTIONS[act_new[i]].value,
                    fired_added=[f"{names[j]}:{ACTIONS[sev_new[i, j]].value}" for j in changed if sev_new[i, j]],
                    fired_removed=[f"{names[j]}:{ACTIONS[sev_old[i, j]].value}" for j in changed if sev_old[i, j]],
                    scores={
                        names[j]: (
                            _score(old_scored, old.rules.classes, row, names[j]),
                            _score(new_scored, new.rules.classes, row, names[j]),
                        )
                        for j in changed
                    },
                )
            )


def _score(scored: MatrixScores, classes: tuple[str, ...], row: int, name: str) -> float | None:
    return round(float(scored.scores[row, classes.index(name)]), 4) if name in classes else None
