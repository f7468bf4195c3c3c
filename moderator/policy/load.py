"""Safe loading of policy files, with errors that point at the file, line and field.

YAML rules (refused with a located error):
- yaml.SafeLoader only: no python/object tags, ever;
- at most MAX_POLICY_BYTES per file (1 MiB), UTF-8;
- no aliases (``*name``, including ``<<: *name`` merges): they are the one way a
  small file expands into a huge document (alias bombs), and a policy does not
  need them; anchors alone are harmless and ignored;
- at most MAX_NESTING levels of mappings and lists inside each other;
- no duplicate keys (SafeLoader would silently keep the last one, e.g. a class
  defined twice).

A policy's version is a hash of its validated, normalised content (see
policy_version): comments, whitespace, key order, spelled-out defaults and the
description do not change it.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from moderator.policy.schema import FieldError, PolicySpec

MAX_POLICY_BYTES = 1024 * 1024
MAX_NESTING = 32  # mappings and lists inside each other
POLICY_SUFFIXES = (".yaml", ".yml")
Loc = tuple[str | int, ...]


class PolicyError(Exception):
    """An invalid policy file: ``str(e)`` is ``FILE:LINE: FIELD: what is wrong and what is allowed``."""

    def __init__(self, file: Path | str, message: str, *, line: int | None = None, field: str = "") -> None:
        self.file = Path(file)
        self.line = line
        self.field = field
        self.message = message
        where = f"{self.file}:{line}" if line is not None else str(self.file)
        super().__init__(f"{where}: {field}: {message}" if field else f"{where}: {message}")


@dataclass(frozen=True)
class LoadedPolicy:
    spec: PolicySpec
    path: Path
    version: str
    # Line of every field in the file ("classes.explicit.actions" -> 14), for located errors later on.
    lines: Mapping[str, int] = field(default_factory=dict, compare=False)

    @property
    def name(self) -> str:
        return self.spec.name

    def line_of(self, loc: Loc) -> int | None:
        return _line_for(self.lines, loc)


def policy_version(spec: PolicySpec) -> str:
    """16 hex chars of sha256 over the canonical JSON of the validated policy, description left out."""
    content = spec.model_dump(mode="json", exclude={"description"})
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def load_policy(path: Path | str) -> LoadedPolicy:
    """Load and validate one policy file; raise PolicyError (the first problem found)."""
    result = _check_file(Path(path))
    if isinstance(result, LoadedPolicy):
        return result
    first = result[0]
    if len(result) > 1:
        more = f" (and {len(result) - 1} more problem{'s' if len(result) > 2 else ''}: see `moderator policy validate`)"
        raise PolicyError(first.file, first.message + more, line=first.line, field=first.field)
    raise first


def load_policies(paths: Iterable[Path | str]) -> list[LoadedPolicy]:
    """Load policy files and folders (every *.yaml / *.yml in a folder, sorted); names must be unique."""
    loaded = [load_policy(p) for p in expand_paths(paths)]
    _check_unique_names(loaded)
    return loaded


def validate_files(paths: Iterable[Path | str]) -> list[PolicyError]:
    """Every problem in every file (empty when all are valid), for `moderator policy validate`."""
    errors: list[PolicyError] = []
    good: list[LoadedPolicy] = []
    try:
        files = expand_paths(paths)
    except PolicyError as e:
        return [e]
    for path in files:
        result = _check_file(path)
        if isinstance(result, LoadedPolicy):
            good.append(result)
        else:
            errors.extend(result)
    try:
        _check_unique_names(good)
    except PolicyError as e:
        errors.append(e)
    return errors


def expand_paths(paths: Iterable[Path | str]) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.suffix in POLICY_SUFFIXES and p.is_file()))
        elif path.is_file():
            files.append(path)
        else:
            raise PolicyError(path, "no such policy file or folder")
    return files


def _check_unique_names(loaded: list[LoadedPolicy]) -> None:
    seen: dict[str, Path] = {}
    for policy in loaded:
        if policy.name in seen:
            raise PolicyError(
                policy.path,
                f"policy name {policy.name!r} is already used by {seen[policy.name]}; names must be unique",
                line=policy.line_of(("name",)),
                field="name",
            )
        seen[policy.name] = policy.path


def _check_file(path: Path) -> LoadedPolicy | list[PolicyError]:
    try:
        text = _read_text(path)
        data, lines = parse_yaml(text, path)
    except PolicyError as e:
        return [e]
    if not isinstance(data, dict):
        found = "an empty file" if data is None else f"a {type(data).__name__}"
        return [PolicyError(path, f"a policy is a mapping (name:, classes:, ...), not {found}", line=1)]
    try:
        spec = PolicySpec.model_validate(data)
    except ValidationError as e:
        return [_located(path, lines, err) for err in e.errors()]
    return LoadedPolicy(spec=spec, path=path, version=policy_version(spec), lines=lines)


def _read_text(path: Path) -> str:
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_POLICY_BYTES + 1)
    except OSError as e:
        raise PolicyError(path, f"cannot read: {e.strerror or e}") from None
    if len(raw) > MAX_POLICY_BYTES:
        raise PolicyError(path, f"file is larger than {MAX_POLICY_BYTES} bytes; a policy is a small text file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise PolicyError(path, "not UTF-8 text", line=line) from None


class _Refused(yaml.MarkedYAMLError):
    """Valid YAML that policy files do not allow."""


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases while composing, before anything is expanded."""

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _Refused(
                problem=f"aliases (*{event.anchor}) are not allowed in policy files; write the value out",
                problem_mark=event.start_mark,
            )
        node: yaml.Node | None = super().compose_node(parent, index)
        return node


