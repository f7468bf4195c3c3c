"""S3 actions undone on dismissal, failures retried and recorded, the rules file, and the
whole path: store change -> outbox -> the deliverer (and `moderator deliver`) -> S3 (moto server).
"""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import Any

import pytest

from moderator.actions.s3 import S3Actions, current_uri
from moderator.actions.s3_ops import S3ActionError
from moderator.actions.s3_plan import S3ActionsConfigError, load_config
from moderator.settings import Settings
from moderator.sources import read_uri
from moderator.store import ItemRecord, Store
from moderator.types import Action, ItemStatus
from tests.actions import s3_support
from tests.actions.s3_support import body, config, dismiss, events, exists, image, judge, log, result, tags, upload
from tests.sources import conftest as s3_fixtures

# Fixtures (assigned, so that pytest finds them in this module)
moto_endpoint, aws, s3, bucket = s3_fixtures.moto_endpoint, s3_fixtures.aws, s3_fixtures.s3, s3_fixtures.bucket
settings = s3_support.settings
quarantine, writes = s3_support.quarantine, s3_support.writes


# -- undo on dismissal ------------------------------------------------------------------------


def test_a_dismissal_moves_the_object_back_and_restores_its_tags(
    s3: Any, bucket: str, quarantine: str, store: Store, settings: Settings
) -> None:
    data = image(17)
    # The owner's own value of a key moderator writes is put back, not dropped.
    etag = upload(s3, bucket, "u/ok.jpg", data, tagging="team=red&moderation=pending")
    uri = f"s3://{bucket}/u/ok.jpg"
    judge(store, uri, data, etag, Action.BLOCK)
    performer = S3Actions(settings, store, config(quarantine))
    performer.act(events(store, uri)[-1])
    assert not exists(s3, bucket, "u/ok.jpg")

    dismiss(store, uri)
    review, decided = events(store, uri)[1:]
    assert review.type == "review.decided" and review.review is not None and review.review.action == "dismiss"
    assert decided.type == "item.decided" and decided.decision is Action.ALLOW

    assert current_uri(store, uri) == f"s3://{quarantine}/blocked/{bucket}/u/ok.jpg"  # still reviewable there
    assert read_uri(current_uri(store, uri), settings) == data
    assert performer.act(review).outcome == "done"
    assert current_uri(store, uri) == uri
    assert performer.act(decided).outcome == "no_op"  # the undo was done by the review event

    assert body(s3, bucket, "u/ok.jpg") == data
    assert s3.head_object(Bucket=bucket, Key="u/ok.jpg")["Metadata"] == {"owner": "alice"}
    assert tags(s3, bucket, "u/ok.jpg") == {"team": "red", "moderation": "pending"}
    assert not exists(s3, quarantine, "blocked/")
    steps = [(s, o) for s, o, _ in log(store, uri)]
    assert steps == [("tag", "done"), ("move", "done"), ("move_back", "done"), ("untag", "done"), ("none", "no_op")]


def test_versioned_quarantine_the_undo_deletes_exactly_the_quarantined_version(
    s3: Any, bucket: str, quarantine: str, store: Store, settings: Settings
) -> None:
    for name in (bucket, quarantine):
        s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    data = image(28)
    etag = upload(s3, bucket, "vq.jpg", data)
    uri = f"s3://{bucket}/vq.jpg"
    judge(store, uri, data, etag, Action.BLOCK)
    performer = S3Actions(settings, store, config(quarantine))
    performer.act(events(store, uri)[-1])
    key = f"blocked/{bucket}/vq.jpg"
    [kept] = s3.list_object_versions(Bucket=quarantine, Prefix=key)["Versions"]
    assert not s3.list_object_versions(Bucket=bucket, Prefix="vq.jpg").get("Versions")

    dismiss(store, uri)
    for event in events(store, uri)[1:]:
        performer.act(event)

    quarantined = s3.list_object_versions(Bucket=quarantine, Prefix=key)
    assert not quarantined.get("Versions") and not quarantined.get("DeleteMarkers")  # that version, no marker
    [back] = s3.list_object_versions(Bucket=bucket, Prefix="vq.jpg")["Versions"]
    assert back["VersionId"] != kept["VersionId"] and body(s3, bucket, "vq.jpg") == data
    assert tags(s3, bucket, "vq.jpg") == {}


