"""The one bytes -> model-input path on in-memory bytes: limits, only the stages asked for, reuse, picklability."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from moderator.engine.prepare import (
    DecodeSpec,
    Needs,
    Preparer,
    decode_one,
    decode_workers,
    items_from_bytes,
    items_from_files,
)
from moderator.settings import Settings
from moderator.store import Store
from moderator.types import ItemStatus
from tests.conftest import jpeg_bytes


def no_clip() -> Any:
    raise AssertionError("CLIP must not load for this")


def test_image_scorers_get_frames_without_clip_and_bad_bytes_are_recorded(tiny_settings: Settings) -> None:
    items = items_from_bytes([("good", jpeg_bytes(1)), ("empty", b""), ("junk", b"not an image at all")])
    got = Preparer(tiny_settings, Needs(images=True), clip=no_clip).prepare_all(items)
    good, empty, junk = got
    assert good.ok and good.frames and good.frames[0].size == (96, 64) and good.embedding is None
    assert good.data is None and good.item.meta["format"] == "JPEG"  # bytes dropped once decoded
    assert (empty.status, empty.reason) == (ItemStatus.ERROR, "empty")
    assert junk.status is ItemStatus.ERROR and junk.reason == "not_an_image" and junk.error
    assert good.sha256 and len(good.sha256) == 64


def test_the_byte_limit_applies_to_bytes_in_memory(tiny_settings: Settings) -> None:
    small = tiny_settings.model_copy(update={"max_image_bytes": 100})
    (big,) = Preparer(small, Needs(images=True), clip=no_clip).prepare_all(items_from_bytes([("big", jpeg_bytes(2))]))
    assert (big.status, big.reason) == (ItemStatus.ERROR, "too_large")
    assert "MODERATOR_MAX_IMAGE_BYTES=100" in (big.error or "")


def test_a_missing_file_is_an_error_that_says_so(tiny_settings: Settings, tmp_path: Path) -> None:
    (missing,) = Preparer(tiny_settings, Needs(images=True), clip=no_clip).prepare_all(
        items_from_files([tmp_path / "nope.jpg"])
    )
    assert missing.reason == "read_failed" and missing.error == "cannot read: No such file or directory"


def test_embeddings_are_stored_then_reused_without_the_model(tiny_settings: Settings, store: Store) -> None:
    items = items_from_bytes([("a", jpeg_bytes(3)), ("a-again", jpeg_bytes(3)), ("b", jpeg_bytes(4))])
    first = Preparer(tiny_settings, Needs(embeddings=True), store=store).prepare_all(items)
    assert all(p.ok and p.embedding is not None and p.embedding.dtype == np.float32 for p in first)
    assert np.array_equal(first[0].embedding, first[1].embedding)  # identical bytes: embedded once
    assert store.counts()["embeddings"] == 2
    again = Preparer(tiny_settings, Needs(embeddings=True), store=store, clip=no_clip).prepare_all(items)
    for a, b in zip(first, again, strict=True):
        assert np.array_equal(a.embedding, b.embedding)  # used exactly as stored


def test_not_saved_when_asked(tiny_settings: Settings, store: Store) -> None:
    (p,) = Preparer(tiny_settings, Needs(embeddings=True), store=store, save=False).prepare_all(
        items_from_bytes([("q", jpeg_bytes(5))])
    )
    assert p.embedding is not None and store.counts()["embeddings"] == 0


def test_decoding_one_item_is_picklable_in_and_out() -> None:
    spec = DecodeSpec(max_pixels=10_000_000, max_frames=2, draft_size=256, keep_frames=True)
    args = pickle.loads(pickle.dumps((jpeg_bytes(6), spec)))  # what a process pool sends
    outcome = pickle.loads(pickle.dumps(decode_one(*args)))
    assert outcome.reason is None and outcome.frames and outcome.meta["width"] == 96
    failed = pickle.loads(pickle.dumps(decode_one(b"", spec)))
    assert (failed.reason, failed.frames) == ("empty", None)


@pytest.mark.parametrize(("setting", "expected"), [(3, 3), (0, None)])
def test_one_decode_pool_sizing_rule(setting: int, expected: int | None) -> None:
    import os

    n = decode_workers(Settings(decode_workers=setting))
    assert n == (expected if expected is not None else max(2, os.cpu_count() or 1))
