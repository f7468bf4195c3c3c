"""Fixtures shared across the suite: test-tiny settings, a SQLite store, image folders."""

from __future__ import annotations

import io
import os
import tempfile

# Text-embedding caches and default data paths go to a throwaway folder, never ~/.cache.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="moderator-test-cache-")
os.environ["XDG_DATA_HOME"] = tempfile.mkdtemp(prefix="moderator-test-data-")
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from moderator.settings import SHIPPED_POLICIES, Settings
from moderator.store import Store

CLIP_POLICIES = [SHIPPED_POLICIES / "nsfw.yaml", SHIPPED_POLICIES / "tags.yaml"]


@pytest.fixture
def tiny_settings(tmp_path: Path) -> Settings:
    """test-tiny with seeded random weights: for flow, storage and error tests, never for scores."""
    return Settings(
        database_url=f"sqlite:///{tmp_path / 'store.db'}",
        model="test-tiny",
        pretrained="none",
        device="cpu",
        batch_size=4,
        policies=CLIP_POLICIES,
    )


@pytest.fixture
def store(tiny_settings: Settings) -> Iterator[Store]:
    s = Store(tiny_settings.database_url)
    yield s
    s.close()


def jpeg_bytes(seed: int, size: tuple[int, int] = (96, 64)) -> bytes:
    rng = random.Random(seed)
    img = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))  # type: ignore[arg-type]
    for _ in range(6):
        x, y = rng.randrange(size[0]), rng.randrange(size[1])
        img.paste(tuple(rng.randrange(256) for _ in range(3)), (x, y, min(size[0], x + 20), min(size[1], y + 20)))  # type: ignore[arg-type]
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture
def photo_dir(tmp_path: Path) -> Path:
    """Six distinct small JPEGs, two in a nested folder."""
    root = tmp_path / "photos"
    (root / "nested").mkdir(parents=True)
    for i in range(4):
        (root / f"p{i}.jpg").write_bytes(jpeg_bytes(i))
    for i in range(4, 6):
        (root / "nested" / f"p{i}.jpg").write_bytes(jpeg_bytes(i))
    return root
