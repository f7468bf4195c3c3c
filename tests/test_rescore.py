"""Re-scoring stored items from their stored embeddings, with known embeddings and prompts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from moderator.decide import DecisionRules, PolicyMeta, apply_rules, decide
from moderator.engine.compile import CompiledPolicy
from moderator.engine.rescore import rescore
from moderator.policy.schema import PolicySpec
from moderator.settings import SHIPPED_POLICIES, Settings
from moderator.store import ExportFilters, Store
from moderator.store.bulk import load_embedding_matrix
from moderator.store.results import encode_result
from moderator.types import Action, PolicyResult
from tests.lifecycle import MODEL_ID, PETS, axis, compiled, context, seed, sha_of, write

PETS_ITEMS = {"cat1": axis(0), "cat2": axis(0), "dog1": axis(1), "other1": axis(2)}


def rows(store: Store) -> dict[str, object]:
    return {r.uri: r for r in store.iter_export(ExportFilters())}


def reference_rule(rules: DecisionRules, row: np.ndarray) -> dict[str, tuple[int, float]]:
    """The documented rule, written out plainly: per class the most severe band with score >= threshold."""
    out = {}
    for name, bands, score in zip(rules.classes, rules.bands, row.tolist(), strict=True):
        reached = [b for b in bands if score >= b.threshold]
        if reached:
            band = max(reached, key=lambda b: b.action.severity)
            out[name] = (band.action.severity, band.threshold)
    return out


def test_the_rule_agrees_with_decide_and_the_written_out_rule_on_every_band() -> None:
    spec = PolicySpec.model_validate(
        {
            "name": "p",
            "classes": {
                "a": {"prompts": ["x"], "actions": {"tag": 0.2, "review": 0.5, "block": 0.8}},
                "b": {"prompts": ["y"], "threshold": 0.0, "action": "review"},
                "c": {"prompts": ["z"]},
            },
        }
    )
    rules = DecisionRules.from_spec(spec)
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.random((200, 3)), [[0.2, 0.0, 1.0], [0.5, 0.3, 0.0], [0.8, 1.0, 0.5], [0.1999, 0, 0]]])
    decided = apply_rules(rules, scores)
    severity, threshold = decided.severity, decided.threshold
    meta = PolicyMeta("p", "v", "clip", "m")
    for i, row in enumerate(scores):
        expected = decide(rules, meta, row, ["", "", ""])
        fired = {f.name: (f.action.severity, f.threshold) for f in expected.fired}
        got = {rules.classes[j]: (int(severity[i, j]), float(threshold[i, j])) for j in np.flatnonzero(severity[i])}
        assert got == fired
        assert got == reference_rule(rules, row)
        assert decided.action[i] == expected.action.severity == max((s for s, _ in got.values()), default=0)


def test_rescore_stores_results_of_the_new_version_from_embeddings(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(store, PETS_ITEMS)
    ctx, clip = context(tmp_path, monkeypatch)
    policy = compiled(write(tmp_path / "pets.yaml", PETS), ctx)
    summary = rescore(store, policy, MODEL_ID)
    assert (summary.items, summary.missing) == (4, 0)
    assert summary.actions == {"tag": 2, "review": 1, "allow": 1}
    stored = rows(store)
    assert {u: r.decision for u, r in stored.items()} == {  # type: ignore[attr-defined]
        "cat1": Action.TAG,
        "cat2": Action.TAG,
        "dog1": Action.REVIEW,
        "other1": Action.ALLOW,
    }
    cat = stored["cat1"]
    assert cat.policy_versions == {"pets": policy.loaded.version}  # type: ignore[attr-defined]
    assert cat.tags == ["cat"]  # type: ignore[attr-defined]
    # e^L / (e^L + 2): the cat prompt matches exactly, the two others are orthogonal.
    assert cat.scores["pets"]["cat"] == pytest.approx(np.exp(10) / (np.exp(10) + 2), rel=1e-6)  # type: ignore[attr-defined]
    assert clip.calls == 1  # prompts encoded once, no image encoded (FakeClip has no image encoder)


def test_rescore_after_an_edit_replaces_results_and_recomputes_decisions(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(store, PETS_ITEMS)
    ctx, _ = context(tmp_path, monkeypatch)
    rescore(store, compiled(write(tmp_path / "pets.yaml", PETS), ctx), MODEL_ID)
    edited = compiled(write(tmp_path / "pets2.yaml", PETS.replace("action: review", "action: block")), ctx)
    summary = rescore(store, edited, MODEL_ID)
    assert summary.decisions_changed == 1
    stored = rows(store)
    assert stored["dog1"].decision is Action.BLOCK  # type: ignore[attr-defined]
    assert stored["dog1"].policy_versions["pets"] == edited.loaded.version  # type: ignore[attr-defined]
    assert store.counts()["results"] == 4  # replaced, not added


def test_rescore_keeps_other_policies_in_the_decision(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(store, PETS_ITEMS)
    ctx, _ = context(tmp_path, monkeypatch)
    blocker = PETS.replace("name: pets", "name: strict").replace("action: tag", "action: block")
    rescore(store, compiled(write(tmp_path / "strict.yaml", blocker), ctx), MODEL_ID)
    rescore(store, compiled(write(tmp_path / "pets.yaml", PETS), ctx), MODEL_ID)
    assert rows(store)["cat1"].decision is Action.BLOCK  # type: ignore[attr-defined]


def test_items_without_an_embedding_of_the_model_are_counted_not_scored(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(store, {"cat1": axis(0)})
    seed(store, {"elsewhere": axis(1)}, model_id="other/model")
    ctx, _ = context(tmp_path, monkeypatch)
    summary = rescore(store, compiled(write(tmp_path / "pets.yaml", PETS), ctx), MODEL_ID)
    assert (summary.items, summary.missing) == (1, 1)
    assert rows(store)["elsewhere"].policy_versions == {}  # type: ignore[attr-defined]


def test_multi_frame_items_score_their_worst_frame(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(store, {"anim": np.stack([axis(2), axis(1)]), "still": axis(2)})
    matrix = load_embedding_matrix(store, MODEL_ID)
    assert matrix.vectors.shape == (3, 8) and not matrix.single_frame
    ctx, _ = context(tmp_path, monkeypatch)
    rescore(store, compiled(write(tmp_path / "pets.yaml", PETS), ctx), MODEL_ID)
    stored = rows(store)
    assert stored["anim"].decision is Action.REVIEW  # type: ignore[attr-defined]  # the dog frame
    assert stored["still"].decision is Action.ALLOW  # type: ignore[attr-defined]


def test_items_sharing_bytes_share_one_result(tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    from moderator.store import ItemRecord
    from moderator.types import ItemStatus

    seed(store, {"a": axis(1)})
    store.save_items([ItemRecord(uri="copy-of-a", sha256=sha_of("a"), size=1, fingerprint=None, status=ItemStatus.OK)])
    ctx, _ = context(tmp_path, monkeypatch)
    summary = rescore(store, compiled(write(tmp_path / "pets.yaml", PETS), ctx), MODEL_ID)
    assert summary.items == 2
    assert {r.decision for r in rows(store).values()} == {Action.REVIEW}  # type: ignore[attr-defined]


def test_result_matches_what_the_pipeline_path_would_store(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from moderator.engine.rescore import result_at, score_matrix

    seed(store, {"mix": axis(0, 1), "cat": axis(0)})
    ctx, _ = context(tmp_path, monkeypatch)
    policy = compiled(write(tmp_path / "pets.yaml", PETS), ctx)
    matrix = load_embedding_matrix(store, MODEL_ID)
    scored = score_matrix(policy, matrix)
    from moderator.scorers import ScoringBatch

    expected = policy.evaluate(ScoringBatch(sha256=matrix.shas, embeddings=matrix.rows(0, len(matrix))))
    got: list[PolicyResult] = [result_at(policy, scored, i) for i in range(len(matrix))]
    assert got == expected


def stored_rows(store: Store) -> dict[str, tuple[object, ...]]:
    """uri/policy -> the stored result as written (text columns, not parsed), and the item's decision."""
    query = (
        "SELECT items.uri, results.policy, results.policy_version, results.scorer, results.model_id, "
        "results.action, results.scores, results.fired, results.tags, items.decision "
        "FROM results JOIN items ON items.id = results.item_id"
    )
    with store.session() as s:
        return {f"{r[0]}/{r[1]}": tuple(r[2:]) for r in s.connection().exec_driver_sql(query)}


