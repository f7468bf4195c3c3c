"""Linear probe scorer (entry point ``linear_probe``): a logistic-regression head on CLIP embeddings.

    name: flowers
    mode: exclusive
    scorer: linear_probe
    options: {probe: probes/flowers.safetensors}   # relative to the policy file
    classes:
      dandelion: {threshold: 0.8, action: tag}
      rose: {threshold: 0.8, action: tag}

A probe is two files with one stem: ``NAME.safetensors`` (``weight`` [C, d] and
``bias`` [C], float32) and ``NAME.json``, its card (ProbeCard: the CLIP model id
whose embeddings it was trained on, classes, activation, metrics, data hash).
`moderator probe train` writes both. A probe trained on another model's
embeddings is refused: its scores would mean nothing. The policy's classes must be
the probe's (any order). Activation: ``softmax`` (trained on one class per image)
or ``sigmoid`` (one-vs-rest, trained on reviewer labels); a class the training data
had no examples of is ``untrained`` and always scores 0. An item's score is the max
over its frames, as with the clip scorer.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from moderator.models import model_id_for
from moderator.scorers import ClassScores, ScorerContext, ScorerInput, ScoringBatch, parse_options

if TYPE_CHECKING:
    from moderator.policy.schema import PolicySpec

FORMAT = "moderator-linear-probe/1"


class ProbeCard(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["moderator-linear-probe/1"] = "moderator-linear-probe/1"
    model_id: str
    classes: list[str] = Field(min_length=1)
    activation: Literal["softmax", "sigmoid"]
    trained: list[bool]
    dim: int = Field(ge=1)
    weights_sha256: str
    data_hash: str
    source: str = ""  # what it was trained from (a dataset path, reviews of a policy)
    n_train: int = 0
    n_test: int = 0
    metrics: dict[str, Any] = Field(default_factory=dict)
    created_at: str = ""


@dataclass(frozen=True)
class Probe:
    card: ProbeCard
    weight: np.ndarray  # float32 [C, d]
    bias: np.ndarray  # float32 [C]


def probe_paths(path: Path) -> tuple[Path, Path]:
    """(weights, card) of a probe named by either file (or by its stem)."""
    stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def save_probe(path: Path, weight: np.ndarray, bias: np.ndarray, card: dict[str, Any]) -> tuple[Path, Path]:
    """Write weights and card; the card's weights_sha256 is filled in here. Returns both paths."""
    from safetensors.numpy import save_file

    weights_path, card_path = probe_paths(path)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {"weight": np.ascontiguousarray(weight, np.float32), "bias": np.ascontiguousarray(bias, np.float32)},
        str(weights_path),
    )
    full = ProbeCard.model_validate({**card, "weights_sha256": _sha256(weights_path)})
    card_path.write_text(json.dumps(full.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8")
    return weights_path, card_path


def load_probe(path: Path) -> Probe:
    """Weights and card, checked against each other; ValueError says what is wrong."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    weights_path, card_path = probe_paths(path)
    for p in (weights_path, card_path):
        if not p.is_file():
            raise ValueError(f"probe file {p} not found (a probe is NAME.safetensors + NAME.json)")
    try:
        card = ProbeCard.model_validate_json(card_path.read_bytes())
    except ValidationError as e:
        err = e.errors()[0]
        raise ValueError(f"probe card {card_path}: {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
    if _sha256(weights_path) != card.weights_sha256:
        raise ValueError(f"{weights_path} does not match its card {card_path.name} (weights_sha256 differs)")
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"cannot read probe weights {weights_path}: {e}") from None
    weight, bias = tensors.get("weight"), tensors.get("bias")
    n, d = len(card.classes), card.dim
    if weight is None or bias is None or weight.shape != (n, d) or bias.shape != (n,) or len(card.trained) != n:
        raise ValueError(f"{weights_path}: expected weight [{n}, {d}] and bias [{n}] as its card says")
    return Probe(card, weight.astype(np.float32), bias.astype(np.float32))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def probe_scores(frames: np.ndarray, weight: np.ndarray, bias: np.ndarray, activation: str) -> np.ndarray:
    """Frames [F, d] -> scores [F, C] in [0, 1] (float64)."""
    logits = np.einsum("fd,cd->fc", frames.astype(np.float64), weight.astype(np.float64)) + bias
    if activation == "softmax":
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)
    return 0.5 * (1.0 + np.tanh(0.5 * logits))  # sigmoid, stable for either sign


class LinearProbeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    probe: str = Field(min_length=1, description="Probe file, relative to the policy file.")


class CompiledProbe:
    input = ScorerInput.EMBEDDING

    def __init__(self, probe: Probe, class_names: list[str], name: str) -> None:
        order = [probe.card.classes.index(c) for c in class_names]  # policy order
        self.class_names = class_names
        self.weight = probe.weight[order]
        self.bias = probe.bias[order].astype(np.float64)
        self.untrained = ~np.array([probe.card.trained[i] for i in order], dtype=bool)
        self.activation = probe.card.activation
        self.name = name
        self.model_id = f"{probe.card.model_id}+probe:{probe.card.weights_sha256[:12]}"

    def score(self, batch: ScoringBatch) -> ClassScores:
        if batch.embeddings is None:
            raise ValueError("the linear_probe scorer needs image embeddings in the batch")
        items = [np.asarray(e) for e in batch.embeddings]
        n = len(self.class_names)
        if not items:
            return ClassScores(np.zeros((0, n)), [])
        for emb in items:
            if emb.ndim != 2 or emb.shape[1] != self.weight.shape[1]:
                raise ValueError(f"embeddings of shape {emb.shape}; the probe takes [frames, {self.weight.shape[1]}]")
        per_frame = probe_scores(np.concatenate(items), self.weight, self.bias, self.activation)
        per_frame[:, self.untrained] = 0.0
        ends = np.cumsum([len(e) for e in items]).tolist()
        rows, evidence = [], []
        for i, (start, end) in enumerate(zip([0, *ends[:-1]], ends, strict=True)):
            frame = per_frame[start:end].argmax(axis=0)
            rows.append(per_frame[start:end][frame, np.arange(n)])
            many = end - start > 1
            evidence.append([f"{self.name} (frame {f}{batch.at(i, f)})" if many else self.name for f in frame.tolist()])
        return ClassScores(np.stack(rows), evidence)


class LinearProbeScorer:
    name = "linear_probe"
    input = ScorerInput.EMBEDDING

    def compile(self, spec: PolicySpec, ctx: ScorerContext) -> CompiledProbe:
        options = parse_options(LinearProbeOptions, spec.options, "e.g. probe: NAME.safetensors")
        path = Path(options.probe).expanduser()
        if not path.is_absolute() and ctx.policy_file is not None:
            path = ctx.policy_file.parent / path
        probe = load_probe(path)
        here = model_id_for(ctx.settings)
        if probe.card.model_id != here:
            raise ValueError(
                f"probe {path.name} was trained on embeddings of {probe.card.model_id}, but this installation "
                f"embeds with {here} (MODERATOR_MODEL / MODERATOR_PRETRAINED): its scores would mean nothing; "
                f"train a probe for {here} (moderator probe train) or use the model it was trained for"
            )
        wanted, have = set(spec.class_names()), set(probe.card.classes)
        if wanted != have:
            raise ValueError(
                f"probe {path.name} has classes {sorted(have)}; the policy has {sorted(wanted)}: they must be the same"
            )
        return CompiledProbe(probe, spec.class_names(), f"probe {path.name}")


scorer = LinearProbeScorer()
