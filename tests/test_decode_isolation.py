"""The scan end to end with files that crash, spin or exhaust their decoder: each costs only itself.

The pipeline's decode function is wrapped by tests/hostile.py's hostile decoder (the pool runs
whatever function the engine hands it, so the test hands it that one); the memory bomb and
the GIF time bomb are real files meeting the real decoder.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from moderator.decode import decode_frames
from moderator.engine import prepare
from moderator.pipeline import Pipeline
from moderator.settings import Settings
from moderator.store import ExportFilters, Store
from moderator.types import ItemStatus
from tests.conftest import jpeg_bytes
from tests.hostile import CRASH_MARK, SPIN_MARK, float_tiff_bomb, gif_time_bomb, hostile_decoder, marked_png

# file -> (its bytes, what its recorded error says)
HOSTILE = {
    "crash.png": (lambda: marked_png(CRASH_MARK), "decoder crashed on this file (killed by SIGSEGV)"),
    "spin.png": (lambda: marked_png(SPIN_MARK), "MODERATOR_DECODE_TIMEOUT_S"),
    "time-bomb.gif": (gif_time_bomb, "MODERATOR_DECODE_TIMEOUT_S"),
    "memory-bomb.tif": (float_tiff_bomb, "MODERATOR_DECODE_MEMORY_MB"),
}


@pytest.fixture
def limited(tiny_settings: Settings) -> Settings:
    return tiny_settings.model_copy(update={"decode_memory_mb": 128, "decode_timeout_s": 2.0, "decode_workers": 2})


@pytest.mark.slow
def test_hostile_files_are_recorded_and_the_rest_is_scored(
    limited: Settings, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prepare, "decode_frames", hostile_decoder(decode_frames))
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i in range(6):
        (folder / f"good-{i}.jpg").write_bytes(jpeg_bytes(i))
    for name, (build, _) in HOSTILE.items():
        (folder / name).write_bytes(build())

    start = time.monotonic()
    summary = Pipeline(limited, store).scan_targets([str(folder)])
    assert time.monotonic() - start < 120  # the time bomb alone decodes for minutes

    stored = {Path(r.uri).name: r for r in store.iter_export(ExportFilters())}
    assert len(stored) == 6 + len(HOSTILE)
    for i in range(6):
        row = stored[f"good-{i}.jpg"]
        assert row.status == ItemStatus.OK and set(row.policy_versions) == {"nsfw", "tags"}, row.error
    for name, (_, says) in HOSTILE.items():
        row = stored[name]
        assert row.status == ItemStatus.ERROR and says in row.error and "\n" not in row.error, (name, row.error)
        assert row.sha256  # the bytes were read: the error is about the image
    assert summary.scanned == 6
    assert dict(summary.errors_by_reason) == {"decoder_crashed": 1, "decode_timeout": 2, "too_large": 1}

    # a rerun does not decode them again (and so does not die, spin or run out of memory again)
    again = Pipeline(limited, store).scan_targets([str(folder)])
    assert (again.unchanged, again.scanned, again.errors) == (6 + len(HOSTILE), 0, 0)
