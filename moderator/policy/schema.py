"""The policy file format (policies/*.yaml), as pydantic models.

A policy is a label set scored together::

    name: nsfw
    description: Sexual content
    mode: exclusive                 # or multilabel
    templates: ["a photo of {}."]   # prompt ensemble: every prompt is put in every template
    classes:
      neutral:                      # no threshold/action: scored, never fires
        prompts: ["people fully clothed", "a landscape"]
      suggestive:
        prompts: ["a person in underwear or swimwear"]
        threshold: 0.45             # fires when score >= threshold (0 always fires)
        action: review              # tag < review < block
      explicit:
        prompts: ["explicit nudity"]
        actions: {review: 0.30, block: 0.70}   # a band: the most severe action reached wins
    scorer: clip                    # the default; or a plugin from the moderator.scorers group
    options: {}                     # scorer-specific settings, validated by that scorer
    second_opinion:                 # optional: agreement needed before a class's most severe action
      explicit: {needs: opennsfw.nsfw, otherwise: review}

Second opinions: ``explicit`` keeps its most severe action (block here) only when
class ``nsfw`` of policy ``opennsfw`` also fired on the same item; otherwise it is
downgraded to ``otherwise`` (default review), and the result's evidence says which
signals fired. Applied after every policy ran (decide.apply_second_opinions); a
policy that did not run counts as not agreeing.

Modes (for the clip scorer; every score is in [0, 1]):

- ``exclusive``: one softmax across all classes (neutral ones included, as they
  absorb the probability of harmless images). Needs at least two classes.
- ``multilabel``: each class is judged on its own, by a two-way softmax of the
  class against the policy-level ``negatives:`` prompts (e.g. "something", "an
  object": what any photo looks like). ``negatives`` is required in multilabel
  mode with the clip scorer and not allowed in exclusive mode (add a neutral class
  there instead). A class without threshold/action is still scored in multilabel
  mode, but never fires, and is not a negative.

Within a class, each prompt is embedded in every template and averaged over the
templates; a class's similarity is that of its best-matching prompt, which the
result names as evidence.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"
CLASS_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"
FireAction = Literal["tag", "review", "block"]  # ALLOW is what happens when nothing fires
SEVERITY: dict[str, int] = {"tag": 1, "review": 2, "block": 3}
Score = Annotated[float, Field(ge=0.0, le=1.0)]
Prompt = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]


class Mode(StrEnum):
    EXCLUSIVE = "exclusive"
    MULTILABEL = "multilabel"


class FieldError(ValueError):
    """A cross-field error that knows which field (relative to the model) is wrong.

    Pydantic keeps the raised exception in the error's ctx, so the loader can point
    at the right line instead of at the enclosing mapping.
    """

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc


class ClassSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    prompts: list[Prompt] | None = Field(None, min_length=1)
    threshold: Score | None = None
    action: FireAction | None = None
    actions: dict[FireAction, Score] | None = Field(None, min_length=1)

    @field_validator("actions")
    @classmethod
    def _band_increases(cls, actions: dict[str, float] | None) -> dict[str, float] | None:
        if actions:
            ordered = sorted(actions.items(), key=lambda kv: SEVERITY[kv[0]])
            for (low, t_low), (high, t_high) in zip(ordered, ordered[1:], strict=False):
                if not t_high > t_low:
                    raise ValueError(
                        f"band thresholds must increase with severity (tag < review < block): "
                        f"{high} ({t_high}) must be above {low} ({t_low})"
                    )
        return actions

    @model_validator(mode="after")
    def _one_rule(self) -> ClassSpec:
        if self.actions is not None and (self.threshold is not None or self.action is not None):
            raise FieldError(("actions",), "use either threshold + action, or actions: {review: x, block: y}; not both")
        if (self.threshold is None) != (self.action is None):
            missing = "action" if self.action is None else "threshold"
            hint = "one of tag, review, block" if missing == "action" else "a number from 0 to 1"
            raise FieldError((missing,), f"threshold and action go together: add {missing} ({hint}), or remove both")
        return self

    def bands(self) -> list[tuple[float, str]]:
        """(threshold, action) pairs, least severe first; empty for a class that never fires."""
        if self.actions:
            return sorted(((t, a) for a, t in self.actions.items()), key=lambda ta: SEVERITY[ta[1]])
        if self.threshold is not None and self.action is not None:
            return [(self.threshold, self.action)]
        return []


class SecondOpinion(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    needs: Annotated[str, StringConstraints(pattern=NAME_PATTERN[:-1] + r"\.[A-Za-z0-9][A-Za-z0-9_-]*$")] = Field(
        description="POLICY.CLASS that must also fire"
    )
    otherwise: Literal["tag", "review"] = "review"

    @property
    def policy(self) -> str:
        return self.needs.split(".", 1)[0]

    @property
    def class_name(self) -> str:
        return self.needs.split(".", 1)[1]


class PolicySpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, StringConstraints(pattern=NAME_PATTERN, max_length=64)]
    description: str = ""
    mode: Mode = Mode.EXCLUSIVE
    templates: list[Prompt] = Field(default_factory=lambda: ["a photo of {}."], min_length=1)
    classes: dict[Annotated[str, StringConstraints(pattern=CLASS_PATTERN, max_length=64)], ClassSpec] = Field(
        min_length=1
    )
    negatives: list[Prompt] | None = Field(None, min_length=1)
    scorer: Annotated[str, StringConstraints(min_length=1, max_length=64)] = "clip"
    options: dict[str, Any] = Field(default_factory=dict)
    second_opinion: dict[str, SecondOpinion] = Field(default_factory=dict)

    @field_validator("templates")
    @classmethod
    def _templates_have_slot(cls, templates: list[str]) -> list[str]:
        for i, template in enumerate(templates):
            if template.count("{}") != 1:
                raise FieldError((i,), f'template {template!r} must contain "{{}}" exactly once, where the prompt goes')
        return templates

    @model_validator(mode="after")
    def _consistent(self) -> PolicySpec:
        if self.mode is Mode.EXCLUSIVE and len(self.classes) < 2:
            raise FieldError(("classes",), "exclusive mode needs at least two classes (add a neutral class)")
        if self.mode is Mode.EXCLUSIVE and self.negatives is not None:
            raise FieldError(("negatives",), "negatives are for multilabel mode; in exclusive mode add a neutral class")
        for name, rule in self.second_opinion.items():
            self._check_second_opinion(name, rule)
        if self.scorer == "clip":
            for name, cls in self.classes.items():
                if not cls.prompts:
                    raise FieldError(("classes", name, "prompts"), "the clip scorer needs a non-empty list of prompts")
            if self.mode is Mode.MULTILABEL and not self.negatives:
                raise FieldError(
                    ("negatives",),
                    "multilabel mode with the clip scorer needs negatives: prompts that any image matches, "
                    'e.g. ["something"]',
                )
            if self.options:
                raise FieldError(("options",), "the clip scorer takes no options")
        return self

    def _check_second_opinion(self, name: str, rule: SecondOpinion) -> None:
        loc: tuple[str | int, ...] = ("second_opinion", name)
        cls = self.classes.get(name)
        if cls is None:
            raise FieldError(loc, f"no class {name!r} in this policy; classes: {', '.join(self.classes)}")
        bands = cls.bands()
        if not bands:
            raise FieldError(loc, f"class {name!r} never fires (no threshold/action): it needs no second opinion")
        top = bands[-1][1]
        if SEVERITY[rule.otherwise] >= SEVERITY[top]:
            raise FieldError(
                ("second_opinion", name, "otherwise"),
                f"{rule.otherwise!r} must be less severe than the class's most severe action {top!r}",
            )
        if (rule.policy, rule.class_name) == (self.name, name):
            raise FieldError(("second_opinion", name, "needs"), "a class cannot be its own second opinion")

    def class_names(self) -> list[str]:
        return list(self.classes)
