"""Loaded policy + scorer plugin -> a CompiledPolicy that turns a batch into PolicyResults."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from moderator.decide import DecisionRules, PolicyMeta, decide_rows
from moderator.errors import ScorerUnavailable
from moderator.policy.load import LoadedPolicy, PolicyError
from moderator.scorers import CompiledScorer, ScorerContext, ScoringBatch, get_scorer
from moderator.types import PolicyResult, PolicySkipped


@dataclass
class CompiledPolicy:
    loaded: LoadedPolicy
    scorer: CompiledScorer
    rules: DecisionRules

    @property
    def name(self) -> str:
        return self.loaded.spec.name

    @property
    def meta(self) -> PolicyMeta:
        return PolicyMeta(
            policy=self.loaded.spec.name,
            policy_version=self.loaded.version,
            scorer=self.loaded.spec.scorer,
            model_id=self.scorer.model_id,
        )

    def evaluate(self, batch: ScoringBatch) -> list[PolicyResult]:
        """One PolicyResult per item of the batch, in order."""
        out = self.scorer.score(batch)
        n = len(batch.sha256)
        shape = (n, len(self.rules.classes))
        if out.scores.shape != shape or len(out.evidence) != n:
            raise ValueError(
                f"scorer {self.loaded.spec.scorer!r} returned scores of shape {out.scores.shape}, not {shape}"
            )
        # Not clipped: a score outside [0, 1] is a scorer bug that thresholds would silently hide.
        if not ((out.scores >= 0) & (out.scores <= 1)).all():
            raise ValueError(f"scorer {self.loaded.spec.scorer!r} returned scores outside [0, 1] (or NaN)")
        return decide_rows(self.rules, self.meta, out.scores, out.evidence)


def compile_policy(loaded: LoadedPolicy, ctx: ScorerContext) -> CompiledPolicy | PolicySkipped:
    """Compile with the policy's scorer plugin; PolicySkipped when it cannot run here.

    A scorer that rejects the policy (ValueError, e.g. bad options) raises a PolicyError
    located at the policy's ``options`` (or ``scorer``) line.
    """
    spec = loaded.spec
    try:
        plugin = get_scorer(spec.scorer)
    except KeyError as e:
        return PolicySkipped(policy=spec.name, reason=str(e.args[0]))
    try:
        compiled = plugin.compile(spec, dataclasses.replace(ctx, policy_file=loaded.path))
    except ScorerUnavailable as e:
        return PolicySkipped(policy=spec.name, reason=str(e))
    except ValueError as e:
        where = "options" if spec.options else "scorer"
        raise PolicyError(loaded.path, str(e), line=loaded.line_of((where,)), field=where) from e
    if list(compiled.class_names) != spec.class_names():
        raise PolicyError(
            loaded.path,
            f"scorer {spec.scorer!r} compiled classes {compiled.class_names}, expected {spec.class_names()}",
            field="scorer",
        )
    return CompiledPolicy(loaded=loaded, scorer=compiled, rules=DecisionRules.from_spec(spec))
