"""Videos and phone photos through the whole scan (folders, archives), with test-tiny and seeded random weights.

Random weights: these check flow, statuses, reasons and where the worst frame is, never what a score says.
The worst frame is found again here from the stored embeddings with the scorer's own functions.
"""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from moderator.engine.prepare import Preparer, items_from_bytes
from moderator.engine.verdict import compile_policies
from moderator.pipeline import Pipeline
from moderator.policy.load import load_policies
from moderator.scorers import ScoringBatch
from moderator.scorers.zero_shot import frame_scores, worst_frames
from moderator.settings import Settings
from moderator.store import ExportFilters, Store
from moderator.store.tables import Item, Result
from moderator.types import ItemStatus
from tests import videos
from tests.conftest import jpeg_bytes

# Every class fires (threshold 0): the evidence of each is stored, and it names the worst frame.
POLICY = """\
name: anyframe
mode: multilabel
negatives: ["something"]
classes:
  bright: {prompts: ["a bright white picture"], threshold: 0.0, action: tag}
  dark: {prompts: ["a dark black picture"], threshold: 0.0, action: tag}
"""
AT = re.compile(r" at ([0-9.]+) s\)")


def colourful(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [np.repeat(np.repeat(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), 8, 0), 8, 1) for _ in range(n)]


def heif(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(colourful(1, 9)[0]).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture
def video_settings(tiny_settings: Settings, tmp_path: Path) -> Settings:
    policy = tmp_path / "anyframe.yaml"
    policy.write_text(POLICY)
    return tiny_settings.model_copy(update={"policies": [policy], "video_frames": 4})


FOLDER = {
    "a.mp4": (lambda: videos.video("mp4", frames=colourful(40, 1)), "ok"),
    "b.webm": (lambda: videos.video("webm", frames=colourful(40, 2)), "ok"),
    "c.mkv": (lambda: videos.video("mkv", frames=colourful(40, 3)), "ok"),
    "d.mov": (lambda: videos.video("mov", frames=colourful(40, 4)), "ok"),
    "e.jpg": (lambda: jpeg_bytes(5), "ok"),
    "f.heic": (lambda: heif("HEIF"), "ok"),
    "g.avif": (lambda: heif("AVIF"), "ok"),
    "long.mp4": (lambda: videos.ten_hours("mp4"), "video_too_long"),
    "lying.mkv": (videos.lying_duration_mkv, "video_too_long"),
    "cut.mp4": (lambda: videos.video("mp4", n=100)[:1200], "truncated"),
    "corrupt.webm": (lambda: videos.corrupt_middle(videos.video("webm", n=100)), "corrupt"),
    "audio.m4a": (lambda: videos.audio_only("mp4"), "no_video_stream"),
    "empty.mp4": (videos.no_streams_mp4, "no_video_stream"),
    "huge.webm": (lambda: videos.vp9_claiming(16_000), "too_many_pixels"),
}


def test_a_folder_of_videos_photos_and_hostile_videos_stores_every_item(
    video_settings: Settings, store: Store, tmp_path: Path
) -> None:
    folder = tmp_path / "uploads"
    folder.mkdir()
    for name, (build, _) in FOLDER.items():
        (folder / name).write_bytes(build())
    summary = Pipeline(video_settings, store).scan_targets([str(folder)])
    stored = {Path(r.uri).name: r for r in store.iter_export(ExportFilters())}
    assert sorted(stored) == sorted(FOLDER)
    for name, (_, expected) in FOLDER.items():
        row = stored[name]
        if expected == "ok":
            assert row.status == ItemStatus.OK, (name, row.error)
            assert set(row.scores["anyframe"]) == {"bright", "dark"}
        else:
            assert row.status == ItemStatus.ERROR, name
            assert row.error and summary.errors_by_reason[expected] >= 1, (name, row.error)
    assert summary.errors == sum(1 for _, e in FOLDER.values() if e != "ok")
    assert stored["f.heic"].meta["format"] == "HEIF" and stored["g.avif"].meta["format"] == "AVIF"

    with store.session() as s:
        evidence = {
            Path(uri).name: (meta, fired)
            for uri, meta, fired in s.execute(select(Item.uri, Item.meta, Result.fired).join(Result))
        }
    for name in ("a.mp4", "b.webm", "c.mkv", "d.mov"):
        meta, fired = evidence[name]
        assert meta["format"] in ("MP4", "WEBM", "MKV", "MOV") and meta["duration"] == pytest.approx(4.0)
        assert len(meta["frame_times"]) == 5 and meta["frame_times"][0] == 0.0  # the first frame + 4
        assert {f["name"] for f in fired} == {"bright", "dark"}
        for f in fired:
            found = AT.search(f["evidence"])
            assert found and float(found.group(1)) in meta["frame_times"], f["evidence"]
    for name in ("e.jpg", "f.heic"):
        assert all(" at " not in f["evidence"] for f in evidence[name][1])


def test_the_evidence_names_the_worst_frames_timestamp(video_settings: Settings) -> None:
    policies = compile_policies(load_policies(video_settings.policy_paths()), video_settings)
    [policy] = policies.policies
    data = videos.video("webm", frames=colourful(60, 7), fps=10)
    [prepared] = Preparer(video_settings, policies.needs).prepare_all(items_from_bytes([("clip.webm", data)]))
    assert prepared.ok, prepared.error
    times = prepared.item.meta["frame_times"]
    assert prepared.embedding is not None and len(times) == len(prepared.embedding) == 5
    scorer = policy.scorer
    batch = ScoringBatch(sha256=["x"], embeddings=[prepared.embedding], frame_times=[times])
    out = scorer.score(batch)
    # the worst frame per class, found again from the embeddings with the scorer's own functions
    per_frame, best = frame_scores(prepared.embedding, scorer.prompts, scorer.logit_scale, scorer.mode)  # type: ignore[attr-defined]
    worst = worst_frames(per_frame, best, np.zeros(1, dtype=np.int64)).frame[0]
    for c, text in enumerate(out.evidence[0]):
        assert text.endswith(f"(frame {worst[c]} at {times[worst[c]]:g} s)"), text


def test_videos_inside_an_archive_are_items_like_photos(video_settings: Settings, store: Store, tmp_path: Path) -> None:
    archive = tmp_path / "uploads.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("clips/a.mp4", videos.video("mp4", frames=colourful(20, 1)))
        z.writestr("clips/long.mkv", videos.ten_hours("mkv"))
        z.writestr("photo.heic", heif("HEIF"))
    Pipeline(video_settings, store).scan_targets([str(archive)])
    stored = {r.uri.rsplit("#", 1)[1]: r for r in store.iter_export(ExportFilters())}
    assert stored["clips/a.mp4"].status == ItemStatus.OK and len(stored["clips/a.mp4"].meta["frame_times"]) == 5
    assert stored["clips/long.mkv"].status == ItemStatus.ERROR and "MODERATOR_VIDEO_MAX_SECONDS" in (
        stored["clips/long.mkv"].error or ""
    )
    assert stored["photo.heic"].status == ItemStatus.OK