def test_rescore_stores_what_a_scan_stored_for_the_same_embedding(
    tmp_path: Path, tiny_settings: Settings, store: Store, photo_dir: Path
) -> None:
    from functools import partial

    from moderator.engine.compile import compile_policy
    from moderator.models.clip import get_clip_model, model_id_for
    from moderator.pipeline import Pipeline
    from moderator.policy.load import load_policy
    from moderator.scorers import ScorerContext

    # Every class fires somewhere (threshold 0 always fires), so fired, evidence and tags are compared too.
    text = (SHIPPED_POLICIES / "nsfw.yaml").read_text().replace("threshold: 0.5", "threshold: 0.0")
    path = write(tmp_path / "nsfw.yaml", text.replace("{tag: 0.4, review: 0.8}", "{tag: 0.0, review: 0.2}"))
    settings = tiny_settings.model_copy(update={"policies": [path]})
    Pipeline(settings, store).scan_targets([str(photo_dir)])
    scanned = stored_rows(store)
    assert len(scanned) == 6 and all(row[5] != "[]" for row in scanned.values())
    ctx = ScorerContext(settings=settings, clip=partial(get_clip_model, settings))
    policy = compile_policy(load_policy(path), ctx)
    assert isinstance(policy, CompiledPolicy)
    summary = rescore(store, policy, model_id_for(settings))
    assert (summary.items, summary.decisions_changed) == (6, 0)
    assert stored_rows(store) == scanned  # byte for byte: scores, fired with evidence, tags, version, model


