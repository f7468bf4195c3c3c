"""CLIP zero-shot scorer (entry point ``clip``): image embeddings x prompt embeddings -> scores.

Prompt ensembles: every prompt of a class (and every policy negative) is embedded
in every template; the template embeddings are averaged per prompt and
renormalised. A class's similarity to a frame is that of its best prompt, which
is kept as the evidence. Then, with CLIP's logit scale L:

- exclusive: softmax over classes of L * similarity;
- multilabel: per class, a two-way softmax of L * similarity against L * the best
  negative prompt's similarity (see policy/schema.py).

An item's score per class is the max over its frames (the worst frame counts).
The math is in pure functions over arrays (frame_scores, zero_shot_scores), so
tests inject hand-made embeddings; the scorer only adds the text encoding.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np

from moderator.models.ids import model_id_for
from moderator.models.text_cache import TextEmbeddingCache, default_cache
from moderator.policy.schema import Mode, PolicySpec
from moderator.scorers import ClassScores, ScorerContext, ScorerInput, ScoringBatch

NEGATIVE = -1  # owner index of a policy-level negative prompt
TEXT_BATCH = 256  # texts per encode_text call


@dataclass(frozen=True)
class PromptSet:
    """Per-prompt embeddings [P, d] (template-averaged, unit length), each owned by a class or NEGATIVE."""

    embeddings: np.ndarray
    owner: np.ndarray  # int [P]: class index, or NEGATIVE
    prompts: tuple[str, ...]
    n_classes: int

    def __post_init__(self) -> None:
        missing = sorted(set(range(self.n_classes)) - set(self.owner.tolist()))
        if missing:
            raise ValueError(f"classes {missing} have no prompts")
        if self.embeddings.shape[0] != len(self.prompts) or self.owner.shape != (len(self.prompts),):
            raise ValueError("embeddings, owner and prompts must be aligned")


@dataclass(frozen=True)
class ItemScores:
    scores: np.ndarray  # [C] in [0, 1]
    prompt: np.ndarray  # int [C]: index into PromptSet.prompts of the best prompt, on the worst frame
    frame: np.ndarray  # int [C]: the frame that gave the score


def ensemble(template_emb: np.ndarray, n_templates: int) -> np.ndarray:
    """[P * T, d] embeddings, prompt-major -> [P, d]: mean over templates, renormalised."""
    if template_emb.shape[0] % n_templates:
        raise ValueError(f"{template_emb.shape[0]} embeddings do not divide into {n_templates} templates")
    mean = template_emb.reshape(-1, n_templates, template_emb.shape[-1]).astype(np.float64).mean(axis=1)
    norm = np.linalg.norm(mean, axis=1, keepdims=True)
    return mean / np.maximum(norm, 1e-12)


def frame_scores(
    image_emb: np.ndarray, prompts: PromptSet, logit_scale: float, mode: Mode
) -> tuple[np.ndarray, np.ndarray]:
    """Per frame and class: score [F, C] in [0, 1] and the best prompt's index [F, C]."""
    # einsum, not @: BLAS picks kernels by batch size, so an item's score would depend on its batch.
    sims = np.einsum("fd,pd->fp", image_emb.astype(np.float64), prompts.embeddings.astype(np.float64))
    best = np.empty((sims.shape[0], prompts.n_classes), dtype=np.int64)
    for c in range(prompts.n_classes):  # a loop over classes, not frames: memory stays [F, P]
        idx = np.flatnonzero(prompts.owner == c)
        best[:, c] = idx[sims[:, idx].argmax(axis=1)]  # the first best prompt on ties: deterministic
    logits = logit_scale * np.take_along_axis(sims, best, axis=1)
    if mode is Mode.EXCLUSIVE:
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True), best
    negatives = prompts.owner == NEGATIVE
    if not negatives.any():
        raise ValueError("multilabel scoring needs negative prompts")
    neg = logit_scale * sims[:, negatives].max(axis=1, keepdims=True)
    # softmax of [class, negative] = sigmoid(class - negative); stable for either sign.
    return 0.5 * (1.0 + np.tanh(0.5 * (logits - neg))), best


def worst_frame(per_frame: np.ndarray, best: np.ndarray) -> ItemScores:
    """[F, C] frame scores and best prompts -> the item's: max over frames per class."""
    item = worst_frames(per_frame, best, np.zeros(1, dtype=np.int64))
    return ItemScores(scores=item.scores[0], prompt=item.prompt[0], frame=item.frame[0])


def worst_frames(per_frame: np.ndarray, best: np.ndarray, starts: np.ndarray) -> ItemScores:
    """worst_frame of many items at once: item i owns frames starts[i]:starts[i + 1] (none empty).

    Rows of the result are items; `frame` is the index within the item's frames. The same
    answer as worst_frame item by item (the first frame on ties), without a Python loop.
    """
    n_frames = per_frame.shape[0]
    if len(starts) == n_frames:  # one frame each
        return ItemScores(scores=per_frame, prompt=best, frame=np.zeros_like(best))
    worst = np.maximum.reduceat(per_frame, starts, axis=0)
    owner = np.repeat(np.arange(len(starts)), np.diff(np.append(starts, n_frames)))
    rows = np.where(per_frame == worst[owner], np.arange(n_frames)[:, None], n_frames)
    first = np.minimum.reduceat(rows, starts, axis=0)  # the first frame reaching the max
    cols = np.arange(per_frame.shape[1])
    return ItemScores(scores=per_frame[first, cols], prompt=best[first, cols], frame=first - starts[:, None])


