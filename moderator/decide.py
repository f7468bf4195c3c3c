"""Scores -> actions, the same for every scorer (pure: no I/O, no models).

A class fires when its score >= a threshold (so threshold 0 always fires); with a
band (``actions: {review: 0.3, block: 0.7}``) its action is the most severe band
reached. A policy's action is the most severe among its fired classes, ALLOW when
none fires; an item's decision is the most severe over its policies.

apply_rules is the one implementation of that rule, vectorised over rows: the scan
(decide_rows), rescore and policy diff use it, and the store only formats what it decided.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from moderator.policy.schema import PolicySpec
from moderator.types import Action, FiredClass, PolicyResult, most_severe

ACTIONS: tuple[Action, ...] = tuple(sorted(Action, key=lambda a: a.severity))  # index = severity


@dataclass(frozen=True)
class Band:
    threshold: float
    action: Action


@dataclass(frozen=True)
class DecisionRules:
    """Per class (in the policy's class order) its bands, least severe first; () never fires."""

    classes: tuple[str, ...]
    bands: tuple[tuple[Band, ...], ...]

    @classmethod
    def from_spec(cls, spec: PolicySpec) -> DecisionRules:
        return cls(
            classes=tuple(spec.classes),
            bands=tuple(
                tuple(Band(threshold, Action(action)) for threshold, action in c.bands()) for c in spec.classes.values()
            ),
        )


@dataclass(frozen=True)
class PolicyMeta:
    """What a result records about who produced it."""

    policy: str
    policy_version: str
    scorer: str
    model_id: str


@dataclass(frozen=True)
class Decided:
    """The rule applied to N rows of one policy's scores [N, C]."""

    severity: np.ndarray  # int8 [N, C]: severity of the most severe band reached (0: the class did not fire)
    threshold: np.ndarray  # float64 [N, C]: that band's threshold (NaN when none)
    action: np.ndarray  # int8 [N]: the policy's action, as a severity (0: allow)


def apply_rules(rules: DecisionRules, scores: np.ndarray) -> Decided:
    """The decision rule, the one implementation every caller uses: per row and class, the most
    severe band whose threshold the score reaches (score >= threshold); per row, the most
    severe action among the fired classes."""
    if scores.ndim != 2 or scores.shape[1] != len(rules.classes):
        raise ValueError(f"{len(rules.classes)} classes but scores of shape {scores.shape}")
    # float64: a float32 score compared with a float32-rounded threshold could fire below it.
    values = np.asarray(scores, dtype=np.float64)
    n, c = values.shape
    severity = np.zeros((n, c), np.int8)
    threshold = np.full((n, c), np.nan)
    for j, bands in enumerate(rules.bands):
        for band in bands:  # a band reached wins over a less severe one, whatever their order
            reached = (values[:, j] >= band.threshold) & (band.action.severity > severity[:, j])
            severity[reached, j] = band.action.severity
            threshold[reached, j] = band.threshold
    return Decided(severity, threshold, policy_actions(severity))


def policy_actions(severity: np.ndarray) -> np.ndarray:
    """int8 [N]: per row of fired severities [N, C], the policy's action (the most severe; 0 when none fired)."""
    return np.asarray(severity.max(axis=1, initial=0), dtype=np.int8)


def policy_result(
    rules: DecisionRules,
    meta: PolicyMeta,
    scores: Sequence[float],
    severity: Sequence[int],
    threshold: Sequence[float],
    evidence: Sequence[str],
    action: int,
) -> PolicyResult:
    """One row of apply_rules (plain lists, as ndarray.tolist() gives them) as a PolicyResult."""
    classes = rules.classes
    fired = tuple(
        FiredClass(name=classes[j], action=ACTIONS[sev], score=scores[j], threshold=threshold[j], evidence=evidence[j])
        for j, sev in enumerate(severity)
        if sev
    )
    return PolicyResult(
        policy=meta.policy,
        policy_version=meta.policy_version,
        scorer=meta.scorer,
        model_id=meta.model_id,
        scores=dict(zip(classes, scores, strict=True)),
        fired=fired,
        action=ACTIONS[action],
    )


def decide_rows(
    rules: DecisionRules, meta: PolicyMeta, scores: np.ndarray, evidence: Sequence[Sequence[str]]
) -> list[PolicyResult]:
    """Verdicts for one policy from per-row, per-class scores [N, C] and evidence [N][C]."""
    if scores.ndim != 2 or scores.shape[1] != len(rules.classes) or len(evidence) != scores.shape[0]:
        raise ValueError(
            f"policy {meta.policy!r}: {len(rules.classes)} classes but scores of shape {scores.shape} "
            f"and {len(evidence)} rows of evidence"
        )
    decided = apply_rules(rules, scores)
    values = np.asarray(scores, dtype=np.float64).tolist()
    severity, threshold, action = decided.severity.tolist(), decided.threshold.tolist(), decided.action.tolist()
    return [
        policy_result(rules, meta, values[i], severity[i], threshold[i], evidence[i], action[i])
        for i in range(len(values))
    ]


def decide(rules: DecisionRules, meta: PolicyMeta, scores: np.ndarray, evidence: Sequence[str]) -> PolicyResult:
    """One item's verdict for one policy from its per-class scores [C] and evidence [C]."""
    if scores.shape != (len(rules.classes),) or len(evidence) != len(rules.classes):
        raise ValueError(
            f"policy {meta.policy!r}: {len(rules.classes)} classes but scores of shape {scores.shape} "
            f"and {len(evidence)} evidence strings"
        )
    return decide_rows(rules, meta, scores[None, :], [evidence])[0]


def item_decision(results: Iterable[PolicyResult]) -> Action:
    """The most severe action over an item's policies (ALLOW when nothing fired)."""
    return most_severe(r.action for r in results)


# --- second opinions (across policies, after every policy ran on an item) --------------


@dataclass(frozen=True)
class SecondOpinionRule:
    """Class `class_name` of `policy` keeps `top` only when `needs` (policy, class) fired too."""

    policy: str
    class_name: str
    top: Action
    needs: tuple[str, str]
    otherwise: Action


def second_opinion_rules(specs: Iterable[PolicySpec]) -> list[SecondOpinionRule]:
    """Every policy's `second_opinion:` entries (the schema checked them against the policy's own classes)."""
    return [
        SecondOpinionRule(
            policy=spec.name,
            class_name=name,
            top=Action(spec.classes[name].bands()[-1][1]),
            needs=(rule.policy, rule.class_name),
            otherwise=Action(rule.otherwise),
        )
        for spec in specs
        for name, rule in spec.second_opinion.items()
    ]


def apply_second_opinions(results: Sequence[PolicyResult], rules: Sequence[SecondOpinionRule]) -> list[PolicyResult]:
    """One item's results with second opinions applied: a class at its most severe action
    without the agreement it needs is downgraded; the evidence says which signals fired.

    Agreement is judged on the results as scored (before any downgrade), so rules in both
    directions are symmetric; a policy that did not run for the item counts as not agreeing.
    """
    if not rules:
        return list(results)
    fired = {(r.policy, f.name): f for r in results for f in r.fired}
    scored = {(r.policy, c): s for r in results for c, s in r.scores.items()}
    by_class = {(rule.policy, rule.class_name): rule for rule in rules}
    out = []
    for result in results:
        changed = [_second_opinion(f, by_class.get((result.policy, f.name)), fired, scored) for f in result.fired]
        if changed == list(result.fired):
            out.append(result)
            continue
        out.append(replace(result, fired=tuple(changed), action=most_severe(f.action for f in changed)))
    return out


def _second_opinion(
    f: FiredClass,
    rule: SecondOpinionRule | None,
    fired: dict[tuple[str, str], FiredClass],
    scored: dict[tuple[str, str], float],
) -> FiredClass:
    if rule is None or f.action is not rule.top:
        return f
    other, name = fired.get(rule.needs), ".".join(rule.needs)
    first = f"{f.evidence}; " if f.evidence else ""
    if other is not None:
        return replace(f, evidence=f"{first}second opinion {name} fired too ({other.score:.3f} >= {other.threshold:g})")
    score = scored.get(rule.needs)
    why = "did not run" if score is None else f"did not fire ({score:.3f})"
    evidence = f"{first}{rule.top} needs {name} to agree: it {why}; {rule.otherwise}"
    return replace(f, action=rule.otherwise, evidence=evidence)