def test_result_encoder_writes_what_the_store_writes() -> None:
    from moderator.store.results import ResultEncoder, encode_result

    spec = PolicySpec.model_validate(
        {
            "name": "p",
            "classes": {
                "a": {"prompts": ["x"], "actions": {"tag": 0.2, "review": 0.5, "block": 0.8}},
                "b-2": {"prompts": ["y"], "threshold": 0.1, "action": "tag"},
                "C": {"prompts": ["z"]},
            },
        }
    )
    rules = DecisionRules.from_spec(spec)
    meta = PolicyMeta("p", "v", "clip", "m")
    encoder = ResultEncoder(rules.classes)
    rng = np.random.default_rng(3)
    scores = np.concatenate([rng.random((300, 3)), [[0.0, 1.0, 1e-9], [0.8, 0.1, 0.5]]])
    decided = apply_rules(rules, scores)
    severity, threshold = decided.severity, decided.threshold
    texts = ['a "quoted" prompt', "ünïcödé 100% (frame 2)", "back\\slash\n"]
    for i, row in enumerate(scores):
        evidence = [texts[(i + j) % 3] for j in range(3)]
        expected = encode_result(decide(rules, meta, row, evidence))
        got = encoder.encode(
            row.tolist(), severity[i].tolist(), threshold[i].tolist(), evidence, int(decided.action[i])
        )
        assert got == expected


SECOND = """
name: vet
mode: exclusive
templates: ["{}"]
classes:
  dog: {prompts: [axis1], threshold: 0.9, action: tag}
  x: {prompts: [axis3]}
"""
RULED = PETS + "second_opinion:\n  dog: {needs: vet.dog, otherwise: tag}\n"


def test_rescore_applies_second_opinions_against_stored_results(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from moderator.decide import apply_second_opinions, second_opinion_rules
    from moderator.scorers import ScoringBatch

    # Both dogs are dogs to pets; only dog1 is one to vet (dog2 sits between its two classes).
    seed(store, {"dog1": axis(1), "dog2": axis(1, 3), "cat1": axis(0)})
    ctx, _ = context(tmp_path, monkeypatch)
    vet = compiled(write(tmp_path / "vet.yaml", SECOND), ctx)
    rescore(store, vet, MODEL_ID)
    pets = compiled(write(tmp_path / "pets.yaml", RULED), ctx)
    summary = rescore(store, pets, MODEL_ID)
    assert summary.actions == {"review": 1, "tag": 2}
    stored = rows(store)
    assert {u: r.decision for u, r in stored.items()} == {  # type: ignore[attr-defined]
        "dog1": Action.REVIEW,
        "dog2": Action.TAG,
        "cat1": Action.TAG,
    }
    # The same results as the pipeline's: each item scored, then second opinions over both policies.
    rules = second_opinion_rules([pets.loaded.spec, vet.loaded.spec])
    for uri in ("dog1", "dog2"):
        sha = sha_of(uri)
        batch = ScoringBatch(sha256=[sha], embeddings=[store.load_embeddings([sha], MODEL_ID)[sha].astype(np.float32)])
        expected = apply_second_opinions([pets.evaluate(batch)[0], vet.evaluate(batch)[0]], rules)
        encoded = [encode_result(r) for r in expected]
        by_policy = {k.split("/")[1]: v for k, v in stored_rows(store).items() if k.startswith(f"{uri}/")}
        assert [by_policy[r.policy][3:6] for r in expected] == [(e.action, e.scores, e.fired) for e in encoded]
    dog2 = json.loads(str(stored_rows(store)["dog2/pets"][5]))[0]
    assert dog2["action"] == "tag" and "needs vet.dog to agree: it did not fire" in dog2["evidence"]


def test_diff_applies_second_opinions(tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    from moderator.engine.diff import diff_policies

    seed(store, {"dog1": axis(1), "dog2": axis(1, 3)})
    ctx, _ = context(tmp_path, monkeypatch)
    rescore(store, compiled(write(tmp_path / "vet.yaml", SECOND), ctx), MODEL_ID)
    old = compiled(write(tmp_path / "pets.yaml", PETS), ctx)
    rescore(store, old, MODEL_ID)
    diff = diff_policies(store, old, compiled(write(tmp_path / "ruled.yaml", RULED), ctx), MODEL_ID)
    assert diff.scores_reused
    assert dict(diff.decision_moves) == {"review -> tag": 1}
    assert [(s.uri, s.fired_removed, s.fired_added) for s in diff.sample] == [("dog2", ["dog:review"], ["dog:tag"])]