def test_a_dismissal_of_a_tag_only_block_removes_moderators_tags(
    s3: Any, bucket: str, store: Store, settings: Settings
) -> None:
    data = image(18)
    etag = upload(s3, bucket, "t.jpg", data, tagging="team=blue")
    uri = f"s3://{bucket}/t.jpg"
    judge(store, uri, data, etag, Action.BLOCK)
    performer = S3Actions(settings, store, config())
    performer.act(events(store, uri)[-1])
    dismiss(store, uri)
    for event in events(store, uri)[1:]:
        performer.act(event)
    assert tags(s3, bucket, "t.jpg") == {"team": "blue"}


def test_moving_back_never_overwrites_a_newer_object(
    s3: Any, bucket: str, quarantine: str, store: Store, settings: Settings
) -> None:
    data, newer = image(19), image(20)
    etag = upload(s3, bucket, "n.jpg", data)
    uri = f"s3://{bucket}/n.jpg"
    judge(store, uri, data, etag, Action.BLOCK)
    performer = S3Actions(settings, store, config(quarantine))
    performer.act(events(store, uri)[-1])
    upload(s3, bucket, "n.jpg", newer)  # the owner uploaded again meanwhile
    dismiss(store, uri)

    with pytest.raises(S3ActionError, match="newer object"):
        performer.act(events(store, uri)[1])

    assert body(s3, bucket, "n.jpg") == newer
    assert body(s3, quarantine, f"blocked/{bucket}/n.jpg") == data
    assert log(store, uri)[-1][:2] == ("move_back", "failed")


# -- failures are retried and recorded; only s3:// items -------------------------------------


def test_a_failed_action_is_recorded_and_done_when_retried(
    s3: Any, bucket: str, store: Store, settings: Settings
) -> None:
    name = f"late-{uuid.uuid4().hex[:12]}"
    data = image(21)
    etag = upload(s3, bucket, "late.jpg", data)
    uri = f"s3://{bucket}/late.jpg"
    judge(store, uri, data, etag, Action.BLOCK)
    (event,) = events(store, uri)
    performer = S3Actions(settings, store, config(name, tag=False))

    with pytest.raises(S3ActionError):
        performer.act(event)
    s3.create_bucket(Bucket=name)  # the operator fixes it; the deliverer retries the same event
    assert performer.act(event).outcome == "done"

    assert [(s, o) for s, o, _ in log(store, uri)] == [("move", "failed"), ("move", "done")]
    assert body(s3, name, f"blocked/{bucket}/late.jpg") == data


def test_items_that_are_not_s3_objects_are_recorded_as_not_applicable(store: Store, settings: Settings) -> None:
    data = image(22)
    record = ItemRecord(
        "/photos/x.jpg",
        hashlib.sha256(data).hexdigest(),
        len(data),
        None,
        ItemStatus.OK,
        results=[result(Action.BLOCK)],
    )
    store.save_items([record])
    outcome = S3Actions(settings, store, config()).act(events(store, "/photos/x.jpg")[-1])
    assert outcome.outcome == "not_applicable"
    assert log(store, "/photos/x.jpg") == [("none", "not_applicable", "not an s3:// item: nothing to act on")]


def test_an_object_deleted_before_the_action_is_skipped_not_retried(
    s3: Any, bucket: str, quarantine: str, store: Store, settings: Settings
) -> None:
    data = image(23)
    etag = upload(s3, bucket, "gone.jpg", data)
    judge(store, f"s3://{bucket}/gone.jpg", data, etag, Action.BLOCK)
    s3.delete_object(Bucket=bucket, Key="gone.jpg")
    outcome = S3Actions(settings, store, config(quarantine)).act(events(store, f"s3://{bucket}/gone.jpg")[-1])
    assert outcome.outcome == "skipped" and "no longer exists" in outcome.detail


