"""Second opinions: a class's most severe action needs another policy's class to agree."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from moderator.decide import (
    DecisionRules,
    PolicyMeta,
    apply_second_opinions,
    decide,
    item_decision,
    second_opinion_rules,
)
from moderator.policy.schema import PolicySpec
from moderator.types import Action, PolicyResult

CLIP: dict[str, Any] = {
    "name": "nsfw",
    "mode": "exclusive",
    "classes": {
        "neutral": {"prompts": ["a landscape"]},
        "explicit": {"prompts": ["explicit nudity"], "actions": {"review": 0.3, "block": 0.7}},
    },
    "second_opinion": {"explicit": {"needs": "opennsfw.nsfw"}},
}
NSFW: dict[str, Any] = {
    "name": "opennsfw",
    "mode": "multilabel",
    "scorer": "opennsfw",
    "classes": {"nsfw": {"actions": {"review": 0.4, "block": 0.85}}},
}


def _spec(base: dict[str, Any], **changes: Any) -> PolicySpec:
    return PolicySpec.model_validate({**base, **changes})


def _result(spec: PolicySpec, *scores: float) -> PolicyResult:
    meta = PolicyMeta(spec.name, "v1", spec.scorer, "model")
    return decide(DecisionRules.from_spec(spec), meta, np.array(scores), [f"why {c}" for c in spec.classes])


def _judge(clip_explicit: float, nsfw: float | None, *specs: PolicySpec) -> dict[str, PolicyResult]:
    clip, other = specs or (_spec(CLIP), _spec(NSFW))
    results = [_result(clip, 1 - clip_explicit, clip_explicit)]
    if nsfw is not None:
        results.append(_result(other, nsfw))
    return {r.policy: r for r in apply_second_opinions(results, second_opinion_rules([clip, other]))}


def test_block_is_kept_when_the_second_opinion_fires() -> None:
    out = _judge(0.9, 0.5)
    fired = out["nsfw"].fired[0]
    assert (out["nsfw"].action, fired.action) == (Action.BLOCK, Action.BLOCK)
    assert fired.evidence == "why explicit; second opinion opennsfw.nsfw fired too (0.500 >= 0.4)"


def test_block_without_agreement_goes_to_review_and_says_why() -> None:
    out = _judge(0.9, 0.1)
    fired = out["nsfw"].fired[0]
    assert (out["nsfw"].action, fired.action, fired.score) == (Action.REVIEW, Action.REVIEW, pytest.approx(0.9))
    assert fired.evidence == "why explicit; block needs opennsfw.nsfw to agree: it did not fire (0.100); review"
    assert out["opennsfw"].action is Action.ALLOW
    assert item_decision(out.values()) is Action.REVIEW


def test_a_policy_that_did_not_run_does_not_agree() -> None:
    out = _judge(0.9, None)
    assert out["nsfw"].action is Action.REVIEW
    assert "opennsfw.nsfw to agree: it did not run" in out["nsfw"].fired[0].evidence


def test_lower_bands_and_other_policies_are_left_alone() -> None:
    out = _judge(0.5, 0.95)  # CLIP only reaches review; open_nsfw blocks on its own (it has no rule)
    assert out["nsfw"].fired[0].evidence == "why explicit"
    assert (out["nsfw"].action, out["opennsfw"].action) == (Action.REVIEW, Action.BLOCK)


def test_rules_in_both_directions_block_only_when_both_fire() -> None:
    clip = _spec(CLIP)
    other = _spec(NSFW, second_opinion={"nsfw": {"needs": "nsfw.explicit", "otherwise": "tag"}})
    both = _judge(0.9, 0.9, clip, other)
    only_nsfw = _judge(0.1, 0.9, clip, other)
    assert item_decision(both.values()) is Action.BLOCK
    assert (only_nsfw["opennsfw"].action, item_decision(only_nsfw.values())) == (Action.TAG, Action.TAG)
    assert "nsfw.explicit to agree: it did not fire (0.100); tag" in only_nsfw["opennsfw"].fired[0].evidence


def test_no_rules_returns_results_unchanged() -> None:
    results = [_result(_spec(NSFW), 0.9)]
    assert apply_second_opinions(results, []) == results


@pytest.mark.parametrize(
    ("second_opinion", "message"),
    [
        ({"explicitt": {"needs": "opennsfw.nsfw"}}, "no class 'explicitt'"),
        ({"neutral": {"needs": "opennsfw.nsfw"}}, "never fires"),
        ({"explicit": {"needs": "opennsfw.nsfw", "otherwise": "block"}}, "otherwise"),
        ({"explicit": {"needs": "opennsfw"}}, "needs"),
        ({"explicit": {"needs": "nsfw.explicit"}}, "its own second opinion"),
        ({"explicit": {"needs": "opennsfw.nsfw", "downgrade": "tag"}}, "downgrade"),
    ],
)
def test_invalid_rules_are_refused(second_opinion: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        _spec(CLIP, second_opinion=second_opinion)


def test_otherwise_must_be_below_the_top_action() -> None:
    review_only = {**CLIP["classes"], "explicit": {"prompts": ["x"], "threshold": 0.5, "action": "review"}}
    with pytest.raises(ValidationError, match="less severe"):
        _spec(CLIP, classes=review_only)
