"""Thresholds, bands and actions: scores -> fired classes -> policy action -> item decision."""

from __future__ import annotations

import numpy as np
import pytest

from moderator.decide import DecisionRules, PolicyMeta, decide, item_decision
from moderator.policy.schema import PolicySpec
from moderator.types import Action

SPEC = PolicySpec.model_validate(
    {
        "name": "demo",
        "classes": {
            "neutral": {"prompts": ["a landscape"]},
            "cat": {"prompts": ["a cat"], "threshold": 0.5, "action": "tag"},
            "gore": {"prompts": ["gore"], "actions": {"review": 0.3, "block": 0.7}},
            "always": {"prompts": ["anything"], "threshold": 0.0, "action": "tag"},
        },
    }
)
RULES = DecisionRules.from_spec(SPEC)
META = PolicyMeta(policy="demo", policy_version="v1", scorer="clip", model_id="m")
EVIDENCE = ["a landscape", "a cat", "gore", "anything"]


def run(neutral: float, cat: float, gore: float, always: float = 0.0) -> tuple[Action, dict[str, Action]]:
    result = decide(RULES, META, np.array([neutral, cat, gore, always]), EVIDENCE)
    return result.action, {f.name: f.action for f in result.fired}


def test_rules_follow_the_spec() -> None:
    assert RULES.classes == ("neutral", "cat", "gore", "always")
    assert RULES.bands[0] == ()  # neutral never fires
    assert [(b.threshold, b.action) for b in RULES.bands[2]] == [(0.3, Action.REVIEW), (0.7, Action.BLOCK)]


def test_score_equal_to_threshold_fires_and_just_below_does_not() -> None:
    assert run(1.0, 0.5, 0.0)[1]["cat"] is Action.TAG
    assert "cat" not in run(1.0, np.nextafter(0.5, 0.0), 0.0)[1]


def test_threshold_zero_always_fires_and_neutral_never() -> None:
    action, fired = run(1.0, 0.0, 0.0, always=0.0)
    assert fired == {"always": Action.TAG}
    assert action is Action.TAG


@pytest.mark.parametrize(
    ("gore", "expected"),
    [(0.0, None), (0.29, None), (0.3, Action.REVIEW), (0.69, Action.REVIEW), (0.7, Action.BLOCK), (1.0, Action.BLOCK)],
)
def test_band_gives_the_most_severe_action_reached(gore: float, expected: Action | None) -> None:
    _, fired = run(0.0, 0.0, gore)
    assert fired.get("gore") == expected


def test_policy_action_is_most_severe_fired_with_explanations() -> None:
    result = decide(RULES, META, np.array([0.1, 0.9, 0.35, 0.0]), EVIDENCE)
    assert result.action is Action.REVIEW
    assert result.tags == ["cat", "always"]
    assert result.flags == ["gore"]
    gore = next(f for f in result.fired if f.name == "gore")
    assert (gore.score, gore.threshold, gore.evidence) == (pytest.approx(0.35), 0.3, "gore")
    assert result.scores == pytest.approx({"neutral": 0.1, "cat": 0.9, "gore": 0.35, "always": 0.0})
    assert (result.policy, result.policy_version, result.scorer, result.model_id) == ("demo", "v1", "clip", "m")


def test_nothing_fired_is_allow() -> None:
    rules = DecisionRules.from_spec(
        PolicySpec.model_validate(
            {
                "name": "x",
                "classes": {"a": {"prompts": ["a"]}, "b": {"prompts": ["b"], "threshold": 0.9, "action": "block"}},
            }
        )
    )
    result = decide(rules, META, np.array([0.5, 0.5]), ["a", "b"])
    assert (result.action, result.fired) == (Action.ALLOW, ())


def test_item_decision_is_most_severe_over_policies() -> None:
    tagged = decide(RULES, META, np.array([0.0, 0.9, 0.0, 0.0]), EVIDENCE)
    reviewed = decide(RULES, META, np.array([0.0, 0.0, 0.5, 0.0]), EVIDENCE)
    blocked = decide(RULES, META, np.array([0.0, 0.0, 0.8, 0.0]), EVIDENCE)
    assert item_decision([]) is Action.ALLOW
    assert item_decision([tagged]) is Action.TAG
    assert item_decision([tagged, reviewed]) is Action.REVIEW
    assert item_decision([reviewed, blocked, tagged]) is Action.BLOCK


def test_misaligned_scores_are_refused() -> None:
    with pytest.raises(ValueError, match="4 classes"):
        decide(RULES, META, np.array([0.1, 0.2]), EVIDENCE[:2])
