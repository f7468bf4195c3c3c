from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest

from moderator import plugins


def test_builtins_are_registered_through_entry_points() -> None:
    assert {"files", "archives", "s3"} <= set(plugins.names("moderator.sources"))
    assert {"clip", "opennsfw", "hashlist", "linear_probe"} <= set(plugins.names("moderator.scorers"))


def test_a_plugin_that_fails_to_import_is_reported_and_spares_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    bad = EntryPoint(name="broken", value="moderator_no_such_module:scorer", group="moderator.scorers")
    real = plugins.entry_points

    def with_bad(group: str) -> list[EntryPoint]:
        return [*real(group=group), bad] if group == "moderator.scorers" else list(real(group=group))

    monkeypatch.setattr(plugins, "entry_points", with_bad)
    monkeypatch.setattr(plugins, "_registry", {})
    monkeypatch.setattr(plugins, "_broken", {})
    assert "clip" in plugins.names("moderator.scorers")
    assert "moderator_no_such_module" in plugins.broken("moderator.scorers")["broken"]
    with pytest.raises(KeyError, match="could not be loaded"):
        plugins.get("moderator.scorers", "broken")


def test_add_registers_a_plugin_at_run_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plugins, "_registry", {})
    marker = object()
    plugins.add("moderator.scorers", "mine", marker)
    assert plugins.get("moderator.scorers", "mine") is marker
    with pytest.raises(ValueError):
        plugins.add("moderator.nope", "x", marker)
