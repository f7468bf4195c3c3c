"""compile_policy: scorer plugin lookup, skipped policies, and evaluate() -> PolicyResults.

The CLIP model is a ClipModel-like object whose text encoder returns known unit
vectors, so every score below can be worked out by hand.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from moderator import plugins
from moderator.decide import item_decision
from moderator.engine.compile import CompiledPolicy, compile_policy
from moderator.errors import ScorerUnavailable
from moderator.models.text_cache import TextEmbeddingCache
from moderator.policy import LoadedPolicy, PolicyError, load_policies, load_policy
from moderator.scorers import GROUP, ClassScores, ScorerContext, ScorerInput, ScoringBatch, zero_shot
from moderator.settings import SHIPPED_POLICIES, Settings
from moderator.types import Action, PolicySkipped

D = 8
L = 100.0

NSFW = """
name: nsfw
mode: exclusive
templates: ["a photo of {}."]
classes:
  neutral: {prompts: ["a landscape"]}
  explicit:
    prompts: ["explicit nudity"]
    actions: {review: 0.3, block: 0.7}
"""
TAGS = """
name: tags
mode: multilabel
templates: ["a photo of {}."]
negatives: ["something"]
classes:
  dog: {prompts: ["a dog"], threshold: 0.6, action: tag}
  cat: {prompts: ["a cat"], threshold: 0.6, action: tag}
"""
AXIS = {"a photo of a landscape.": 0, "a photo of explicit nudity.": 1, "a photo of a dog.": 2,
        "a photo of a cat.": 3, "a photo of something.": 4}  # fmt: skip


def unit(*weights: float) -> np.ndarray:
    v = np.array(weights + (0.0,) * (D - len(weights)), dtype=np.float32)
    return v / np.linalg.norm(v)


class FakeClip:
    model_id = "fake-clip"
    logit_scale = L

    def encode_text(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), D), dtype=np.float32)
        for i, text in enumerate(texts):
            if text in AXIS:
                out[i, AXIS[text]] = 1.0
            else:  # any other prompt (shipped policies): a fixed direction from its hash, not a score
                seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")
                out[i] = np.random.default_rng(seed).normal(size=D)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


@pytest.fixture(autouse=True)
def isolated_text_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(zero_shot.scorer, "cache", TextEmbeddingCache(tmp_path / "text-cache"))


@pytest.fixture
def ctx() -> ScorerContext:
    return ScorerContext(settings=Settings(), clip=lambda: FakeClip())


@pytest.fixture
def register() -> Iterator[Callable[[str, object], None]]:
    registry = plugins._load(GROUP)
    added: list[str] = []

    def add(name: str, plugin: object) -> None:
        registry[name] = plugin
        added.append(name)

    yield add
    for name in added:
        registry.pop(name, None)


def compiled(write_policy: Callable[..., Path], text: str, ctx: ScorerContext, name: str = "p.yaml") -> CompiledPolicy:
    result = compile_policy(load_policy(write_policy(text, name)), ctx)
    assert isinstance(result, CompiledPolicy), result
    return result


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_evaluate_records_scores_version_scorer_and_model(
    write_policy: Callable[..., Path], ctx: ScorerContext
) -> None:
    policy = compiled(write_policy, NSFW, ctx)
    [result] = policy.evaluate(ScoringBatch(sha256=["x"], embeddings=[unit(1, 1)[None]]))
    assert result.scores == {"neutral": 0.5, "explicit": 0.5}  # a tie: exactly one half
    assert [(f.name, f.action, f.threshold, f.evidence) for f in result.fired] == [
        ("explicit", Action.REVIEW, 0.3, "explicit nudity")
    ]
    assert (result.policy, result.policy_version) == ("nsfw", policy.loaded.version)
    assert (result.scorer, result.model_id, result.action) == ("clip", "fake-clip", Action.REVIEW)


def test_several_policies_decide_an_item(write_policy: Callable[..., Path], ctx: ScorerContext) -> None:
    policies = [compiled(write_policy, NSFW, ctx, "nsfw.yaml"), compiled(write_policy, TAGS, ctx, "tags.yaml")]
    # a landscape with a dog; explicit with a cat (animated: the explicit frame counts); a landscape with a cat
    items = [unit(1, 0, 1), np.stack([unit(0, 0, 0, 1), unit(0, 1, 0, 1)]), unit(1, 0, 0, 1)]
    batch = ScoringBatch(sha256=["a", "b", "c"], embeddings=[x if x.ndim == 2 else x[None] for x in items])
    per_policy = [p.evaluate(batch) for p in policies]
    by_item = list(zip(*per_policy, strict=True))
    assert [item_decision(results) for results in by_item] == [Action.TAG, Action.BLOCK, Action.TAG]
    assert by_item[0][1].tags == ["dog"]
    assert by_item[1][0].flags == ["explicit"]
    assert by_item[1][0].fired[0].evidence == "explicit nudity (frame 1)"
    assert by_item[1][1].tags == ["cat"]
    assert by_item[2][0].action is Action.ALLOW
    assert by_item[2][1].scores == pytest.approx({"dog": 0.5, "cat": sigmoid(L / math.sqrt(2))})


def test_unavailable_model_skips_the_policy(write_policy: Callable[..., Path]) -> None:
    def no_weights() -> FakeClip:
        raise ScorerUnavailable("no CLIP weights here: set MODERATOR_PRETRAINED to a local checkpoint")

    loaded = load_policy(write_policy(NSFW))
    result = compile_policy(loaded, ScorerContext(settings=Settings(), clip=no_weights))
    assert result == PolicySkipped(
        policy="nsfw", reason="no CLIP weights here: set MODERATOR_PRETRAINED to a local checkpoint"
    )


def test_unknown_scorer_skips_the_policy(write_policy: Callable[..., Path], ctx: ScorerContext) -> None:
    text = NSFW.replace("mode: exclusive", "mode: exclusive\nscorer: not-installed")
    result = compile_policy(load_policy(write_policy(text)), ctx)
    assert isinstance(result, PolicySkipped)
    assert "not-installed" in result.reason


class FixedScorer:
    """A plugin returning given scores: checks evaluate()'s contract with any scorer."""

    name = "fixed"
    input = ScorerInput.EMBEDDING

    def __init__(self, scores: list[float], bad_options: bool = False) -> None:
        self.scores = scores
        self.bad_options = bad_options
        self.seen_file: Path | None = None

    def compile(self, spec: object, ctx: ScorerContext) -> FixedScorer:
        self.seen_file = ctx.policy_file
        if self.bad_options:
            raise ValueError("options.k must be a positive integer")
        self.class_names = ["neutral", "explicit"]
        self.model_id = "fixed-1"
        return self

    def score(self, batch: ScoringBatch) -> ClassScores:
        n = len(batch.sha256)
        return ClassScores(np.array([self.scores] * n), [["", "why"]] * n)


