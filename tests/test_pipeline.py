"""The whole flow in-process with test-tiny: storage, skipping, errors, reuse of embeddings.

Random weights: these tests check flow and bookkeeping, never what a score says.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from moderator.pipeline import Pipeline
from moderator.settings import Settings
from moderator.store import ExportFilters, Store
from moderator.types import Action, ItemStatus
from tests.hostile import CATALOGUE, OK


def rows(store: Store) -> dict[str, object]:
    return {Path(r.uri).name: r for r in store.iter_export(ExportFilters())}


def test_scan_folder_stores_every_item_with_results(tiny_settings: Settings, store: Store, photo_dir: Path) -> None:
    summary = Pipeline(tiny_settings, store).scan_targets([str(photo_dir)])
    assert (summary.scanned, summary.errors, summary.unchanged) == (6, 0, 0)
    assert sum(summary.decisions.values()) == 6
    stored = rows(store)
    assert sorted(stored) == [f"p{i}.jpg" for i in range(6)]
    for row in stored.values():
        assert row.status is ItemStatus.OK or row.status == "ok"
        assert set(row.policy_versions) == {"nsfw", "tags"}
        assert set(row.scores["tags"]) and all(0.0 <= v <= 1.0 for v in row.scores["tags"].values())
        assert row.model_ids["nsfw"] == "test-tiny/none"


def test_rescan_is_idempotent_and_skips_unchanged(tiny_settings: Settings, store: Store, photo_dir: Path) -> None:
    pipeline = Pipeline(tiny_settings, store)
    pipeline.scan_targets([str(photo_dir)])
    before = store.counts()
    again = pipeline.scan_targets([str(photo_dir)])
    assert (again.scanned, again.unchanged) == (0, 6)
    assert store.counts() == before
    forced = pipeline.scan(
        [*__import__("moderator.sources", fromlist=["x"]).iter_targets([str(photo_dir)], tiny_settings)], force=True
    )
    assert forced.scanned == 6
    assert store.counts() == before  # forced rescans replace, never add


def test_changed_file_is_rescanned(tiny_settings: Settings, store: Store, photo_dir: Path) -> None:
    from tests.conftest import jpeg_bytes

    pipeline = Pipeline(tiny_settings, store)
    pipeline.scan_targets([str(photo_dir)])
    target = photo_dir / "p0.jpg"
    old_sha = rows(store)["p0.jpg"].sha256
    target.write_bytes(jpeg_bytes(99))
    os.utime(target, ns=(1, 1))  # a different mtime, as any rewrite gives
    again = pipeline.scan_targets([str(photo_dir)])
    assert (again.scanned, again.unchanged) == (1, 5)
    assert rows(store)["p0.jpg"].sha256 != old_sha


def test_touched_but_identical_file_is_not_rescored(tiny_settings: Settings, store: Store, photo_dir: Path) -> None:
    pipeline = Pipeline(tiny_settings, store)
    pipeline.scan_targets([str(photo_dir)])
    os.utime(photo_dir / "p1.jpg", ns=(5, 5))
    again = pipeline.scan_targets([str(photo_dir)])
    assert (again.scanned, again.unchanged) == (0, 6)  # read and hashed, but the same bytes


def test_same_bytes_elsewhere_reuse_the_stored_embedding(
    tiny_settings: Settings, store: Store, photo_dir: Path
) -> None:
    Pipeline(tiny_settings, store).scan_targets([str(photo_dir)])
    copies = photo_dir.parent / "copies"
    copies.mkdir()
    for i in range(3):
        (copies / f"c{i}.jpg").write_bytes((photo_dir / f"p{i}.jpg").read_bytes())
    fresh = Pipeline(tiny_settings, store)  # a new timer: only this scan's stages
    summary = fresh.scan_targets([str(copies)])
    assert summary.scanned == 3
    assert "embed" not in summary.stage_seconds and "decode" not in summary.stage_seconds
    stored = rows(store)
    for i in range(3):
        assert stored[f"c{i}.jpg"].scores == stored[f"p{i}.jpg"].scores


def test_duplicates_within_one_batch_are_embedded_once(tiny_settings: Settings, store: Store, tmp_path: Path) -> None:
    from tests.conftest import jpeg_bytes

    folder = tmp_path / "dups"
    folder.mkdir()
    for i in range(4):
        (folder / f"d{i}.jpg").write_bytes(jpeg_bytes(7))
    summary = Pipeline(tiny_settings, store).scan_targets([str(folder)])
    assert summary.scanned == 4
    assert store.counts()["embeddings"] == 1
    assert len({str(r.scores) for r in rows(store).values()}) == 1


@pytest.mark.slow
def test_hostile_catalogue_is_recorded_and_never_stops_the_scan(
    tiny_settings: Settings, store: Store, tmp_path: Path
) -> None:
    folder = tmp_path / "hostile"
    folder.mkdir()
    for name, case in CATALOGUE.items():
        (folder / name).write_bytes(case.build())
    (folder / "z-good.jpg").write_bytes(__import__("tests.conftest", fromlist=["x"]).jpeg_bytes(1))
    summary = Pipeline(tiny_settings, store).scan_targets([str(folder)])
    stored = rows(store)
    assert len(stored) == len(CATALOGUE) + 1
    for name, case in CATALOGUE.items():
        row = stored[name]
        if case.expected == OK:
            assert row.status == ItemStatus.OK, (name, row.error)
            assert row.decision in set(Action)
        else:
            assert row.status == ItemStatus.ERROR, name
            assert row.error, name
    assert stored["z-good.jpg"].status == ItemStatus.OK
    bad = sum(1 for c in CATALOGUE.values() if c.expected != OK)
    assert summary.errors == bad
    assert summary.errors_by_reason["too_many_pixels"] >= 3
    # and a second pass skips all of them: bad images are not re-read forever
    again = Pipeline(tiny_settings, store).scan_targets([str(folder)])
    assert again.unchanged == len(CATALOGUE) + 1


def test_results_from_another_model_are_not_current(tiny_settings: Settings, store: Store, photo_dir: Path) -> None:
    Pipeline(tiny_settings, store).scan_targets([str(photo_dir)])
    assert Pipeline(tiny_settings, store).scan_targets([str(photo_dir)]).unchanged == 6
    # the same policy versions judged by another model (say, after switching weights) are scored again
    pipeline = Pipeline(tiny_settings, store)
    pipeline.policy_models = {name: "ViT-B-32/laion2b_s34b_b79k" for name in pipeline.policy_models}
    assert pipeline.scan_targets([str(photo_dir)]).scanned == 6


def test_a_raised_pixel_limit_lets_larger_images_through(
    tiny_settings: Settings, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image

    from tests.hostile import huge_header_png

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after the test
    folder = tmp_path / "big"
    folder.mkdir()
    (folder / "100mp-header.png").write_bytes(huge_header_png(10_000))  # 100 MP header, no pixel data
    default = Pipeline(tiny_settings, store).scan_targets([str(folder)])
    assert default.errors_by_reason == {"too_many_pixels": 1}
    raised = tiny_settings.model_copy(update={"max_image_pixels": 200_000_000})
    again = Pipeline(raised, store).scan_targets([str(folder)], force=True)
    assert "too_many_pixels" not in again.errors_by_reason  # past the limit check, it fails as truncated
    assert again.errors == 1
