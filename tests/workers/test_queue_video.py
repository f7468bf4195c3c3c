"""Videos through the queue: a real worker (its own process and decode pool) samples them as a scan does."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from moderator.queue import enqueue_targets
from moderator.settings import Settings
from moderator.store import ExportFilters, JobState, Store
from moderator.types import ItemStatus
from tests import videos
from tests.workers.conftest import TAGS_POLICY, Worker, free_port, make_settings, settings_env, wait_job

pytestmark = [pytest.mark.redis, pytest.mark.slow]


@pytest.fixture
def env(redis_url: str, tmp_path: Path) -> Iterator[tuple[Settings, Worker, Path]]:
    policy = tmp_path / "policies" / "tags.yaml"
    policy.parent.mkdir()
    shutil.copy(TAGS_POLICY, policy)
    settings = make_settings(tmp_path, redis_url, policies=[policy], worker_metrics_port=free_port(), video_frames=3)
    worker = Worker(settings_env(settings, MODERATOR_VIDEO_FRAMES="3"), tmp_path / "worker.log")
    yield settings, worker, tmp_path
    worker.stop()


def test_a_queued_folder_of_videos_is_sampled_and_hostile_ones_recorded(env: tuple[Settings, Worker, Path]) -> None:
    settings, worker, root = env
    folder = root / "clips"
    folder.mkdir()
    (folder / "a.mp4").write_bytes(videos.video("mp4", n=40))
    (folder / "b.webm").write_bytes(videos.video("webm", n=40))
    (folder / "long.mkv").write_bytes(videos.ten_hours("mkv"))
    (folder / "audio.m4a").write_bytes(videos.audio_only("mp4"))
    store = Store(settings.database_url)
    try:
        job = wait_job(store, enqueue_targets([str(folder)], settings), 180, workers=[worker])
        assert (job.state, job.total, job.done, job.errors) == (JobState.DONE, 4, 2, 2)
        rows = {Path(r.uri).name: r for r in store.iter_export(ExportFilters(uri_prefix=str(folder)))}
    finally:
        store.close()
    for name in ("a.mp4", "b.webm"):
        assert rows[name].status == ItemStatus.OK, rows[name].error
        assert rows[name].meta["frame_times"][0] == 0.0 and len(rows[name].meta["frame_times"]) == 4
    assert "MODERATOR_VIDEO_MAX_SECONDS" in (rows["long.mkv"].error or "")
    assert "no video stream" in (rows["audio.m4a"].error or "")