def test_plugin_scorer_feeds_the_same_decisions(
    write_policy: Callable[..., Path], ctx: ScorerContext, register: Callable[[str, object], None]
) -> None:
    plugin = FixedScorer([0.2, 0.7])
    register("fixed", plugin)
    path = write_policy(NSFW.replace("mode: exclusive", "mode: exclusive\nscorer: fixed"))
    policy = compile_policy(load_policy(path), ctx)
    assert isinstance(policy, CompiledPolicy)
    assert plugin.seen_file == path  # scorers resolve their files relative to the policy
    [result] = policy.evaluate(ScoringBatch(sha256=["x"]))
    assert (result.scorer, result.model_id, result.action) == ("fixed", "fixed-1", Action.BLOCK)


def test_scores_outside_unit_interval_are_a_scorer_bug(
    write_policy: Callable[..., Path], ctx: ScorerContext, register: Callable[[str, object], None]
) -> None:
    register("fixed", FixedScorer([0.2, 1.5]))
    policy = compile_policy(load_policy(write_policy(NSFW.replace("mode: exclusive", "scorer: fixed"))), ctx)
    assert isinstance(policy, CompiledPolicy)
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        policy.evaluate(ScoringBatch(sha256=["x"]))


def test_scorer_refusing_the_policy_is_a_located_error(
    write_policy: Callable[..., Path], ctx: ScorerContext, register: Callable[[str, object], None]
) -> None:
    register("fixed", FixedScorer([0.0, 0.0], bad_options=True))
    text = NSFW.replace("mode: exclusive", "scorer: fixed\noptions: {k: -1}")
    path = write_policy(text)
    with pytest.raises(PolicyError) as info:
        compile_policy(load_policy(path), ctx)
    assert (info.value.file, info.value.line, info.value.field) == (path, 3, "options")
    assert "positive integer" in info.value.message


def test_shipped_policies_compile(ctx: ScorerContext) -> None:
    loaded: list[LoadedPolicy] = load_policies([SHIPPED_POLICIES])
    clip_policies = [p for p in loaded if p.spec.scorer == "clip"]
    assert {p.name for p in clip_policies} >= {"nsfw", "violence", "tags"}
    batch = ScoringBatch(sha256=["x"], embeddings=[unit(1, 2, 3, 4, 5, 6, 7, 8)[None]])
    for policy in clip_policies:
        result = compile_policy(policy, ctx)
        assert isinstance(result, CompiledPolicy)
        [out] = result.evaluate(batch)
        assert list(out.scores) == policy.spec.class_names()
        assert out.policy_version == policy.version
