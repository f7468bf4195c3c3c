"""POST /api/scans: admins only, targets only under api_scan_roots, policies only by configured name;
no answer tells a caller whether a path outside the roots exists."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from moderator.review.app import create_app
from moderator.review.scan_roots import target_allowed
from tests.workers.conftest import redis_url  # noqa: F401  (a private redis-server)

from .helpers import Seeded, login


def _client(seeded: Seeded, **settings: Any) -> TestClient:
    return TestClient(create_app(seeded.settings.model_copy(update=settings), seeded.store), follow_redirects=False)


def _scan(client: TestClient, csrf: str, **body: Any) -> Any:
    return client.post("/api/scans", json=body, headers={"X-CSRF-Token": csrf})


def test_a_reviewer_cannot_enqueue_even_under_a_root(seeded: Seeded) -> None:
    client = _client(seeded, api_scan_roots=[str(seeded.folder)])
    csrf = login(client, "rita")
    for targets in (["/etc/ssl"], [str(seeded.folder)]):
        r = _scan(client, csrf, targets=targets)
        assert r.status_code == 403 and r.json()["detail"] == "only admins may enqueue scans"


@pytest.mark.parametrize("roots", [[], ["/srv/images-h5"]], ids=["no-roots", "other-root"])
def test_outside_the_roots_existing_and_missing_paths_read_the_same(seeded: Seeded, roots: list[str]) -> None:
    client = _client(seeded, api_scan_roots=roots)
    csrf = login(client, "adam")
    answers = [
        _scan(client, csrf, targets=[target])
        for target in ("/etc/ssl", "/etc/no-such-dir-h5", "/etc/passwd", "s3://bucket/key", "relative/path")
    ]
    assert {r.status_code for r in answers} == {403}
    assert len({r.text for r in answers}) == 1, [r.text for r in answers]  # nothing depends on existence


def test_policies_are_configured_names_never_server_paths(seeded: Seeded) -> None:
    client = _client(seeded, api_scan_roots=[str(seeded.folder)])
    csrf = login(client, "adam")
    as_paths = [_scan(client, csrf, targets=[str(seeded.folder)], policies=[p]) for p in ("/etc/passwd", "/etc/nope")]
    assert {r.status_code for r in as_paths} == {422}
    assert as_paths[0].json() == as_paths[1].json()
    unknown = _scan(client, csrf, targets=[str(seeded.folder)], policies=["passwd"])
    assert unknown.status_code == 422 and "unknown policy passwd" in unknown.json()["detail"][0]["msg"]


def test_an_admin_enqueues_under_a_root(seeded: Seeded, redis_url: str) -> None:  # noqa: F811
    queue = "scans-h5"
    client = _client(seeded, api_scan_roots=[str(seeded.folder)], broker_url=redis_url, queue_name=queue)
    csrf = login(client, "adam")
    r = _scan(client, csrf, targets=[str(seeded.folder / "gore.png")], policies=["nsfw"])
    assert r.status_code == 202, r.text
    job = seeded.store.get_job(r.json()["job_id"])
    assert job is not None and job.total == 1 and job.policies[0].endswith("nsfw.yaml")
    assert redis.Redis.from_url(redis_url).llen(queue) == 1
    # Inside the root, a missing path is the caller's own business: a plain 422.
    missing = _scan(client, csrf, targets=[str(seeded.folder / "missing.png")])
    assert missing.status_code == 422


def test_a_broker_outage_is_a_503(seeded: Seeded) -> None:
    from tests.workers.conftest import free_port

    client = _client(seeded, api_scan_roots=[str(seeded.folder)], broker_url=f"redis://127.0.0.1:{free_port()}/0")
    csrf = login(client, "adam")
    r = _scan(client, csrf, targets=[str(seeded.folder)])
    assert r.status_code == 503 and "try again later" in r.json()["detail"]


@pytest.mark.parametrize(
    ("target", "roots", "expected"),
    [
        ("/data/in/a.png", ["/data/in"], True),
        ("/data/in", ["/data/in/"], True),
        ("/data/inbox/a.png", ["/data/in"], False),
        ("/data/in/../../etc/passwd", ["/data/in"], False),
        ("data/in/a.png", ["/data/in"], False),
        ("file:///data/in/a.png", ["/data/in"], False),
        ("s3://b/in/x.png", ["s3://b/in/"], True),
        ("s3://b/out/x.png", ["s3://b/in/"], False),
        ("s3://bb/in/x.png", ["s3://b"], False),
        ("s3://b/in/x.png", ["/data/in"], False),
        ("/data/in/a.png", ["s3://b"], False),
    ],
)
def test_target_allowed(target: str, roots: list[str], expected: bool) -> None:
    assert target_allowed(target, roots) is expected


def test_a_symlink_out_of_a_root_is_outside_it(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "escape").symlink_to("/etc")
    assert not target_allowed(str(root / "escape" / "passwd"), [str(root)])
    assert target_allowed(str(root / "photo.jpg"), [str(root)])
