"""CLIP zero-shot scoring with injected, hand-made embeddings whose right answers are known.

Prompts and images are unit basis vectors (or normalised sums of them), so every
similarity is 0, 1 or 1/sqrt(2) and every score can be written down by hand.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from moderator.models.ids import model_id_for
from moderator.models.text_cache import TextEmbeddingCache
from moderator.policy.schema import Mode, PolicySpec
from moderator.scorers import ScorerContext, ScorerInput, ScoringBatch, get_scorer
from moderator.scorers.zero_shot import (
    NEGATIVE,
    PromptSet,
    ZeroShotScorer,
    ensemble,
    fill,
    frame_scores,
    prompt_texts,
    text_key,
    zero_shot_scores,
)
from moderator.settings import Settings

D = 6
L = 10.0  # logit scale


def e(*axes: int) -> np.ndarray:
    """Unit vector along the sum of the given axes."""
    v = np.zeros(D, dtype=np.float32)
    v[list(axes)] = 1.0
    return v / np.linalg.norm(v)


def prompt_set(owners: list[int], axes: list[int], n_classes: int) -> PromptSet:
    return PromptSet(
        embeddings=np.stack([e(a) for a in axes]),
        owner=np.array(owners),
        prompts=tuple(f"p{a}" for a in axes),
        n_classes=n_classes,
    )


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# class 0 -> axis 0; class 1 -> axes 1 and 2 (two prompts); negative -> axis 5
PROMPTS = prompt_set([0, 1, 1, NEGATIVE], [0, 1, 2, 5], n_classes=2)


def test_exclusive_is_a_softmax_across_classes() -> None:
    item = zero_shot_scores(e(0)[None], PROMPTS, L, Mode.EXCLUSIVE)
    # sims: class 0 = 1, class 1 = 0 (the negative plays no part in exclusive mode)
    assert item.scores == pytest.approx([sigmoid(L), 1 - sigmoid(L)], rel=1e-12)
    assert item.scores.sum() == pytest.approx(1.0)


def test_exclusive_tie_is_exactly_one_half() -> None:
    item = zero_shot_scores(e(0, 1)[None], PROMPTS, L, Mode.EXCLUSIVE)
    assert item.scores.tolist() == [0.5, 0.5]


def test_multilabel_judges_each_class_against_the_negatives() -> None:
    only_0 = zero_shot_scores(e(0)[None], PROMPTS, L, Mode.MULTILABEL)
    assert only_0.scores == pytest.approx([sigmoid(L), 0.5], rel=1e-12)  # class 1 ties with the negative
    both = zero_shot_scores(e(0, 1)[None], PROMPTS, L, Mode.MULTILABEL)
    assert both.scores == pytest.approx([sigmoid(L / math.sqrt(2))] * 2, rel=1e-6)  # independent: sum > 1
    negative = zero_shot_scores(e(5)[None], PROMPTS, L, Mode.MULTILABEL)
    assert negative.scores == pytest.approx([sigmoid(-L)] * 2, rel=1e-12)


def test_evidence_is_the_best_matching_prompt() -> None:
    item = zero_shot_scores(e(2)[None], PROMPTS, L, Mode.EXCLUSIVE)
    assert [PROMPTS.prompts[p] for p in item.prompt] == ["p0", "p2"]
    assert item.scores[1] == pytest.approx(sigmoid(L))


def test_frames_keep_the_worst_per_class() -> None:
    frames = np.stack([e(0), e(1), e(3)])
    item = zero_shot_scores(frames, PROMPTS, L, Mode.EXCLUSIVE)
    assert item.scores == pytest.approx([sigmoid(L), sigmoid(L)])
    assert item.frame.tolist() == [0, 1]


def test_wrong_dimension_is_refused() -> None:
    with pytest.raises(ValueError, match="different models"):
        zero_shot_scores(np.ones((1, D + 1)), PROMPTS, L, Mode.EXCLUSIVE)


def test_ensemble_averages_templates_per_prompt_and_renormalises() -> None:
    per_template = np.stack([e(0), e(1), e(2), e(2)])  # prompt 0 in two templates, then prompt 1
    out = ensemble(per_template, n_templates=2)
    assert out == pytest.approx(np.stack([e(0, 1), e(2)]))


# Compiling: a ClipModel-like object whose text encoder returns known vectors.


class FakeClip:
    def __init__(self, vectors: dict[str, np.ndarray], model_id: str = "fake/1") -> None:
        self.vectors = vectors
        self.model_id = model_id
        self.logit_scale = L
        self.calls: list[list[str]] = []

    def encode_text(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return np.stack([self.vectors[t] for t in texts]).astype(np.float32)


SPEC: dict[str, Any] = {
    "name": "pets",
    "mode": "multilabel",
    "templates": ["a photo of {}.", "a drawing of {}."],
    "negatives": ["something"],
    "classes": {
        "cat": {"prompts": ["a cat"], "threshold": 0.5, "action": "tag"},
        "dog": {"prompts": ["a dog", "a puppy"], "threshold": 0.5, "action": "tag"},
    },
}
VECTORS = {
    "a photo of a cat.": e(0),
    "a drawing of a cat.": e(1),
    "a photo of a dog.": e(2),
    "a drawing of a dog.": e(2),
    "a photo of a puppy.": e(3),
    "a drawing of a puppy.": e(3),
    "a photo of something.": e(5),
    "a drawing of something.": e(5),
}


def compile_with(clip: FakeClip, cache_dir: Path, **changes: Any) -> Any:
    spec = PolicySpec.model_validate({**SPEC, **changes})
    ctx = ScorerContext(settings=Settings(), clip=lambda: clip)
    return ZeroShotScorer(cache=TextEmbeddingCache(cache_dir)).compile(spec, ctx)


def test_entry_point_is_this_scorer() -> None:
    plugin = get_scorer("clip")
    assert isinstance(plugin, ZeroShotScorer)
    assert plugin.input is ScorerInput.EMBEDDING


def test_compiled_scorer_fills_templates_and_scores_a_batch(tmp_path: Path) -> None:
    clip = FakeClip(VECTORS)
    compiled = compile_with(clip, tmp_path)
    assert compiled.class_names == ["cat", "dog"]
    assert compiled.model_id == "fake/1"
    assert sorted(clip.calls[0]) == sorted(VECTORS)
    # The cat prompt is the mean of its two template vectors; a cat image along it has similarity 1.
    cat_image = e(0, 1)[None]
    puppy_then_cat = np.stack([e(3), e(0, 1)])
    batch = ScoringBatch(sha256=["a", "b"], embeddings=[cat_image, puppy_then_cat])
    out = compiled.score(batch)
    assert out.scores[0] == pytest.approx([sigmoid(L), 0.5])
    assert out.scores[1] == pytest.approx([sigmoid(L), sigmoid(L)])
    assert out.evidence[0][0] == "a cat"
    assert out.evidence[1] == ["a cat (frame 1)", "a puppy (frame 0)"]


def test_text_embeddings_are_cached_per_prompts_and_model(tmp_path: Path) -> None:
    clip = FakeClip(VECTORS)
    compile_with(clip, tmp_path)
    compile_with(clip, tmp_path)  # a new process: read from disk
    assert len(clip.calls) == 1
    compile_with(
        clip, tmp_path, classes={**SPEC["classes"], "cat": {"prompts": ["a cat"], "threshold": 0.9, "action": "review"}}
    )
    assert len(clip.calls) == 1  # thresholds do not change text embeddings
    compile_with(FakeClip(VECTORS, model_id="fake/2"), tmp_path)
    other = FakeClip(VECTORS, model_id="fake/2")
    compile_with(other, tmp_path)
    assert other.calls == []  # fake/2 cached by the previous compile
    compile_with(clip, tmp_path, templates=["a photo of {}."])
    assert len(clip.calls) == 2  # templates changed: encode again


def test_scoring_stored_embeddings_with_cached_prompts_never_loads_the_model(tmp_path: Path) -> None:
    spec = PolicySpec.model_validate(SPEC)
    clip = FakeClip(VECTORS, model_id=model_id_for(Settings()))
    loads: list[int] = []

    def load() -> FakeClip:
        loads.append(1)
        return clip

    def compile_stored(cache_dir: Path) -> Any:
        ctx = ScorerContext(settings=Settings(), clip=load, stored_embeddings=True)  # type: ignore[arg-type]
        return ZeroShotScorer(cache=TextEmbeddingCache(cache_dir)).compile(spec, ctx)

    first = compile_stored(tmp_path)
    assert loads == [1]  # nothing cached yet: the model encodes the prompts
    again = compile_stored(tmp_path)  # a new process (a fresh cache object): read from disk
    assert loads == [1]
    assert again.model_id == first.model_id == clip.model_id
    assert again.logit_scale == first.logit_scale == L
    batch = ScoringBatch(sha256=["a"], embeddings=[e(0, 1)[None]])
    assert np.array_equal(again.score(batch).scores, first.score(batch).scores)
    # A scan compiles without stored_embeddings: it needs the model for the images anyway.
    ctx = ScorerContext(settings=Settings(), clip=load)  # type: ignore[arg-type]
    ZeroShotScorer(cache=TextEmbeddingCache(tmp_path)).compile(spec, ctx)
    assert loads == [1, 1]


def test_a_cache_file_without_the_logit_scale_loads_the_model_once(tmp_path: Path) -> None:
    """Files written before the scale was kept: embeddings still good, but the scale must come from the model."""
    spec = PolicySpec.model_validate(SPEC)
    clip = FakeClip(VECTORS, model_id=model_id_for(Settings()))
    old = TextEmbeddingCache(tmp_path)
    texts = [fill(t, p) for p in prompt_texts(spec)[0] for t in spec.templates]
    old.get(text_key(spec), clip.model_id, texts, clip.encode_text)  # no scale, as before
    loads: list[int] = []

    def load() -> FakeClip:
        loads.append(1)
        return clip

    for _ in range(2):
        ctx = ScorerContext(settings=Settings(), clip=load, stored_embeddings=True)  # type: ignore[arg-type]
        compiled = ZeroShotScorer(cache=TextEmbeddingCache(tmp_path)).compile(spec, ctx)
        assert compiled.logit_scale == L
    assert loads == [1]
    assert len(clip.calls) == 1  # by the old writer only: the scale is added to its file, the embeddings kept


def test_corrupt_cache_file_is_recomputed(tmp_path: Path) -> None:
    clip = FakeClip(VECTORS)
    compile_with(clip, tmp_path)
    for f in tmp_path.glob("*.npz"):
        f.write_bytes(b"not an npz")
    compiled = compile_with(clip, tmp_path)
    assert len(clip.calls) == 2
    assert compiled.score(ScoringBatch(sha256=["a"], embeddings=[e(0, 1)[None]])).scores[0][0] == pytest.approx(
        sigmoid(L)
    )


def test_memory_cache_returns_frozen_copies(tmp_path: Path) -> None:
    cache = TextEmbeddingCache(tmp_path)
    encoded = np.stack([e(0), e(1)])
    got = cache.get("k", "m", ["x", "y"], lambda texts: encoded)
    assert not got.flags.writeable
    assert cache.get("k", "m", ["x", "y"], lambda texts: pytest.fail("encoded twice")) is got
    assert np.array_equal(
        TextEmbeddingCache(tmp_path).get("k", "m", ["x", "y"], lambda t: pytest.fail("disk")), encoded
    )
    # Same key, different texts (e.g. a hash collision or a stale file): never trusted.
    assert np.array_equal(
        TextEmbeddingCache(tmp_path).get("k", "m", ["y", "x"], lambda t: encoded[::-1]), encoded[::-1]
    )


def test_an_items_scores_do_not_depend_on_its_batch(tmp_path: Path) -> None:
    compiled = compile_with(FakeClip(VECTORS), tmp_path)
    rng = np.random.default_rng(0)
    items = [rng.normal(size=(n, D)).astype(np.float32) for n in (1, 3, 2, *([1] * 60))]
    items = [x / np.linalg.norm(x, axis=1, keepdims=True) for x in items]
    together = compiled.score(ScoringBatch(sha256=["x"] * len(items), embeddings=items))
    for i in (0, 1, 2, 40):
        alone = compiled.score(ScoringBatch(sha256=["x"], embeddings=[items[i]]))
        assert np.array_equal(alone.scores[0], together.scores[i])  # bit for bit: thresholds compare exactly
        assert alone.evidence[0] == together.evidence[i]
    assert ((together.scores >= 0) & (together.scores <= 1)).all()


def test_frame_scores_are_bit_identical_whatever_the_batch_size() -> None:
    # CLIP-sized vectors: this is where BLAS would switch kernels with the number of rows.
    rng = np.random.default_rng(1)
    prompts = rng.normal(size=(110, 512))
    owner = np.arange(110) % 50  # 50 classes, then 10 negatives
    owner[100:] = NEGATIVE
    prompt_set = PromptSet(
        prompts / np.linalg.norm(prompts, axis=1, keepdims=True), owner, tuple(map(str, range(110))), 50
    )
    frames = rng.normal(size=(300, 512)).astype(np.float32)
    for mode in Mode:
        together, _ = frame_scores(frames, prompt_set, 100.0, mode)
        alone = np.concatenate([frame_scores(frames[i : i + 1], prompt_set, 100.0, mode)[0] for i in range(300)])
        assert np.array_equal(together, alone), mode


def test_worst_frames_of_many_items_is_worst_frame_of_each() -> None:
    from moderator.scorers.zero_shot import worst_frames

    rng = np.random.default_rng(2)
    counts = rng.integers(1, 5, 200)
    starts = np.concatenate([[0], np.cumsum(counts[:-1])])
    per_frame = rng.integers(0, 4, (int(counts.sum()), 6)) / 4  # many ties: the first frame must win
    best = rng.integers(0, 30, per_frame.shape)
    together = worst_frames(per_frame, best, starts)
    for i, (start, n) in enumerate(zip(starts.tolist(), counts.tolist(), strict=True)):
        frame = per_frame[start : start + n].argmax(axis=0)  # numpy's argmax: the first maximum
        cols = np.arange(6)
        assert np.array_equal(together.frame[i], frame)
        assert np.array_equal(together.scores[i], per_frame[start : start + n][frame, cols])
        assert np.array_equal(together.prompt[i], best[start : start + n][frame, cols])