# -- the rules file ---------------------------------------------------------------------------


def test_the_rules_file_is_read_and_per_policy_rules_come_first(tmp_path: Path) -> None:
    from moderator.actions.s3_plan import plan

    path = tmp_path / "s3-actions.yaml"
    path.write_text(
        "rules:\n"
        "  - {decision: block, policies: [known_bad], move_to: 's3://legal-hold/'}\n"
        "  - {decision: block, tag: true, move_to: 's3://quarantine/blocked/'}\n",
        encoding="utf-8",
    )
    cfg = load_config(path)
    hashed = plan(cfg, "block", {"known_bad": "block", "nsfw": "allow"}, {"known_bad": "abc"})
    assert hashed.move_to == ("legal-hold", "") and hashed.tags == {}
    scored = plan(cfg, "block", {"known_bad": "allow", "nsfw": "block"}, {"nsfw": "0123456789abcdef"})
    assert scored.move_to == ("quarantine", "blocked/")
    assert scored.tags == {
        "moderation": "block",
        "moderation-policies": "nsfw",
        "moderation-version": "nsfw:0123456789ab",
    }
    assert plan(cfg, "allow", {}, {}).tags == {} and plan(cfg, "allow", {}, {}).move_to is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rules: [{decision: delete}]", "rules.0.decision"),
        ("rules: [{decision: block, move_to: quarantine}]", "move_to must be s3://"),
        ("rules: [{decision: block, tagg: true}]", "rules.0.tagg"),
        ("rules: [", "not valid YAML"),
    ],
)
def test_a_bad_rules_file_is_refused_in_one_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(S3ActionsConfigError, match=message) as info:
        load_config(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


# -- through the deliverer: store change -> outbox -> `moderator deliver`'s loop ----------------


def test_through_the_deliverer_a_failed_action_is_retried_visible_and_undone_on_dismissal(
    s3: Any, bucket: str, store: Store, url: str, writes: list[str]
) -> None:
    import time

    from typer.testing import CliRunner

    from moderator.actions.deliver import Deliverer
    from moderator.cli import app
    from moderator.store import deliveries as ledger

    settings = Settings(
        database_url=url,
        s3_max_attempts=1,
        webhook_backoff_s=1.0,  # the retry comes 0.5 to 1 s after the failure (jitter)
        webhook_backoff_max_s=1.0,
    )
    late = f"late-{uuid.uuid4().hex[:12]}"
    deliverer = Deliverer(store, settings, [S3Actions(settings, store, config(late))])
    data = image(24)
    etag = upload(s3, bucket, "d.jpg", data, tagging="team=red")
    uri = f"s3://{bucket}/d.jpg"
    judge(store, uri, data, etag, Action.BLOCK)

    deliverer.run_until_idle(30)  # the quarantine bucket does not exist yet: the move fails
    [first] = ledger.list_deliveries(store)
    assert (first.kind, first.target, str(first.state), first.attempts) == ("s3", "objects", "pending", 1)
    assert first.last_error and f"no bucket '{late}'" in first.last_error
    shown = CliRunner().invoke(app, ["webhooks", "deliveries", "--database-url", settings.database_url])
    assert shown.exit_code == 0 and "s3:objects" in shown.output and f"no bucket '{late}'" in shown.output
    assert body(s3, bucket, "d.jpg") == data  # tagged, not moved, nothing deleted

    s3.create_bucket(Bucket=late)
    time.sleep(1.1)  # past the backoff
    deliverer.run_until_idle(30)
    [done] = ledger.list_deliveries(store)
    assert (str(done.state), done.attempts) == ("delivered", 2)
    assert not exists(s3, bucket, "d.jpg") and body(s3, late, f"blocked/{bucket}/d.jpg") == data

    before = list(writes)
    replayed = CliRunner().invoke(app, ["webhooks", "replay", done.event_id, "--database-url", settings.database_url])
    assert replayed.exit_code == 0, replayed.output  # the same event once more
    deliverer.run_until_idle(30)
    assert writes == before and log(store, uri)[-1][1] == "no_op"

    dismiss(store, uri)
    deliverer.run_until_idle(30)
    assert body(s3, bucket, "d.jpg") == data and tags(s3, bucket, "d.jpg") == {"team": "red"}
    assert not exists(s3, late, "blocked/")
    assert [(s, o) for s, o, _ in log(store, uri)] == [
        ("tag", "done"),
        ("move", "failed"),
        ("move", "done"),
        ("none", "no_op"),
        ("move_back", "done"),
        ("untag", "done"),
        ("none", "no_op"),
    ]


def test_the_cli_checks_the_rules_and_lists_the_audit(
    s3: Any, bucket: str, store: Store, settings: Settings, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from moderator.cli import app

    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - {decision: block, tag: true, move_to: 's3://q/blocked/'}\n", encoding="utf-8")
    checked = CliRunner().invoke(app, ["actions", "check", str(rules)])
    assert checked.exit_code == 0 and "rule 1 (block: tag + move to s3://q/blocked/)" in checked.output
    rules.write_text("rules: [{decision: block, move_to: q}]\n", encoding="utf-8")
    refused = CliRunner().invoke(app, ["actions", "check", str(rules)])
    assert refused.exit_code == 2 and "move_to must be s3://" in refused.output

    data = image(25)
    etag = upload(s3, bucket, "c.jpg", data)
    judge(store, f"s3://{bucket}/c.jpg", data, etag, Action.BLOCK)
    performer = S3Actions(settings, store, config("missing-quarantine"))
    with pytest.raises(S3ActionError):
        performer.act(events(store, f"s3://{bucket}/c.jpg")[-1])
    listed = CliRunner().invoke(app, ["actions", "list", "--database-url", settings.database_url])
    failed = CliRunner().invoke(app, ["actions", "list", "--failed", "--database-url", settings.database_url])
    assert listed.exit_code == 0 and failed.exit_code == 0
    assert [line.split("\t")[1:3] for line in listed.output.splitlines()] == [["failed", "move"], ["done", "tag"]]
    [line] = failed.output.splitlines()
    assert f"s3://{bucket}/c.jpg" in line and "no bucket 'missing-quarantine'" in line


def test_moderator_deliver_runs_the_s3_actions_of_the_rules_file(
    s3: Any,
    bucket: str,
    quarantine: str,
    store: Store,
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from typer.testing import CliRunner

    from moderator.cli import app

    rules = tmp_path / "s3-actions.yaml"
    rules.write_text(f"rules:\n  - {{decision: block, tag: true, move_to: 's3://{quarantine}/q/'}}\n", encoding="utf-8")
    monkeypatch.setenv("MODERATOR_S3_ACTIONS", str(rules))
    data, fine = image(26), image(27)
    judge(store, f"s3://{bucket}/bad.jpg", data, upload(s3, bucket, "bad.jpg", data), Action.BLOCK)
    judge(store, f"s3://{bucket}/fine.jpg", fine, upload(s3, bucket, "fine.jpg", fine), Action.ALLOW)

    ran = CliRunner().invoke(app, ["deliver", "--once", "--database-url", settings.database_url])

    assert ran.exit_code == 0, ran.output
    assert "delivered 2 of 2 attempts" in ran.output
    assert not exists(s3, bucket, "bad.jpg") and body(s3, quarantine, f"q/{bucket}/bad.jpg") == data
    assert tags(s3, quarantine, f"q/{bucket}/bad.jpg")["moderation"] == "block"
    assert body(s3, bucket, "fine.jpg") == fine and tags(s3, bucket, "fine.jpg") == {}
    assert log(store, f"s3://{bucket}/fine.jpg") == [("none", "no_op", "nothing to do: no rule for allow")]
