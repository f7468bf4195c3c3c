"""Loading policy files: safe YAML, located errors (file, line, field), versions, shipped policies."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from moderator.policy import PolicyError, load_policies, load_policy, policy_version, validate_files
from moderator.policy.load import MAX_POLICY_BYTES
from moderator.settings import SHIPPED_POLICIES

GOOD = """
name: demo
description: a test policy
mode: exclusive
templates: ["a photo of {}.", "an image of {}."]
classes:
  neutral:
    prompts: ["a landscape"]
  cat:
    prompts: ["a cat", "a kitten"]
    threshold: 0.5
    action: tag
  gore:
    prompts: ["gore"]
    actions: {review: 0.3, block: 0.7}
"""

Writer = Callable[..., Path]


def line_of(text: str, needle: str) -> int:
    """1-based line of the first line containing `needle` (text as write_policy writes it)."""
    lines = textwrap.dedent(text).lstrip("\n").splitlines()
    return next(n for n, line in enumerate(lines, start=1) if needle in line)


def only_error(path: Path) -> PolicyError:
    errors = validate_files([path])
    assert len(errors) == 1, [str(e) for e in errors]
    return errors[0]


def test_good_policy_loads(write_policy: Writer) -> None:
    loaded = load_policy(write_policy(GOOD))
    assert loaded.spec.name == "demo"
    assert loaded.spec.class_names() == ["neutral", "cat", "gore"]
    assert loaded.spec.classes["gore"].actions == {"review": 0.3, "block": 0.7}
    assert len(loaded.version) == 16
    assert loaded.line_of(("classes", "cat", "threshold")) == line_of(GOOD, "threshold: 0.5")


# (replace this, with that, the field the error must name, a word of what is allowed)
CASES = [
    (
        "    threshold: 0.5",
        "    treshold: 0.5",
        "classes.cat.treshold",
        "allowed keys: action, actions, prompts, threshold",
    ),
    ("    threshold: 0.5", "    threshold: 1.5", "classes.cat.threshold", "less than or equal to 1"),
    ("    threshold: 0.5", "    threshold: -0.1", "classes.cat.threshold", "greater than or equal to 0"),
    ("    action: tag", "    action: delete", "classes.cat.action", "'tag', 'review' or 'block'"),
    (
        "{review: 0.3, block: 0.7}",
        "{review: 0.3, nuke: 0.7}",
        "classes.gore.actions.nuke",
        "'tag', 'review' or 'block'",
    ),
    ("{review: 0.3, block: 0.7}", "{review: 0.7, block: 0.3}", "classes.gore.actions", "increase with severity"),
    ('prompts: ["a cat", "a kitten"]', "prompts: []", "classes.cat.prompts", "at least 1"),
    ('    prompts: ["gore"]\n', "", "classes.gore.prompts", "clip scorer needs"),
    ('"an image of {}."', '"an image"', "templates[1]", '"{}"'),
    ("mode: exclusive", "mode: exclusiv", "mode", "'exclusive' or 'multilabel'"),
    ("description: a test policy", "descripton: a test policy", "descripton", "did you mean 'description'"),
    ("    action: tag", "    action: tag\n    action: review", "classes.cat.action", "duplicate key"),
]


@pytest.mark.parametrize(("old", "new", "field", "allowed"), CASES)
def test_error_names_file_line_and_field(write_policy: Writer, old: str, new: str, field: str, allowed: str) -> None:
    assert old in GOOD
    text = GOOD.replace(old, new, 1)
    path = write_policy(text)
    err = only_error(path)
    # the line written, or for a class without prompts, the class's own line
    expected_line = line_of(text, new.splitlines()[-1].strip() if new else "  gore:")
    assert (err.file, err.line, err.field) == (path, expected_line, field)
    assert allowed in err.message
    assert str(err).startswith(f"{path}:{expected_line}: {field}: ")
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert (info.value.line, info.value.field) == (expected_line, field)


def test_duplicate_class_names(write_policy: Writer) -> None:
    text = GOOD + "  cat:\n    prompts: [a dog]\n"
    err = only_error(write_policy(text))
    assert err.field == "classes.cat"
    assert err.line == len(text.strip("\n").splitlines()) - 1
    assert f"first on line {line_of(GOOD, '  cat:')}" in err.message


def test_every_problem_is_reported_and_load_raises_the_first(write_policy: Writer) -> None:
    text = GOOD.replace("threshold: 0.5", "threshold: 2").replace("action: tag", "action: nope")
    path = write_policy(text)
    errors = validate_files([path])
    assert [e.field for e in errors] == ["classes.cat.threshold", "classes.cat.action"]
    with pytest.raises(PolicyError, match="and 1 more problem"):
        load_policy(path)


def test_python_tags_never_run(write_policy: Writer, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = write_policy(f'name: !!python/object/apply:os.system ["touch {marker}"]\nclasses: {{}}\n')
    err = only_error(path)
    assert err.line == 1
    assert "not allowed" in err.message
    assert not marker.exists()


def test_aliases_are_refused(write_policy: Writer) -> None:
    bomb = 'name: x\na: &a ["lol", "lol", "lol", "lol"]\nb: &b [*a, *a, *a, *a]\nc: [*b, *b, *b, *b]\nclasses: {}\n'
    err = only_error(write_policy(bomb))
    assert err.line == 3
    assert "aliases" in err.message


def test_size_cap(write_policy: Writer) -> None:
    path = write_policy(GOOD + "#" * MAX_POLICY_BYTES)
    err = only_error(path)
    assert str(MAX_POLICY_BYTES) in err.message


def test_deep_nesting_is_an_error_not_a_crash(write_policy: Writer) -> None:
    err = only_error(write_policy("name: " + "[" * 5000 + "]" * 5000 + "\n"))
    assert err.file.name == "policy.yaml"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "empty file"),
        ("- a\n- b\n", "a list"),
        ("name: [unclosed\n", "invalid YAML"),
    ],
)
def test_not_a_policy(write_policy: Writer, text: str, words: str) -> None:
    err = only_error(write_policy(text))
    assert words in err.message
    assert err.line is not None


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"name: x\ndescription: caf\xe9\n")
    err = only_error(path)
    assert (err.line, "UTF-8" in err.message) == (2, True)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="no such policy file"):
        load_policies([tmp_path / "nope.yaml"])


def test_folder_loads_yaml_files_sorted(tmp_path: Path) -> None:
    for stem in ("b", "a"):
        (tmp_path / f"{stem}.yaml").write_text(GOOD.replace("name: demo", f"name: {stem}"))
    (tmp_path / "c.yml").write_text(GOOD.replace("name: demo", "name: c"))
    (tmp_path / "notes.txt").write_text("not a policy")
    assert [p.name for p in load_policies([tmp_path])] == ["a", "b", "c"]


def test_policy_names_are_unique(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(GOOD.lstrip())
    (tmp_path / "b.yaml").write_text(GOOD.lstrip())
    with pytest.raises(PolicyError, match="already used") as info:
        load_policies([tmp_path])
    assert (info.value.file.name, info.value.field, info.value.line) == ("b.yaml", "name", 1)


SAME_CONTENT = """
# reordered, reformatted, commented, defaults spelled out, description changed
classes:
  gore: {actions: {block: 0.70, review: 0.3}, prompts: [gore]}
  cat:
    action: tag      # a comment
    threshold: 0.5
    prompts:
      - a cat
      - "a kitten"
  neutral: {prompts: ['a landscape']}
