"""Prompt variants of one policy, for `moderator eval --compare-prompts VARIANTS.yaml`.

    variants:
      bare:                                # a name of your choice
        templates: ["{}"]
        prompts: {dandelion: [dandelion], rose: [rose]}
      flower:
        templates: ["a photo of a {} flower."]

Each variant is the base policy with these fields replaced (``templates``,
``negatives``, and per class ``prompts``); thresholds and classes stay, so every
variant is scored on the same classes. The same safe YAML rules and located errors
as policy files apply.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from moderator.policy.load import (
    LoadedPolicy,
    PolicyError,
    _line_for,
    _read_text,
    field_path,
    parse_yaml,
    policy_version,
)
from moderator.policy.schema import PolicySpec, Prompt


class Variant(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    templates: list[Prompt] | None = Field(None, min_length=1)
    negatives: list[Prompt] | None = Field(None, min_length=1)
    prompts: dict[str, list[Prompt]] = Field(default_factory=dict)


class VariantsFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    variants: dict[str, Variant] = Field(min_length=1)


def load_variants(path: Path, base: LoadedPolicy) -> list[tuple[str, LoadedPolicy]]:
    """(name, policy) of each variant of `base` described in `path`, validated as whole policies."""
    data, lines = parse_yaml(_read_text(path), path)
    try:
        parsed = VariantsFile.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
        raise PolicyError(path, err["msg"], line=_line_for(lines, loc), field=field_path(loc)) from None
    out = []
    for name, variant in parsed.variants.items():
        where: tuple[str | int, ...] = ("variants", name)
        unknown = sorted(set(variant.prompts) - set(base.spec.classes))
        if unknown:
            raise PolicyError(
                path,
                f"classes {unknown} are not in policy {base.spec.name!r} ({', '.join(base.spec.classes)})",
                line=_line_for(lines, (*where, "prompts")),
                field=field_path((*where, "prompts")),
            )
        content: dict[str, Any] = base.spec.model_dump(mode="json")
        for key in ("templates", "negatives"):
            if getattr(variant, key) is not None:
                content[key] = getattr(variant, key)
        for cls, prompts in variant.prompts.items():
            content["classes"][cls]["prompts"] = prompts
        try:
            spec = PolicySpec.model_validate(content)
        except ValidationError as e:
            raise PolicyError(path, f"variant {name!r}: {e.errors()[0]['msg']}", line=_line_for(lines, where)) from None
        out.append((name, LoadedPolicy(spec=spec, path=base.path, version=policy_version(spec), lines=base.lines)))
    return out
