"""Evaluation metrics and threshold suggestions on scores and embeddings whose answers are known."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from moderator.engine.evaluate import (
    average_precision,
    evaluate_policy,
    evaluate_scores,
    plot_pr_curves,
    pr_curve,
    threshold_for_precision,
    threshold_for_recall,
    write_json,
)
from moderator.policy.load import PolicyError, load_policy
from moderator.policy.variants import load_variants
from tests.lifecycle import PETS, axis, compiled, context, write

# Ranked: + + - + -  => precision 1, 1, 2/3, 3/4, 3/5 and recall 1/3, 2/3, 2/3, 1, 1.
SCORES = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
POSITIVE = np.array([1, 1, 0, 1, 0], dtype=bool)


def test_pr_curve_by_hand() -> None:
    curve = pr_curve(SCORES, POSITIVE)
    assert curve.thresholds.tolist() == [0.9, 0.8, 0.7, 0.6, 0.5]
    assert curve.precision.tolist() == pytest.approx([1, 1, 2 / 3, 3 / 4, 3 / 5])
    assert curve.recall.tolist() == pytest.approx([1 / 3, 2 / 3, 2 / 3, 1, 1])
    assert average_precision(curve) == pytest.approx(1 / 3 + 1 / 3 + 1 / 3 * 3 / 4)


def test_tied_scores_are_one_threshold() -> None:
    curve = pr_curve(np.array([0.7, 0.7, 0.2]), np.array([True, False, True]))
    assert curve.thresholds.tolist() == [0.7, 0.2]
    assert curve.precision.tolist() == pytest.approx([0.5, 2 / 3])


def test_suggested_thresholds_reach_their_targets() -> None:
    curve = pr_curve(SCORES, POSITIVE)
    assert threshold_for_precision(curve, 1.0) == 0.8  # the lowest threshold with no false positive
    assert threshold_for_precision(curve, 0.75) == 0.6  # 3/4 precision, all recall
    assert threshold_for_recall(curve, 1.0) == 0.6  # the highest threshold finding all three
    assert threshold_for_recall(curve, 0.5) == 0.8
    assert threshold_for_precision(pr_curve(SCORES, np.zeros(5, bool)), 0.5) is None


def test_confusion_matrix_and_per_class_metrics() -> None:
    # rows: a, a, a, b, b, c ; predicted (argmax): a, a, b, b, a, c
    scores = np.array([[0.9, 0.1, 0], [0.8, 0.2, 0], [0.3, 0.7, 0], [0.1, 0.9, 0], [0.6, 0.4, 0], [0.1, 0.1, 0.8]])
    truth = ["a", "a", "a", "b", "b", "c"]
    report = evaluate_scores(scores, truth, ["a", "b", "c"], [0.5, None, 0.9], target_precision=1.0)
    assert report.confusion == [[2, 1, 0], [1, 1, 0], [0, 0, 1]]
    assert report.accuracy == pytest.approx(4 / 6)
    a, b, c = report.per_class
    assert (a.support, a.precision, a.recall) == (3, pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert b.f1 == pytest.approx(0.5)
    assert (a.precision_at_threshold, a.recall_at_threshold) == (pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert c.threshold == 0.9 and c.recall_at_threshold == 0.0  # 0.8 < 0.9: the policy misses it
    assert c.threshold_for_precision == 0.8  # ... and the data says where it should be
    assert b.precision_at_threshold is None  # b never fires


def test_unknown_labels_are_refused() -> None:
    with pytest.raises(ValueError, match=r"labels \['zebra'\] are not classes"):
        evaluate_scores(np.zeros((1, 2)), ["zebra"], ["a", "b"], [None, None])


def test_policy_on_known_embeddings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx, _ = context(tmp_path, monkeypatch)
    policy = compiled(write(tmp_path / "pets.yaml", PETS), ctx)
    embeddings = [axis(0)[None], axis(0)[None], axis(1)[None], axis(2)[None], axis(1)[None]]
    truth = ["cat", "cat", "dog", "other", "cat"]  # the last is a cat that looks like a dog
    report = evaluate_policy(policy, embeddings, truth)
    assert report.confusion == [[2, 1, 0], [0, 1, 0], [0, 0, 1]]
    cat, dog, _ = report.per_class
    assert (cat.recall, dog.precision) == (pytest.approx(2 / 3), pytest.approx(1 / 2))
    assert cat.threshold == 0.5 and dog.threshold == 0.5


def test_prompt_variants_compare_on_the_same_classes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx, _ = context(tmp_path, monkeypatch)
    base = load_policy(write(tmp_path / "pets.yaml", PETS))
    variants_file = write(
        tmp_path / "variants.yaml",
        """
        variants:
          swapped: {prompts: {cat: [axis1], dog: [axis0]}}
          same: {templates: ["{}"]}
        """,
    )
    variants = dict(load_variants(variants_file, base))
    assert set(variants) == {"swapped", "same"} and variants["same"].version == base.version
    embeddings = [axis(0)[None], axis(1)[None], axis(2)[None]]
    truth = ["cat", "dog", "other"]
    good = evaluate_policy(compiled(base.path, ctx), embeddings, truth)
    from moderator.engine.compile import compile_policy

    bad = evaluate_policy(compile_policy(variants["swapped"], ctx), embeddings, truth)  # type: ignore[arg-type]
    assert good.accuracy == 1.0 and bad.accuracy == pytest.approx(1 / 3)
    assert good.mean_average_precision > bad.mean_average_precision  # type: ignore[operator]


def test_variant_naming_an_unknown_class_is_a_located_error(tmp_path: Path) -> None:
    base = load_policy(write(tmp_path / "pets.yaml", PETS))
    bad = write(tmp_path / "v.yaml", "variants:\n  x:\n    prompts: {zebra: [stripes]}\n")
    with pytest.raises(PolicyError) as err:
        load_variants(bad, base)
    assert err.value.line == 3 and "zebra" in str(err.value)


def test_pr_png_and_json_report(tmp_path: Path) -> None:
    report = evaluate_scores(np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]), ["a", "b", "b"], ["a", "b"], [0.5, 0.5])
    png = plot_pr_curves(report.curves, tmp_path / "out" / "pr.png", "test")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    path = write_json(report.as_dict(), tmp_path / "out" / "report.json")
    loaded = json.loads(path.read_text())
    assert loaded["confusion"] == [[1, 0], [1, 1]] and loaded["per_class"][0]["name"] == "a"


def test_results_of_the_scan_path_measure_like_the_embeddings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from moderator.engine.evaluate import evaluate_results
    from moderator.scorers import ScoringBatch

    ctx, _ = context(tmp_path, monkeypatch)
    policy = compiled(write(tmp_path / "pets.yaml", PETS), ctx)
    embeddings = [axis(0)[None], axis(1)[None], axis(2)[None], axis(1)[None]]
    truth = ["cat", "dog", "other", "cat"]
    results = policy.evaluate(ScoringBatch(sha256=[""] * 4, embeddings=embeddings))
    from_results = evaluate_results(policy, results, truth)
    assert (
        from_results.confusion
        == evaluate_policy(policy, embeddings, truth).confusion
        == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    )


def test_labels_a_scorer_scores_become_classes_that_never_fire(tmp_path: Path) -> None:
    from moderator.engine.evaluate import with_label_classes
    from moderator.settings import SHIPPED_POLICIES

    opennsfw = load_policy(SHIPPED_POLICIES / "opennsfw.yaml")
    extended = with_label_classes(opennsfw, ["nsfw", "sfw"])
    assert list(extended.spec.classes) == ["nsfw", "sfw"] and extended.spec.classes["sfw"].bands() == []
    assert extended.spec.classes["nsfw"] == opennsfw.spec.classes["nsfw"]
    assert with_label_classes(opennsfw, ["nsfw"]) is opennsfw
    with pytest.raises(ValueError, match="prompts"):  # a clip class is nothing without prompts
        with_label_classes(load_policy(write(tmp_path / "pets.yaml", PETS)), ["zebra"])
