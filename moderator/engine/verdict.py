"""Prepared items -> verdicts: the one scoring path, for the scan, the workers, `policy test`, `eval`, the API.

Byte policies first, on the bytes alone (an exact known-bad block settles the item: it is
never decoded nor shown to a model), then image and embedding policies on what the
Preparer made, then second opinions across policies, then the item's decision.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from moderator.decide import SecondOpinionRule, apply_second_opinions, item_decision, second_opinion_rules
from moderator.engine.compile import CompiledPolicy, compile_policy
from moderator.engine.prepare import Needs, PreparedItem, Preparer, Skip
from moderator.models import load_clip
from moderator.scorers import ScorerContext, ScorerInput, ScoringBatch
from moderator.stages import StageTimer
from moderator.types import Action, PolicySkipped, SourceItem

if TYPE_CHECKING:
    from moderator.models.clip import ClipModel
    from moderator.policy.load import LoadedPolicy
    from moderator.settings import Settings
    from moderator.store import Store


def needs_of(policies: Iterable[CompiledPolicy]) -> Needs:
    """Byte policies run in the byte stage, on the bytes as read: they need nothing kept."""
    kinds = {p.scorer.input for p in policies}
    return Needs(images=ScorerInput.IMAGE in kinds, embeddings=ScorerInput.EMBEDDING in kinds)


@dataclass
class PolicySet:
    """Compiled policies grouped by what they read, and the policies that cannot run here."""

    policies: list[CompiledPolicy]
    not_run: list[PolicySkipped] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.byte_policies = [p for p in self.policies if p.scorer.input is ScorerInput.BYTES]
        self.later_policies = [p for p in self.policies if p.scorer.input is not ScorerInput.BYTES]
        self.needs = needs_of(self.policies)
        self.second_opinion_rules: list[SecondOpinionRule] = second_opinion_rules(p.loaded.spec for p in self.policies)

    def input_signature(self) -> tuple[tuple[str, int, int], ...]:
        """(path, mtime, size) of every file a scorer read when compiled (hash lists): what makes it stale."""
        out = []
        for policy in self.policies:
            for path in getattr(policy.scorer, "files", ()):  # scorers that read files at compile time name them
                try:
                    st = os.stat(path)
                    out.append((str(path), st.st_mtime_ns, st.st_size))
                except OSError:
                    out.append((str(path), -1, -1))
        return tuple(out)

    @property
    def versions(self) -> dict[str, str]:
        return {p.name: p.loaded.version for p in self.policies}

    @property
    def policy_models(self) -> dict[str, str]:
        return {p.name: p.scorer.model_id for p in self.policies}

    def score_bytes(self, items: Sequence[PreparedItem], timer: StageTimer | None = None) -> None:
        """Byte policies on the bytes alone; an item one of them blocks is settled."""
        ready = [p for p in items if p.ok and not p.settled]
        if not ready or not self.byte_policies:
            return
        batch = ScoringBatch(sha256=[p.sha256 or "" for p in ready], data=[p.data or b"" for p in ready])
        with (timer or StageTimer()).time("score_bytes"):
            for policy in self.byte_policies:
                for p, result in zip(ready, policy.evaluate(batch), strict=True):
                    p.results.append(result)
        for p in ready:
            # A known-bad exact match is final: no decoding, no model work for it.
            p.settled = any(r.action is Action.BLOCK for r in p.results)

    def score(self, items: Sequence[PreparedItem], timer: StageTimer | None = None) -> None:
        """Image and embedding policies, second opinions, each item's decision (frames are released)."""
        ready = [p for p in items if p.ok and not p.settled]
        if ready and self.later_policies:
            batch = ScoringBatch(
                sha256=[p.sha256 or "" for p in ready],
                frames=[p.frames or [] for p in ready] if self.needs.images else None,
                embeddings=[p.embedding for p in ready] if self.needs.embeddings else None,  # type: ignore[misc]
                frame_times=[p.item.meta.get("frame_times") for p in ready],
            )
            with (timer or StageTimer()).time("score"):
                for policy in self.later_policies:
                    if policy.scorer.input is ScorerInput.EMBEDDING and any(p.embedding is None for p in ready):
                        continue  # unreachable unless the model failed; guarded so nothing is misattributed
                    for p, result in zip(ready, policy.evaluate(batch), strict=True):
                        p.results.append(result)
        for p in items:
            p.frames = None
            if p.ok:
                p.results = apply_second_opinions(p.results, self.second_opinion_rules)
                p.decision = item_decision(p.results)

    def judge(
        self,
        items: Iterable[SourceItem],
        settings: Settings,
        *,
        store: Store | None = None,
        skip: Skip | None = None,
        timer: StageTimer | None = None,
        clip: Callable[[], ClipModel] | None = None,
    ) -> Generator[list[PreparedItem], None, None]:
        """Source items -> scored and decided PreparedItems, a batch at a time (close it to stop early).

        Items that `skip` drops are not yielded. With a store, embeddings are reused and stored.
        """
        timer = timer or StageTimer()

        def byte_stage(batch: list[PreparedItem]) -> None:
            self.score_bytes(batch, timer)

        preparer = Preparer(settings, self.needs, store=store, clip=clip, timer=timer, skip=skip, byte_stage=byte_stage)
        batches = preparer.batches(items)
        try:
            for batch in batches:
                self.score(batch, timer)
                yield batch
        finally:
            batches.close()

    def judge_all(
        self, items: Iterable[SourceItem], settings: Settings, *, store: Store | None = None
    ) -> list[PreparedItem]:
        """judge() flattened, for a few items (policy test, a request)."""
        return [p for batch in self.judge(items, settings, store=store) for p in batch]


def compile_policies(
    loaded: Iterable[LoadedPolicy], settings: Settings, clip: Callable[[], ClipModel] | None = None
) -> PolicySet:
    """Every policy compiled; those that cannot run here (no weights, no package) listed in not_run.

    A policy its scorer rejects raises PolicyError (located at its options or scorer line).
    """
    ctx = ScorerContext(settings=settings, clip=clip or (lambda: load_clip(settings)))
    compiled: list[CompiledPolicy] = []
    not_run: list[PolicySkipped] = []
    for policy in loaded:
        result = compile_policy(policy, ctx)
        if isinstance(result, PolicySkipped):
            not_run.append(result)
        else:
            compiled.append(result)
    return PolicySet(compiled, not_run)
