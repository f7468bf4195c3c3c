from __future__ import annotations

import os
from pathlib import Path

import pytest

from moderator.settings import SHIPPED_POLICIES, Settings


def test_policies_from_the_environment_take_a_path_a_path_list_or_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODERATOR_POLICIES", "/p/nsfw.yaml")
    assert Settings().policies == [Path("/p/nsfw.yaml")]
    monkeypatch.setenv("MODERATOR_POLICIES", f"/p/a.yaml{os.pathsep}/p/b.yaml")
    assert Settings().policies == [Path("/p/a.yaml"), Path("/p/b.yaml")]
    monkeypatch.setenv("MODERATOR_POLICIES", '["/p/c.yaml"]')
    assert Settings().policies == [Path("/p/c.yaml")]
    monkeypatch.delenv("MODERATOR_POLICIES")
    assert Settings().policies == [SHIPPED_POLICIES]


def test_unknown_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="extra"):
        Settings.model_validate({"batchsize": 3})


def test_bad_values_are_refused_with_the_field_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODERATOR_BATCH_SIZE", "0")
    with pytest.raises(ValueError, match="batch_size"):
        Settings()


def test_the_default_policies_are_package_data_not_the_checkout() -> None:
    from importlib.resources import files

    from moderator.policy.load import load_policies

    package = Path(str(files("moderator"))).resolve()
    assert Settings().policies == [SHIPPED_POLICIES]
    assert SHIPPED_POLICIES.resolve().is_relative_to(package)
    loaded = load_policies(Settings().policy_paths())
    assert {p.spec.name for p in loaded} >= {"nsfw", "violence", "tags", "opennsfw", "known_bad", "known_bad_similar"}
    assert all(p.path.resolve().is_relative_to(package) for p in loaded)


# issue 16 (D): hash-list settings
def test_hashlist_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODERATOR_HASHLIST_PDQ_MIN_QUALITY", "70")
    monkeypatch.setenv("MODERATOR_HASHLIST_NCMEC_ENVIRONMENT", "NGO")
    monkeypatch.setenv("MODERATOR_HASHLIST_NCMEC_ESP_IDS", "[12, 34]")
    s = Settings()
    assert (s.hashlist_pdq_min_quality, s.hashlist_ncmec_environment, s.hashlist_ncmec_esp_ids) == (70, "NGO", [12, 34])
    monkeypatch.setenv("MODERATOR_HASHLIST_PDQ_MIN_QUALITY", "101")
    with pytest.raises(ValueError, match="hashlist_pdq_min_quality"):
        Settings()
