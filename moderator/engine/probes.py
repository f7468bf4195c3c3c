"""Training linear probes (logistic regression in torch) on stored CLIP embeddings.

Two kinds of training data:
- a labelled dataset (one class per image): a softmax head over its classes;
- reviewer labels of a policy (this content is / is not class X): one sigmoid head
  per class, each trained only on the items labelled for it; a class with no
  positive or no negative label is left untrained (it scores 0).

A stratified held-out split is kept out of training and its metrics go on the card,
beside a hash of the training data (model id, sha256s, labels). The saved probe is
the one the metrics describe (trained on the training split only).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from moderator.engine.evaluate import average_precision, evaluate_scores, pr_curve
from moderator.scorers.linear_probe import probe_scores

L2 = 1e-4  # weight decay: embeddings are unit length, so logits need weights of size ~10-100
MAX_ITER = 200


@dataclass(frozen=True)
class LabelledEmbeddings:
    """Features [N, d] (unit length) with either one class per row or a label matrix."""

    shas: list[str]
    features: np.ndarray
    classes: list[str]
    target: np.ndarray  # softmax: int [N]; sigmoid: float [N, C] (1 positive, 0 negative)
    mask: np.ndarray | None = None  # sigmoid: bool [N, C], True where a label exists

    @property
    def activation(self) -> str:
        return "softmax" if self.mask is None else "sigmoid"


def item_features(frames: np.ndarray) -> np.ndarray:
    """An item's frames [F, d] -> one unit vector (the mean direction)."""
    mean = np.asarray(frames, dtype=np.float64).mean(axis=0)
    return (mean / max(np.linalg.norm(mean), 1e-12)).astype(np.float32)


def data_hash(model_id: str, data: LabelledEmbeddings) -> str:
    h = hashlib.sha256(model_id.encode())
    rows = data.target.tolist() if data.mask is None else np.where(data.mask, data.target, -1).tolist()
    payload = sorted(zip(data.shas, [json.dumps(r) for r in rows], strict=True))
    h.update(json.dumps([data.classes, payload]).encode())
    return h.hexdigest()


def split(strata: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train/test indices; every stratum keeps at least one training row."""
    rng = np.random.default_rng(seed)
    train: list[int] = []
    test: list[int] = []
    for value in np.unique(strata):
        idx = rng.permutation(np.flatnonzero(strata == value))
        n_test = min(int(round(len(idx) * test_fraction)), len(idx) - 1)
        test.extend(idx[:n_test].tolist())
        train.extend(idx[n_test:].tolist())
    return np.sort(np.array(train, np.int64)), np.sort(np.array(test, np.int64))


def fit(data: LabelledEmbeddings, rows: np.ndarray, *, l2: float = L2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Weights [C, d] and bias [C] by L-BFGS on the full batch (deterministic on CPU)."""
    import torch

    torch.manual_seed(seed)
    x = torch.from_numpy(data.features[rows].astype(np.float32))
    n_classes = len(data.classes)
    weight = torch.zeros(n_classes, x.shape[1], requires_grad=True)
    bias = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=MAX_ITER, line_search_fn="strong_wolfe")
    if data.mask is None:
        y = torch.from_numpy(data.target[rows].astype(np.int64))

        def loss_fn() -> torch.Tensor:
            return torch.nn.functional.cross_entropy(x @ weight.T + bias, y)
    else:
        yf = torch.from_numpy(data.target[rows].astype(np.float32))
        m = torch.from_numpy(data.mask[rows].astype(np.float32))

        def loss_fn() -> torch.Tensor:
            per = torch.nn.functional.binary_cross_entropy_with_logits(x @ weight.T + bias, yf, reduction="none")
            return (per * m).sum() / m.sum().clamp_min(1.0)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = loss_fn() + l2 * (weight**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return weight.detach().numpy().copy(), bias.detach().numpy().copy()


def trained_classes(data: LabelledEmbeddings, rows: np.ndarray) -> list[bool]:
    if data.mask is None:
        return [bool((data.target[rows] == j).any()) for j in range(len(data.classes))]
    pos = (data.mask[rows] & (data.target[rows] == 1)).any(axis=0)
    neg = (data.mask[rows] & (data.target[rows] == 0)).any(axis=0)
    return (pos & neg).tolist()


def held_out_metrics(
    data: LabelledEmbeddings, rows: np.ndarray, weight: np.ndarray, bias: np.ndarray
) -> dict[str, Any]:
    if not len(rows):
        return {"note": "too few items for a held-out split"}
    scores = probe_scores(data.features[rows], weight, bias, data.activation)
    if data.mask is None:
        truth = [data.classes[i] for i in data.target[rows].tolist()]
        report = evaluate_scores(scores, truth, data.classes, [None] * len(data.classes))
        return {
            "accuracy": report.accuracy,
            "mean_average_precision": report.mean_average_precision,
            "per_class": {
                c.name: {"precision": c.precision, "recall": c.recall, "f1": c.f1, "support": c.support}
                for c in report.per_class
            },
        }
    per_class: dict[str, Any] = {}
    for j, name in enumerate(data.classes):
        m = data.mask[rows, j]
        positive = data.target[rows, j][m] == 1
        fired = scores[m, j] >= 0.5
        tp = int((fired & positive).sum())
        per_class[name] = {
            "precision_at_0.5": tp / int(fired.sum()) if fired.sum() else None,
            "recall_at_0.5": tp / int(positive.sum()) if positive.sum() else None,
            "average_precision": average_precision(pr_curve(scores[m, j], positive)),
            "positives": int(positive.sum()),
            "negatives": int((~positive).sum()),
        }
    return {"per_class": per_class}


@dataclass(frozen=True)
class TrainedProbe:
    weight: np.ndarray
    bias: np.ndarray
    card: dict[str, Any]  # everything but weights_sha256 (save_probe adds it)


def train_probe(
    data: LabelledEmbeddings, model_id: str, *, test_fraction: float = 0.2, seed: int = 0, source: str = ""
) -> TrainedProbe:
    if len(data.shas) < 2:
        raise ValueError(f"{len(data.shas)} labelled item(s) with embeddings: too few to train a probe")
    if data.mask is None:
        strata = data.target
    else:  # stratify on each row's first positive class (or "none")
        strata = np.where(data.mask.any(axis=1), np.argmax(data.mask & (data.target == 1), axis=1), -1)
    train, test = split(strata, test_fraction, seed)
    weight, bias = fit(data, train, seed=seed)
    trained = trained_classes(data, train)
    return TrainedProbe(
        weight=weight,
        bias=bias,
        card={
            "model_id": model_id,
            "classes": data.classes,
            "activation": data.activation,
            "trained": trained,
            "dim": int(data.features.shape[1]),
            "data_hash": data_hash(model_id, data),
            "source": source,
            "n_train": int(len(train)),
            "n_test": int(len(test)),
            "metrics": {"held_out": held_out_metrics(data, test, weight, bias)},
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )
