"""`policy diff` logic: what an edit would change, from stored embeddings, on items with known answers."""

from __future__ import annotations

from pathlib import Path

import pytest

from moderator.engine.diff import diff_policies
from moderator.engine.rescore import rescore
from moderator.store import ExportFilters, Store
from tests.lifecycle import MODEL_ID, PETS, axis, compiled, context, seed, write

ITEMS = {"cat1": axis(0), "cat2": axis(0), "dog1": axis(1), "dog2": axis(1), "other1": axis(2)}


def test_threshold_edit_counts_decisions_tags_and_classes(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(store, ITEMS)
    ctx, clip = context(tmp_path, monkeypatch)
    old = compiled(write(tmp_path / "old.yaml", PETS), ctx)
    # dog: review -> block; cat: no longer tagged (tag only above 0.99999, which e^10/(e^10+2) misses)
    new_text = PETS.replace("action: review", "action: block").replace(
        "threshold: 0.5, action: tag", "threshold: 0.99999, action: tag"
    )
    new = compiled(write(tmp_path / "new.yaml", new_text), ctx)
    before = store.counts()
    diff = diff_policies(store, old, new, MODEL_ID, sample=10)
    assert store.counts() == before  # a diff writes nothing
    assert diff.scores_reused  # only thresholds/actions changed: scored once
    assert (diff.items, diff.missing) == (5, 0)
    assert diff.decisions_changed == 4
    assert dict(diff.decision_moves) == {"tag -> allow": 2, "review -> block": 2}
    assert (diff.tags_changed, diff.tags_added, diff.tags_removed) == (2, 0, 2)
    by_class = {c.name: c for c in diff.classes}
    assert (by_class["cat"].fired_old, by_class["cat"].fired_new, by_class["cat"].no_longer_fired) == (2, 0, 2)
    assert (by_class["dog"].fired_old, by_class["dog"].fired_new, by_class["dog"].action_changed) == (2, 2, 2)
    assert by_class["other"].fired_old == by_class["other"].fired_new == 0
    sample = {s.uri: s for s in diff.sample}
    assert set(sample) == {"cat1", "cat2", "dog1", "dog2"}
    assert sample["dog1"].fired_removed == ["dog:review"] and sample["dog1"].fired_added == ["dog:block"]
    assert sample["cat1"].decision_old == "tag" and sample["cat1"].decision_new == "allow"


def test_prompt_edit_rescores_and_moves_items_between_classes(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(store, ITEMS)
    ctx, _ = context(tmp_path, monkeypatch)
    old = compiled(write(tmp_path / "old.yaml", PETS), ctx)
    # The cat prompt now points where the "other" items are.
    new = compiled(
        write(
            tmp_path / "new.yaml",
            PETS.replace("prompts: [axis0]", "prompts: [axis2]").replace("prompts: [axis2]}", "prompts: [axis0]}"),
        ),
        ctx,
    )
    diff = diff_policies(store, old, new, MODEL_ID)
    assert not diff.scores_reused
    by_class = {c.name: c for c in diff.classes}
    assert (by_class["cat"].newly_fired, by_class["cat"].no_longer_fired) == (1, 2)
    assert dict(diff.decision_moves) == {"tag -> allow": 2, "allow -> tag": 1}


def test_decision_includes_other_policies_stored_results(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(store, ITEMS)
    ctx, _ = context(tmp_path, monkeypatch)
    strict = PETS.replace("name: pets", "name: strict").replace("action: tag", "action: block")
    rescore(store, compiled(write(tmp_path / "strict.yaml", strict), ctx), MODEL_ID)  # blocks the cats
    old = compiled(write(tmp_path / "old.yaml", PETS), ctx)
    new = compiled(
        write(tmp_path / "new.yaml", PETS.replace("threshold: 0.5, action: tag", "threshold: 1.0, action: tag")), ctx
    )
    diff = diff_policies(store, old, new, MODEL_ID)
    assert diff.tags_removed == 2
    assert diff.decisions_changed == 0  # the cats stay blocked by the other policy
    assert "block" in {r.decision for r in store.iter_export(ExportFilters())}


def test_added_and_removed_classes_are_compared_by_name(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(store, ITEMS)
    ctx, _ = context(tmp_path, monkeypatch)
    old = compiled(write(tmp_path / "old.yaml", PETS), ctx)
    new_text = PETS.replace(
        "  other: {prompts: [axis2]}",
        "  other: {prompts: [axis2]}\n  bird: {prompts: [axis3], threshold: 0.0, action: tag}",
    )
    new = compiled(write(tmp_path / "new.yaml", new_text), ctx)
    diff = diff_policies(store, old, new, MODEL_ID, sample=2)
    bird = next(c for c in diff.classes if c.name == "bird")
    assert (bird.fired_old, bird.fired_new) == (0, 5)  # threshold 0 always fires
    assert diff.tags_added == 5 and len(diff.sample) == 2
    assert diff.sample[0].scores["bird"][0] is None
