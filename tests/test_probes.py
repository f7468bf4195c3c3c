"""Training linear probes on embeddings with known structure, and their training data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session

from moderator.engine.compile import CompiledPolicy, compile_policy
from moderator.engine.probes import LabelledEmbeddings, data_hash, split, train_probe
from moderator.engine.probes_data import from_reviews
from moderator.policy.load import load_policy
from moderator.scorers import ScorerContext, ScoringBatch
from moderator.scorers.linear_probe import save_probe
from moderator.store import Store
from moderator.store.tables import Review, ReviewLabel
from tests.lifecycle import MODEL_ID, TINY, axis, seed, sha_of, write


def clusters(n: int, seed_: int = 0) -> LabelledEmbeddings:
    """Class k's items lie near axis k (noise 0.1): linearly separable."""
    rng = np.random.default_rng(seed_)
    target = np.arange(n) % 3
    x = np.stack([axis(int(k)) for k in target]) + rng.normal(0, 0.1, (n, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return LabelledEmbeddings([f"{i:064x}" for i in range(n)], x, ["a", "b", "c"], target)


def test_split_is_stratified_and_keeps_a_training_row_per_class() -> None:
    strata = np.array([0] * 10 + [1] * 5 + [2])
    train, test = split(strata, 0.2, seed=1)
    assert sorted([*train, *test]) == list(range(16))
    assert (strata[test] == 0).sum() == 2 and (strata[test] == 1).sum() == 1 and 2 in strata[train]


def test_trains_a_separable_probe_and_reports_held_out_metrics(tmp_path: Path) -> None:
    data = clusters(60)
    trained = train_probe(data, MODEL_ID, test_fraction=0.25)
    held = trained.card["metrics"]["held_out"]
    assert (trained.card["n_train"], trained.card["n_test"]) == (45, 15)
    assert held["accuracy"] == 1.0
    # The saved probe, used in a policy, classifies new points near each axis.
    save_probe(tmp_path / "p.safetensors", trained.weight, trained.bias, trained.card)
    policy_file = write(
        tmp_path / "p.yaml",
        "name: p\nscorer: linear_probe\noptions: {probe: p.safetensors}\nclasses:\n  a: {}\n  b: {}\n  c: {}\n",
    )
    compiled = compile_policy(load_policy(policy_file), ScorerContext(settings=TINY, clip=lambda: None))  # type: ignore[arg-type,return-value]
    assert isinstance(compiled, CompiledPolicy)
    results = compiled.evaluate(ScoringBatch(sha256=["1", "2", "3"], embeddings=[axis(k)[None] for k in (2, 0, 1)]))
    assert [max(r.scores, key=r.scores.__getitem__) for r in results] == ["c", "a", "b"]


def test_data_hash_follows_the_data() -> None:
    data = clusters(9)
    same = LabelledEmbeddings(data.shas[::-1], data.features[::-1], data.classes, data.target[::-1])
    changed = LabelledEmbeddings(data.shas, data.features, data.classes, np.roll(data.target, 1))
    assert data_hash(MODEL_ID, data) == data_hash(MODEL_ID, same)
    assert data_hash(MODEL_ID, data) != data_hash(MODEL_ID, changed)
    assert data_hash(MODEL_ID, data) != data_hash("other/model", data)


def label(store: Store, uri: str, policy: str | None, name: str, positive: bool) -> None:
    with Session(store.engine) as db:
        review = Review(
            item_uri=uri,
            item_sha256=sha_of(uri),
            reviewer="r",
            via="cli",
            verdict="relabel",
            old_decision="review",
            new_decision="review",
            labels=[name],
        )
        db.add(review)
        db.flush()
        db.add(ReviewLabel(review_id=review.id, sha256=sha_of(uri), policy=policy, label=name, positive=positive))
        db.commit()


def test_reviewer_labels_become_masked_training_data(tmp_path: Path, store: Store) -> None:
    seed(store, {"x": axis(0), "y": axis(1), "z": axis(2)})
    spec = load_policy(
        write(
            tmp_path / "pets.yaml",
            "name: pets\nmode: multilabel\nscorer: linear_probe\noptions: {probe: p}\n"
            "classes:\n  cat: {threshold: 0.5, action: tag}\n  dog: {threshold: 0.5, action: tag}\n",
        )
    ).spec
    label(store, "x", "pets", "cat", True)
    label(store, "y", "pets", "cat", True)
    label(store, "y", "pets", "cat", False)  # corrected later: the latest label counts
    label(store, "z", None, "dog", True)  # a bare class name counts for this policy
    label(store, "z", "other", "cat", True)  # another policy's class does not
    data, missing = from_reviews(store, spec, MODEL_ID)
    assert missing == 0 and data.activation == "sigmoid"
    rows = {sha: i for i, sha in enumerate(data.shas)}
    assert data.mask[rows[sha_of("x")]].tolist() == [True, False]
    assert data.target[rows[sha_of("y")], 0] == 0.0
    assert data.mask[rows[sha_of("z")]].tolist() == [False, True]
    trained = train_probe(data, MODEL_ID, test_fraction=0.0)
    assert trained.card["trained"] == [True, False]  # dog has no negative example: untrained
    assert trained.card["activation"] == "sigmoid"
