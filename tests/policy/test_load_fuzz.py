"""Property tests of the policy loader: whatever a policy file holds (any text, any bytes, any YAML structure,
near-valid policies with one field gone wrong, deep nesting), loading gives a LoadedPolicy or a PolicyError
that names the file and says what is wrong; never another exception, and `validate` agrees with `load`."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from moderator.policy import LoadedPolicy, PolicyError, load_policy, policy_version, validate_files

FUZZ = settings(
    max_examples=150,
    deadline=None,  # a shared 2-core machine: examples are small, but their time is not ours to promise
    database=None,  # nothing written into the checkout
    suppress_health_check=[HealthCheck.too_slow],
)

VALID: dict[str, Any] = {
    "name": "fuzz",
    "mode": "exclusive",
    "templates": ["a photo of {}."],
    "classes": {
        "neutral": {"prompts": ["a landscape"]},
        "cat": {"prompts": ["a cat"], "threshold": 0.5, "action": "tag"},
        "gore": {"prompts": ["gore"], "actions": {"review": 0.3, "block": 0.7}},
    },
    "second_opinion": {"gore": {"needs": "other.thing", "otherwise": "review"}},
}
FIELDS = ["name", "description", "mode", "templates", "classes", "negatives", "scorer", "options", "second_opinion"]
WORDS = ["prompts", "threshold", "action", "actions", "tag", "review", "block", "needs", "otherwise", "multilabel"]

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from([*FIELDS, *WORDS, "{}", "a {} b", "", " ", "0.5", "exclusive"]),
)
KEYS = st.one_of(st.sampled_from([*FIELDS, *WORDS, "neutral", "cat"]), st.text(max_size=10), st.integers(), st.none())
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(KEYS, inner, max_size=4)),
    max_leaves=25,
)
# YAML's own syntax, in pieces: anchors, aliases, merges, tags, flow and block collections, documents.
TOKENS = st.sampled_from(
    [
        *(f"{f}:" for f in FIELDS),
        *(f"{w}:" for w in WORDS),
        " ", "  ", "\n", "\t", "- ", "[", "]", "{", "}", ", ", ": ", "? ", "'", '"', "#", "|", ">", "---", "...",
        "&a ", "*a", "<<: ", "!!python/object:os.system ", "!!binary ", "!tag ", "%YAML 1.1\n", "0.5", "1e999",
        "~", "null", "yes", "0x1F", "\\u0000", "\ufeff", "é", "\x85", "\u2028", "a photo of {}.", "neutral", "cat",
    ]
)  # fmt: skip
YAML_SOUP = st.lists(TOKENS, max_size=40).map("".join)


def check(write: Callable[[Path], None]) -> None:
    """Load what `write` put in a policy file: a LoadedPolicy, or a PolicyError about that file."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "policy.yaml"
        write(path)
        try:
            loaded: LoadedPolicy | None = load_policy(path)
        except PolicyError as e:
            assert e.file == path and e.message.strip() and str(e).startswith(str(path)), str(e)
            assert "\n" not in str(e), str(e)  # one line, as users see it
            loaded = None
        errors = validate_files([path])  # never raises either, and agrees with load_policy
        assert all(isinstance(e, PolicyError) and e.file == path for e in errors)
        assert (loaded is None) == bool(errors)
        if loaded is not None:
            assert loaded.version == policy_version(loaded.spec) and loaded.spec.classes


@FUZZ
@given(text=st.one_of(st.text(max_size=300), YAML_SOUP))
@example(text="\x1f")  # found: a control character raised yaml's ReaderError out of the loader
def test_any_text_loads_or_is_a_located_error(text: str) -> None:
    check(lambda path: path.write_text(text, encoding="utf-8"))


@FUZZ
@given(data=st.binary(max_size=300))
@example(data=b"\x00")
def test_any_bytes_load_or_are_a_located_error(data: bytes) -> None:
    check(lambda path: path.write_bytes(data))


@FUZZ
@given(document=VALUES)
@example(document={"(": None})  # found: a key with "(" was taken for pydantic's own location text (IndexError)
def test_any_yaml_structure_loads_or_is_a_located_error(document: Any) -> None:
    check(lambda path: path.write_text(yaml.safe_dump(document, allow_unicode=True), encoding="utf-8"))


def _mutated(fields: dict[str, Any], drop: list[str]) -> dict[str, Any]:
    policy = {**VALID, **fields}
    return {k: v for k, v in policy.items() if k not in drop}


NEAR_VALID = st.builds(
    _mutated,
    st.dictionaries(st.sampled_from(FIELDS), VALUES, max_size=2),
    st.lists(st.sampled_from(FIELDS), max_size=2),
)


@FUZZ
@given(policy=NEAR_VALID)
def test_near_valid_policies_load_or_name_the_field(policy: dict[str, Any]) -> None:
    check(lambda path: path.write_text(yaml.safe_dump(policy, allow_unicode=True), encoding="utf-8"))


@settings(FUZZ, max_examples=25)
@given(depth=st.one_of(st.integers(1, 80), st.sampled_from([300, 1200, 3000])), flow=st.booleans())
@example(depth=100, flow=True)  # found: parsed, then "Maximum serialization depth exceeded" (ValueError) hashing it
def test_deep_nesting_is_a_located_error_or_loads(depth: int, flow: bool) -> None:
    inner = "[" * depth + "]" * depth if flow else "- " * depth + "x"  # a list in a list ... in a list
    text = f"name: deep\nscorer: other\nclasses:\n  a: {{}}\n  b: {{}}\noptions:\n  deep:\n    {inner}\n"
    check(lambda path: path.write_text(text, encoding="utf-8"))
