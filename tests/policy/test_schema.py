"""PolicySpec / ClassSpec validation, without files (the loader's located errors: test_load.py)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from moderator.policy.schema import ClassSpec, FieldError, Mode, PolicySpec


def spec(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "demo",
        "classes": {
            "neutral": {"prompts": ["a landscape"]},
            "cat": {"prompts": ["a cat"], "threshold": 0.5, "action": "tag"},
        },
    }
    base.update(overrides)
    return base


def error_of(data: dict[str, Any]) -> tuple[tuple[Any, ...], str]:
    """(loc incl. the FieldError's own loc, message) of the first validation error."""
    with pytest.raises(ValidationError) as info:
        PolicySpec.model_validate(data)
    err = info.value.errors()[0]
    cause = (err.get("ctx") or {}).get("error")
    loc = tuple(err["loc"]) + (cause.loc if isinstance(cause, FieldError) else ())
    return loc, str(cause) if cause is not None else err["msg"]


def test_defaults() -> None:
    p = PolicySpec.model_validate(spec())
    assert p.mode is Mode.EXCLUSIVE
    assert p.scorer == "clip"
    assert p.templates == ["a photo of {}."]
    assert p.options == {}
    assert p.class_names() == ["neutral", "cat"]


def test_bands_least_severe_first() -> None:
    c = ClassSpec(prompts=["x"], actions={"block": 0.7, "tag": 0.1, "review": 0.3})
    assert c.bands() == [(0.1, "tag"), (0.3, "review"), (0.7, "block")]
    assert ClassSpec(prompts=["x"], threshold=0.0, action="block").bands() == [(0.0, "block")]
    assert ClassSpec(prompts=["x"]).bands() == []


@pytest.mark.parametrize(
    ("actions", "ok"),
    [
        ({"review": 0.3, "block": 0.7}, True),
        ({"tag": 0.0, "review": 0.5, "block": 1.0}, True),
        ({"review": 0.7, "block": 0.3}, False),
        ({"review": 0.5, "block": 0.5}, False),  # an empty review band is a mistake, not a shortcut
        ({"tag": 0.6, "review": 0.4}, False),
    ],
)
def test_band_must_increase_with_severity(actions: dict[str, float], ok: bool) -> None:
    data = spec(classes={"n": {"prompts": ["x"]}, "c": {"prompts": ["y"], "actions": actions}})
    if ok:
        PolicySpec.model_validate(data)
    else:
        loc, msg = error_of(data)
        assert loc == ("classes", "c", "actions")
        assert "increase with severity" in msg


@pytest.mark.parametrize(
    ("cls", "field"),
    [
        ({"prompts": ["y"], "threshold": 0.5}, "action"),
        ({"prompts": ["y"], "action": "tag"}, "threshold"),
        ({"prompts": ["y"], "threshold": 0.5, "action": "tag", "actions": {"block": 0.9}}, "actions"),
    ],
)
def test_threshold_and_action_go_together(cls: dict[str, Any], field: str) -> None:
    loc, _ = error_of(spec(classes={"n": {"prompts": ["x"]}, "c": cls}))
    assert loc == ("classes", "c", field)


@pytest.mark.parametrize("bad", [-0.01, 1.01, "high"])
def test_threshold_outside_unit_interval(bad: Any) -> None:
    loc, _ = error_of(
        spec(classes={"n": {"prompts": ["x"]}, "c": {"prompts": ["y"], "threshold": bad, "action": "tag"}})
    )
    assert loc[:3] == ("classes", "c", "threshold")


def test_allow_is_not_an_action() -> None:
    loc, msg = error_of(
        spec(classes={"n": {"prompts": ["x"]}, "c": {"prompts": ["y"], "threshold": 0.5, "action": "allow"}})
    )
    assert loc == ("classes", "c", "action")
    assert "'tag', 'review' or 'block'" in msg


def test_template_needs_one_slot() -> None:
    loc, msg = error_of(spec(templates=["a photo of {}.", "a photo"]))
    assert loc == ("templates", 1)
    assert "{}" in msg
    loc, _ = error_of(spec(templates=["{} and {}"]))
    assert loc == ("templates", 0)


def test_exclusive_needs_two_classes() -> None:
    loc, _ = error_of(spec(classes={"cat": {"prompts": ["a cat"]}}))
    assert loc == ("classes",)


def test_multilabel_clip_needs_negatives_and_exclusive_refuses_them() -> None:
    loc, msg = error_of(spec(mode="multilabel"))
    assert loc == ("negatives",)
    assert "multilabel" in msg
    PolicySpec.model_validate(spec(mode="multilabel", negatives=["something"]))
    loc, _ = error_of(spec(negatives=["something"]))
    assert loc == ("negatives",)


def test_clip_class_without_prompts() -> None:
    loc, msg = error_of(spec(classes={"n": {"prompts": ["x"]}, "c": {"threshold": 0.5, "action": "tag"}}))
    assert loc == ("classes", "c", "prompts")
    assert "clip" in msg


def test_other_scorer_needs_no_prompts_and_owns_its_options() -> None:
    p = PolicySpec.model_validate(
        {
            "name": "bad",
            "mode": "multilabel",
            "scorer": "hashlist",
            "options": {"lists": ["a.txt"]},
            "classes": {"known_bad": {"threshold": 1.0, "action": "block"}},
        }
    )
    assert p.classes["known_bad"].prompts is None
    loc, _ = error_of(spec(options={"lists": []}))
    assert loc == ("options",)


@pytest.mark.parametrize(
    "data",
    [
        spec(classes={"n": {"prompts": []}, "c": {"prompts": ["y"]}}),
        spec(classes={"n": {"prompts": ["  "]}, "c": {"prompts": ["y"]}}),
        spec(templates=[]),
        spec(classes={}),
        spec(name="Has Spaces"),
        spec(classes={"n": {"prompts": ["x"]}, "bad name": {"prompts": ["y"]}}),
        spec(extra_key=1),
        spec(classes={"n": {"prompts": ["x"]}, "c": {"prompts": ["y"], "treshold": 0.5}}),
    ],
)
def test_refused(data: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        PolicySpec.model_validate(data)