templates:
  - "a photo of {}."
  - an image of {}.
scorer: clip
options: {}
name: demo
description: says something else now
"""


def test_version_ignores_form_and_follows_content(write_policy: Writer) -> None:
    version = load_policy(write_policy(GOOD, "a.yaml")).version
    assert load_policy(write_policy(SAME_CONTENT, "b.yaml")).version == version
    for old, new in [
        ("0.5", "0.55"),
        ('"a kitten"', '"a puppy"'),
        ("block: 0.7", "block: 0.8"),
        ("exclusive", "multilabel\nnegatives: [x]"),
    ]:
        changed = load_policy(write_policy(GOOD.replace(old, new), "c.yaml"))
        assert changed.version != version, (old, new)
        assert changed.version == policy_version(changed.spec)


def test_shipped_policies_validate() -> None:
    assert validate_files([SHIPPED_POLICIES]) == []
    loaded = {p.name: p for p in load_policies([SHIPPED_POLICIES])}
    assert {"nsfw", "violence", "tags"} <= set(loaded)
    tags = loaded["tags"].spec
    assert len(tags.classes) >= 30
    assert all(c.action == "tag" and c.prompts for c in tags.classes.values())
    nsfw = loaded["nsfw"].spec
    assert any(c.actions and set(c.actions) >= {"review", "block"} for c in nsfw.classes.values())
