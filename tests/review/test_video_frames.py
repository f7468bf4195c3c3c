"""The item page of a video: its sampled frames as a strip (blurred like images), the worst one marked."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from moderator.pipeline import Pipeline
from moderator.review.app import create_app
from moderator.settings import Settings
from tests import videos

from .helpers import Seeded, item_id, login

# Every frame fires `bad` (threshold 0): the item is blocked, its evidence names the worst frame.
POLICY = """\
name: anyframe
mode: multilabel
negatives: ["something"]
classes:
  bad: {prompts: ["a bright white picture"], threshold: 0.0, action: block}
"""


def test_a_blocked_video_shows_its_frames_blurred_with_the_worst_marked(seeded: Seeded, tmp_path: Path) -> None:
    policy = tmp_path / "anyframe.yaml"
    policy.write_text(POLICY)
    settings = Settings.model_validate(
        {
            **seeded.settings.model_dump(exclude_defaults=True),
            **{"model": "test-tiny", "pretrained": "none", "device": "cpu", "policies": [policy], "video_frames": 3},
        }
    )
    rng = np.random.default_rng(3)
    frames = [np.repeat(np.repeat(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), 8, 0), 8, 1) for _ in range(30)]
    clip = seeded.folder / "clip.webm"
    clip.write_bytes(videos.video("webm", frames=frames))
    Pipeline(settings, seeded.store).scan_targets([str(clip)])
    client = TestClient(create_app(settings, seeded.store), follow_redirects=False)
    login(client, "rita")
    ident = item_id(seeded.store, str(clip.resolve()))

    page = client.get(f"/items/{ident}")
    assert page.status_code == 200
    strip = re.findall(
        r'<li class="(worst)?">\s*<img class="frame blurred" src="/items/\d+/frames/(\d)\?size=160"', page.text
    )
    assert [index for _, index in strip] == ["0", "1", "2", "3"]  # the first frame and 3 samples, all blurred
    assert sum(1 for worst, _ in strip if worst) == 1
    assert "style=" not in page.text and "<script>" not in page.text  # the strict CSP holds: no inline code

    for index in range(4):
        r = client.get(f"/items/{ident}/frames/{index}?size=64")
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        img = Image.open(io.BytesIO(r.content))
        assert img.format == "JPEG" and max(img.size) == 64
    assert client.get(f"/items/{ident}/frames/4").status_code == 404  # past the sampled frames
    first = Image.open(io.BytesIO(client.get(f"/items/{ident}/image?size=64").content))
    assert first.format == "JPEG" and first.size == (64, 48)  # a video's image is its first frame
