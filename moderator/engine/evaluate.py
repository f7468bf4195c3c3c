"""Metrics of a policy's scores against known labels, and thresholds chosen from data.

Pure functions over arrays: scores [N, C] in [0, 1] and each item's true class.

- Top-1: the predicted class is the highest-scoring one; the confusion matrix and
  per-class precision, recall and F1 are of that prediction.
- Per class, one-vs-rest on its own score: the precision-recall curve, average
  precision, precision and recall at the policy's threshold (the lowest band), and
  the suggested threshold for a target precision (the lowest threshold that reaches
  it: most recall) or a target recall (the highest threshold that reaches it: most
  precision). A class fires when score >= threshold, as in decide.py.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from moderator.engine.compile import CompiledPolicy
    from moderator.policy.load import LoadedPolicy
    from moderator.types import PolicyResult


@dataclass(frozen=True)
class Curve:
    """One-vs-rest precision and recall at each distinct score, highest threshold first."""

    thresholds: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    positives: int


def pr_curve(scores: np.ndarray, positive: np.ndarray) -> Curve:
    order = np.argsort(-scores, kind="stable")
    s, pos = scores[order], positive[order].astype(bool)
    tp = np.cumsum(pos)
    fp = np.cumsum(~pos)
    last = np.flatnonzero(np.append(np.diff(s) != 0, True)) if len(s) else np.zeros(0, np.int64)
    n_pos = int(pos.sum())
    precision = tp[last] / (tp[last] + fp[last])
    recall = tp[last] / n_pos if n_pos else np.zeros(len(last))
    return Curve(s[last], precision, recall, n_pos)


def average_precision(curve: Curve) -> float | None:
    """Sum over thresholds of precision x the recall gained there (no interpolation)."""
    if curve.positives == 0:
        return None
    gained = np.diff(np.concatenate([[0.0], curve.recall]))
    return float((gained * curve.precision).sum())


def threshold_for_precision(curve: Curve, target: float) -> float | None:
    """The lowest threshold whose precision reaches `target`; None when none does."""
    ok = np.flatnonzero(curve.precision >= target)
    if curve.positives == 0 or not len(ok):
        return None
    return float(curve.thresholds[ok[-1]])


def threshold_for_recall(curve: Curve, target: float) -> float | None:
    """The highest threshold whose recall reaches `target`; None when none does."""
    ok = np.flatnonzero(curve.recall >= target)
    if curve.positives == 0 or not len(ok):
        return None
    return float(curve.thresholds[ok[0]])


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """[true class, predicted class] -> count."""
    cm = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(cm, (truth, predicted), 1)
    return cm


def _ratio(a: float, b: float) -> float | None:
    return float(a / b) if b else None


def _f1(p: float | None, r: float | None) -> float | None:
    if p is None or r is None:
        return None
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


@dataclass(frozen=True)
class ClassReport:
    name: str
    support: int
    precision: float | None  # top-1
    recall: float | None
    f1: float | None
    average_precision: float | None  # one-vs-rest on the class's score
    threshold: float | None  # where the policy starts firing the class
    precision_at_threshold: float | None
    recall_at_threshold: float | None
    threshold_for_precision: float | None
    threshold_for_recall: float | None


@dataclass
class EvalReport:
    classes: list[str]
    items: int
    accuracy: float | None
    confusion: list[list[int]]
    per_class: list[ClassReport]
    target_precision: float
    target_recall: float
    curves: dict[str, Curve] = field(default_factory=dict, repr=False)

    @property
    def mean_average_precision(self) -> float | None:
        aps = [c.average_precision for c in self.per_class if c.average_precision is not None]
        return float(np.mean(aps)) if aps else None

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        out.pop("curves")
        out["mean_average_precision"] = self.mean_average_precision
        return out


def evaluate_scores(
    scores: np.ndarray,
    truth: Sequence[str],
    classes: Sequence[str],
    thresholds: Sequence[float | None],
    *,
    target_precision: float = 0.9,
    target_recall: float = 0.9,
) -> EvalReport:
    """Metrics of scores [N, C] (columns in `classes` order) against each item's true class."""
    classes = list(classes)
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(truth) - set(index))
    if unknown:
        raise ValueError(f"labels {unknown} are not classes of the policy ({', '.join(classes)})")
    if scores.shape != (len(truth), len(classes)):
        raise ValueError(f"scores of shape {scores.shape} for {len(truth)} items and {len(classes)} classes")
    y = np.array([index[t] for t in truth], dtype=np.int64)
    predicted = scores.argmax(axis=1) if len(y) else y
    cm = confusion_matrix(y, predicted, len(classes))
    per_class: list[ClassReport] = []
    curves: dict[str, Curve] = {}
    for j, name in enumerate(classes):
        positive = y == j
        curve = curves[name] = pr_curve(scores[:, j], positive)
        precision, recall = _ratio(cm[j, j], cm[:, j].sum()), _ratio(cm[j, j], cm[j, :].sum())
        t = thresholds[j]
        fires = scores[:, j] >= t if t is not None else None
        per_class.append(
            ClassReport(
                name=name,
                support=int(positive.sum()),
                precision=precision,
                recall=recall,
                f1=_f1(precision, recall),
                average_precision=average_precision(curve),
                threshold=t,
                precision_at_threshold=None if fires is None else _ratio((fires & positive).sum(), fires.sum()),
                recall_at_threshold=None if fires is None else _ratio((fires & positive).sum(), positive.sum()),
                threshold_for_precision=threshold_for_precision(curve, target_precision),
                threshold_for_recall=threshold_for_recall(curve, target_recall),
            )
        )
    return EvalReport(
        classes=classes,
        items=len(y),
        accuracy=_ratio(np.trace(cm), len(y)),
        confusion=cm.tolist(),
        per_class=per_class,
        target_precision=target_precision,
        target_recall=target_recall,
        curves=curves,
    )


