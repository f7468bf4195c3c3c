"""Training data for linear probes: a labelled dataset's images, or reviewer labels in the store.

Reviewer labels (moderator/store/tables.ReviewLabel) say that content (a
sha256) is or is not a policy's class. The latest label per (content, class)
counts: a reviewer may correct an earlier one. Labels without a policy name count
for a class of that name. Only content with a stored embedding of the model is used.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sqlalchemy import or_, select

from moderator.datasets import Dataset
from moderator.engine.prepare import PreparedItem
from moderator.engine.probes import LabelledEmbeddings, item_features
from moderator.policy.schema import PolicySpec
from moderator.store import Store
from moderator.store.tables import ReviewLabel


def from_dataset(dataset: Dataset, embedded: Sequence[PreparedItem]) -> tuple[LabelledEmbeddings, list[str]]:
    """(training data, errors): files that could not be embedded are left out and reported.

    `embedded`: one prepared item per dataset image, in order.
    """
    classes = dataset.classes
    shas, rows, target, errors = [], [], [], []
    for f, label in zip(embedded, dataset.labels, strict=True):
        if f.embedding is None or f.sha256 is None:
            errors.append(f"{f.item.uri}: {f.error}")
            continue
        shas.append(f.sha256)
        rows.append(item_features(f.embedding))
        target.append(classes.index(label))
    features = np.stack(rows) if rows else np.zeros((0, 0), np.float32)
    return LabelledEmbeddings(shas, features, classes, np.array(target, np.int64)), errors


def review_labels(store: Store, spec: PolicySpec) -> dict[str, dict[str, bool]]:
    """sha256 -> class -> positive, the latest label of each (content, class) of this policy."""
    classes = spec.class_names()
    stmt = (
        select(ReviewLabel.sha256, ReviewLabel.label, ReviewLabel.positive)
        .where(
            ReviewLabel.sha256.is_not(None),
            ReviewLabel.label.in_(classes),
            or_(ReviewLabel.policy == spec.name, ReviewLabel.policy.is_(None)),
        )
        .order_by(ReviewLabel.id)
    )
    out: dict[str, dict[str, bool]] = {}
    with store.session() as s:
        for sha, label, positive in s.execute(stmt):
            out.setdefault(str(sha), {})[label] = bool(positive)
    return out


def from_reviews(store: Store, spec: PolicySpec, model_id: str) -> tuple[LabelledEmbeddings, int]:
    """(training data over the policy's classes, labelled items left out for want of an embedding)."""
    labels = review_labels(store, spec)
    stored = store.load_embeddings(sorted(labels), model_id)
    classes = spec.class_names()
    shas = [sha for sha in sorted(labels) if sha in stored]
    target = np.zeros((len(shas), len(classes)), np.float32)
    mask = np.zeros((len(shas), len(classes)), bool)
    for i, sha in enumerate(shas):
        for name, positive in labels[sha].items():
            j = classes.index(name)
            mask[i, j] = True
            target[i, j] = 1.0 if positive else 0.0
    features = np.stack([item_features(stored[s]) for s in shas]) if shas else np.zeros((0, 0), np.float32)
    return LabelledEmbeddings(shas, features, classes, target, mask), len(labels) - len(shas)