def check_frames(image_emb: np.ndarray, prompts: PromptSet) -> None:
    if image_emb.ndim != 2 or image_emb.shape[0] == 0:
        raise ValueError(f"expected image embeddings [frames, d], got shape {image_emb.shape}")
    if image_emb.shape[1] != prompts.embeddings.shape[1]:
        raise ValueError(
            f"image embeddings have {image_emb.shape[1]} dimensions, prompts {prompts.embeddings.shape[1]}: "
            "they come from different models"
        )


def zero_shot_scores(image_emb: np.ndarray, prompts: PromptSet, logit_scale: float, mode: Mode) -> ItemScores:
    """One item's frames [F, d] -> per-class scores, max over frames, with the prompt and frame behind each."""
    check_frames(image_emb, prompts)
    return worst_frame(*frame_scores(image_emb, prompts, logit_scale, mode))


def prompt_texts(spec: PolicySpec) -> tuple[list[str], list[int]]:
    """Every prompt of the policy (classes in order, then negatives) and its owner index."""
    prompts: list[str] = []
    owner: list[int] = []
    for c, cls in enumerate(spec.classes.values()):
        for p in cls.prompts or ():
            prompts.append(p)
            owner.append(c)
    if spec.mode is Mode.MULTILABEL:
        for p in spec.negatives or ():
            prompts.append(p)
            owner.append(NEGATIVE)
    return prompts, owner


def text_key(spec: PolicySpec) -> str:
    """Hash of what the text embeddings depend on: templates and prompts (not thresholds or actions)."""
    prompts, _ = prompt_texts(spec)
    content = json.dumps({"templates": spec.templates, "prompts": prompts}, ensure_ascii=False)
    return hashlib.sha256(content.encode("utf-8")).hexdigest()[:16]


def fill(template: str, prompt: str) -> str:
    return template.replace("{}", prompt)


class CompiledZeroShot:
    input = ScorerInput.EMBEDDING

    def __init__(self, spec: PolicySpec, prompts: PromptSet, logit_scale: float, model_id: str) -> None:
        self.class_names = spec.class_names()
        self.model_id = model_id
        self.prompts = prompts
        self.logit_scale = logit_scale
        self.mode = spec.mode

    def score(self, batch: ScoringBatch) -> ClassScores:
        if batch.embeddings is None:
            raise ValueError("the clip scorer needs image embeddings in the batch")
        items = [np.asarray(emb) for emb in batch.embeddings]
        if not items:
            return ClassScores(scores=np.zeros((0, len(self.class_names))), evidence=[])
        dim = self.prompts.embeddings.shape[1]
        for emb in items:
            if emb.ndim != 2 or emb.shape[0] == 0 or emb.shape[1] != dim:
                check_frames(emb, self.prompts)  # raises, saying what is wrong
        frames = np.concatenate(items)
        # Every frame of the batch scored at once, then each item's worst frame.
        per_frame, best = frame_scores(frames, self.prompts, self.logit_scale, self.mode)
        counts = np.fromiter((len(emb) for emb in items), dtype=np.int64, count=len(items))
        starts = np.concatenate([[0], np.cumsum(counts[:-1])])
        worst = worst_frames(per_frame, best, starts)
        texts = self.prompts.prompts
        evidence = [[texts[p] for p in row] for row in worst.prompt.tolist()]
        for i in np.flatnonzero(counts > 1).tolist():  # an animation: which frame
            where = zip(worst.prompt[i].tolist(), worst.frame[i].tolist(), strict=True)
            evidence[i] = [f"{texts[p]} (frame {f}{batch.at(i, f)})" for p, f in where]
        return ClassScores(scores=worst.scores, evidence=evidence)


class ZeroShotScorer:
    name = "clip"
    input = ScorerInput.EMBEDDING

    def __init__(self, cache: TextEmbeddingCache | None = None) -> None:
        self.cache = cache

    def compile(self, spec: PolicySpec, ctx: ScorerContext) -> CompiledZeroShot:
        prompts, owner = prompt_texts(spec)
        if spec.scorer != self.name:
            raise ValueError(f"policy {spec.name!r} names scorer {spec.scorer!r}, not {self.name!r}")
        texts = [fill(t, p) for p in prompts for t in spec.templates]  # prompt-major, as ensemble() expects
        model_id, template_emb, logit_scale = self._prompt_embeddings(text_key(spec), texts, ctx)
        prompt_set = PromptSet(
            embeddings=ensemble(template_emb, len(spec.templates)),
            owner=np.asarray(owner, dtype=np.int64),
            prompts=tuple(prompts),
            n_classes=len(spec.classes),
        )
        return CompiledZeroShot(spec, prompt_set, logit_scale, model_id)

    def _prompt_embeddings(self, key: str, texts: list[str], ctx: ScorerContext) -> tuple[str, np.ndarray, float]:
        """(model id, the texts' embeddings, the model's logit scale), from the cache or the model."""
        cache = self.cache or default_cache()
        if ctx.stored_embeddings:
            # Scoring stored embeddings needs only these two: with both cached, the model
            # (seconds to load, a gigabyte of memory) is never loaded.
            model_id = model_id_for(ctx.settings)
            found = cache.peek(key, model_id, texts)
            if found is not None:
                return model_id, *found
        model = ctx.clip()  # raises ScorerUnavailable when there are no weights

        def encode(batch: list[str]) -> np.ndarray:
            chunks = [model.encode_text(batch[i : i + TEXT_BATCH]) for i in range(0, len(batch), TEXT_BATCH)]
            return np.concatenate(chunks, axis=0)

        scale = float(model.logit_scale)
        return model.model_id, cache.get(key, model.model_id, texts, encode, scale=scale), scale


scorer = ZeroShotScorer()