def parse_yaml(text: str, path: Path) -> tuple[Any, dict[str, int]]:
    """Safe-load one YAML document; return it with the line of every field path."""
    try:
        loader = _StrictLoader(text)  # the reader refuses control characters here, before any parsing
    except yaml.YAMLError as e:
        raise PolicyError(path, f"invalid YAML: {_one_line(e)}") from None
    try:
        node = loader.get_single_node()
        lines: dict[str, int] = {}
        if node is not None:
            _walk(node, (), lines, path)
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        raise PolicyError(path, _yaml_message(e), line=mark.line + 1 if mark else None) from None
    except yaml.YAMLError as e:
        raise PolicyError(path, f"invalid YAML: {_one_line(e)}") from None
    except RecursionError:
        raise PolicyError(path, "nesting too deep for a policy file") from None
    finally:
        loader.dispose()
    return data, lines


def _one_line(e: yaml.YAMLError) -> str:
    return " ".join(str(e).split())


def _yaml_message(e: yaml.MarkedYAMLError) -> str:
    problem = e.problem or "invalid YAML"
    if isinstance(e, _Refused):
        return problem
    if "could not determine a constructor" in problem:
        tag = problem.split(" for the tag ")[-1]
        return f"tag {tag} is not allowed: plain YAML values only (strings, numbers, lists, mappings)"
    return f"invalid YAML: {e.context}, {problem}" if e.context else f"invalid YAML: {problem}"


def _walk(node: yaml.Node, loc: Loc, lines: dict[str, int], path: Path) -> None:
    if len(loc) > MAX_NESTING:  # deeper still, validation and hashing would fail on their own recursion limits
        raise PolicyError(
            path, f"nested more than {MAX_NESTING} levels deep; a policy is shallow", line=node.start_mark.line + 1
        )
    lines.setdefault(field_path(loc), node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key, value in node.value:
            name = str(key.value) if isinstance(key, yaml.ScalarNode) else "?"
            line = key.start_mark.line + 1
            if name in seen:
                raise PolicyError(
                    path,
                    f"duplicate key {name!r} (first on line {seen[name]}); each key may appear once",
                    line=line,
                    field=field_path((*loc, name)),
                )
            seen[name] = line
            lines[field_path((*loc, name))] = line
            _walk(value, (*loc, name), lines, path)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, (*loc, i), lines, path)


def field_path(loc: Loc) -> str:
    """('classes', 'cat', 'prompts', 0) -> 'classes.cat.prompts[0]'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _line_for(lines: Mapping[str, int], loc: Loc) -> int | None:
    for n in range(len(loc), -1, -1):
        line = lines.get(field_path(loc[:n]))
        if line is not None:
            return line
    return None


_PYDANTIC_LOC = re.compile(r"^(\[key\]|[a-z][a-z-]*\[.*\])$", re.DOTALL)


def _located(path: Path, lines: Mapping[str, int], err: Any) -> PolicyError:
    loc: Loc = tuple(err["loc"])
    is_key = bool(loc) and loc[-1] == "[key]"
    # Pydantic adds "[key]" for a bad dict key and "function-after[...]" for validators: not fields
    # (a key of the file's own, such as "(", is one).
    loc = tuple(p for p in loc if not (isinstance(p, str) and _PYDANTIC_LOC.match(p)))
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, FieldError):
        loc = (*loc, *cause.loc)
        message = str(cause)
    elif err["type"] == "extra_forbidden":
        message = _unknown_key_message(loc)
    elif is_key:
        message = f"{loc[-1] if loc else '?'!r} is not allowed here: {_strip_prefix(err['msg'])}"
    else:
        message = _strip_prefix(err["msg"])
        if err["type"] == "missing":
            message = "required field is missing"
    return PolicyError(path, message, line=_line_for(lines, loc), field=field_path(loc))


def _strip_prefix(msg: str) -> str:
    return msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")


def _unknown_key_message(loc: Loc) -> str:
    key = str(loc[-1]) if loc else "?"
    allowed = _allowed_keys(loc[:-1])
    message = f"unknown key {key!r}"
    close = difflib.get_close_matches(key, allowed, n=1)
    if close:
        message += f" (did you mean {close[0]!r}?)"
    return message + (f"; allowed keys: {', '.join(allowed)}" if allowed else "")


def _allowed_keys(loc: Loc) -> list[str]:
    """Field names of the model at `loc`, walking PolicySpec's annotations (dicts consume one level)."""
    current: Any = PolicySpec
    for part in loc:
        if isinstance(current, type) and issubclass(current, BaseModel):
            info = current.model_fields.get(str(part))
            if info is None:
                return []
            current = _unwrap(info.annotation)
        elif typing.get_origin(current) is dict:
            current = _unwrap(typing.get_args(current)[1])
        else:
            return []
    if isinstance(current, type) and issubclass(current, BaseModel):
        return sorted(current.model_fields)
    return []


def _unwrap(annotation: Any) -> Any:
    """X | None -> X; Annotated[X, ...] -> X."""
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return _unwrap(args[0])
    return annotation
