"""Plugin registries fed by entry points; built-ins are registered the same way.

Groups: ``moderator.sources`` and ``moderator.scorers``. ``get_*`` returns the
registered object; ``add_*`` registers one at run time (tests, notebooks).
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

GROUPS = ("moderator.sources", "moderator.scorers")
_registry: dict[str, dict[str, Any]] = {}
# A plugin whose import fails (a missing optional dependency) is set aside with its error,
# so one broken plugin never takes the others down; asking for it by name says why.
_broken: dict[str, dict[str, str]] = {}


def _load(group: str) -> dict[str, Any]:
    if group not in _registry:
        found: dict[str, Any] = {}
        broken: dict[str, str] = {}
        for ep in entry_points(group=group):
            try:
                found[ep.name] = ep.load()
            except Exception as exc:
                broken[ep.name] = f"{type(exc).__name__}: {exc}"
        _registry[group], _broken[group] = found, broken
    return _registry[group]


def broken(group: str) -> dict[str, str]:
    """Plugins of the group that could not be imported, with the error."""
    _load(group)
    return dict(_broken.get(group, {}))


def names(group: str) -> list[str]:
    return sorted(_load(group))


def get(group: str, name: str) -> Any:
    plugins = _load(group)
    if name in _broken.get(group, {}):
        raise KeyError(f"{group} plugin {name!r} could not be loaded: {_broken[group][name]}")
    if name not in plugins:
        known = ", ".join(sorted(plugins)) or "none"
        raise KeyError(f"no {group} plugin named {name!r} (installed: {known})")
    return plugins[name]


def add(group: str, name: str, plugin: Any) -> None:
    if group not in GROUPS:
        raise ValueError(f"unknown plugin group {group!r}; one of {GROUPS}")
    _load(group)[name] = plugin


def all_plugins(group: str) -> dict[str, Any]:
    return dict(_load(group))