def plot_pr_curves(curves: dict[str, Curve], path: Path, title: str) -> Path:
    """One PNG with every class's precision-recall curve (matplotlib, no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 5.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, curve in curves.items():
        if curve.positives:
            ap = average_precision(curve) or 0.0
            ax.step(
                np.concatenate([[0.0], curve.recall]),
                np.concatenate([[1.0], curve.precision]),
                where="post",
                label=f"{name} (AP {ap:.3f}, n={curve.positives})",
            )
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.01), ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower left", fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def write_json(report: dict[str, object], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def policy_thresholds(policy: CompiledPolicy) -> list[float | None]:
    """Per class, the lowest threshold at which the policy fires it (None: never fires)."""
    return [bands[0].threshold if bands else None for bands in policy.rules.bands]


def evaluate_policy(
    policy: CompiledPolicy,
    embeddings: Sequence[np.ndarray],
    truth: Sequence[str],
    *,
    target_precision: float = 0.9,
    target_recall: float = 0.9,
) -> EvalReport:
    """Score items (float32 [frames, d] each) with an embedding scorer and measure against their classes."""
    from moderator.engine.rescore import check_rescorable
    from moderator.scorers import ScoringBatch

    check_rescorable(policy)
    batch = ScoringBatch(sha256=[""] * len(embeddings), embeddings=list(embeddings))
    scores = policy.scorer.score(batch).scores if len(embeddings) else np.zeros((0, len(policy.rules.classes)))
    return evaluate_scores(
        np.asarray(scores, dtype=np.float64),
        truth,
        list(policy.rules.classes),
        policy_thresholds(policy),
        target_precision=target_precision,
        target_recall=target_recall,
    )


def evaluate_results(
    policy: CompiledPolicy,
    results: Sequence[PolicyResult],
    truth: Sequence[str],
    *,
    target_precision: float = 0.9,
    target_recall: float = 0.9,
) -> EvalReport:
    """Measure a policy's results (from the scan's scoring path, any scorer kind) against each item's class."""
    classes = list(policy.rules.classes)
    scores = np.array([[r.scores[c] for c in classes] for r in results], dtype=np.float64)
    return evaluate_scores(
        scores.reshape(len(results), len(classes)),
        truth,
        classes,
        policy_thresholds(policy),
        target_precision=target_precision,
        target_recall=target_recall,
    )


def with_label_classes(loaded: LoadedPolicy, labels: Sequence[str]) -> LoadedPolicy:
    """The policy with each label that is not one of its classes added as a class that never fires.

    For scorers that score more outputs than a policy acts on: open_nsfw's policy acts on `nsfw`,
    a dataset labels images `nsfw` or `sfw`. ValueError when the policy's schema refuses the
    added class (a clip class needs prompts); the scorer may still refuse it when compiled.
    """
    from pydantic import ValidationError

    from moderator.policy.load import LoadedPolicy, policy_version
    from moderator.policy.schema import PolicySpec

    extra = sorted(set(labels) - set(loaded.spec.classes))
    if not extra:
        return loaded
    content = loaded.spec.model_dump(mode="json")
    content["classes"].update({name: {} for name in extra})
    try:
        spec = PolicySpec.model_validate(content)
    except ValidationError as e:
        raise ValueError(e.errors()[0]["msg"]) from None
    return LoadedPolicy(spec=spec, path=loaded.path, version=policy_version(spec), lines=loaded.lines)
