"""`moderator webhooks` and `moderator deliver --once`, and the human verdict in export and /api/items."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from moderator.cli import app
from moderator.review import decisions, users
from moderator.review.app import create_app
from moderator.settings import Settings
from moderator.store import Store
from moderator.store import deliveries as ledger
from moderator.store.tables import Item, Role, Verdict
from tests.actions.hooks import decide_pets
from tests.actions.receiver import Receiver

runner = CliRunner()
FAST = {
    "MODERATOR_WEBHOOK_BACKOFF_S": "0.05",
    "MODERATOR_WEBHOOK_BACKOFF_MAX_S": "0.1",
    "MODERATOR_WEBHOOK_RETRY_FOR_S": "0.2",
    "MODERATOR_DELIVER_POLL_S": "0.05",
}


def cli(*args: str, allow_private: bool = True) -> tuple[int, str]:
    env = {**FAST, "MODERATOR_WEBHOOK_ALLOW_PRIVATE": "true" if allow_private else "false"}
    result = runner.invoke(app, list(args), env=env)
    return result.exit_code, result.output


def test_add_refuses_loopback_unless_allowed_and_list_remove(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'store.db'}"
    code, out = cli("webhooks", "add", "http://127.0.0.1:9/hook", "--database-url", db, allow_private=False)
    assert code != 0 and "private or loopback" in out and "MODERATOR_WEBHOOK_ALLOW_PRIVATE" in out
    code, out = cli("webhooks", "add", "http://10.1.2.3/hook", "--database-url", db, allow_private=False)
    assert code != 0 and "10.1.2.3" in out
    code, out = cli("webhooks", "add", "file:///etc/passwd", "--database-url", db)
    assert code != 0 and "http" in out
    code, out = cli("webhooks", "add", "http://127.0.0.1:9/hook", "--events", "item.decide", "--database-url", db)
    assert code != 0 and "item.decide" in out

    code, out = cli("webhooks", "add", "http://127.0.0.1:9/hook", "--decisions", "block,review", "--database-url", db)
    assert code == 0, out
    secret = next(line.split("\t")[1] for line in out.splitlines() if line.startswith("secret"))
    assert secret.startswith("whsec_")
    code, out = cli("webhooks", "list", "--database-url", db)
    assert code == 0 and "http://127.0.0.1:9/hook\t*\tblock,review\t*\tenabled" in out
    assert secret not in out  # the secret is printed once, when added
    assert cli("webhooks", "remove", "1", "--database-url", db)[0] == 0
    assert cli("webhooks", "remove", "1", "--database-url", db)[0] != 0
    assert cli("webhooks", "list", "--database-url", db)[1].strip() == ""


def test_failed_deliveries_are_listed_and_replayed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = f"sqlite:///{tmp_path / 'store.db'}"
    receiver = Receiver()
    try:
        code, out = cli("webhooks", "add", receiver.url, "--database-url", db)
        receiver.secret = next(line.split("\t")[1] for line in out.splitlines() if line.startswith("secret"))
        receiver.stop()
        store = Store(db)
        decide_pets(store, tmp_path, monkeypatch)
        # Down for longer than MODERATOR_WEBHOOK_RETRY_FOR_S: every delivery ends failed.
        for _ in range(20):
            cli("deliver", "--once", "--database-url", db)
            if len(ledger.list_deliveries(store, state=ledger.DeliveryState.FAILED)) == 5:
                break
        code, out = cli("webhooks", "deliveries", "--failed", "--database-url", db)
        lines = out.strip().splitlines()
        assert code == 0 and len(lines) == 5 and all("\tfailed\t" in line and "ConnectError" in line for line in lines)
        event_id = lines[0].split("\t")[0]

        receiver.start()
        code, out = cli("webhooks", "replay", event_id, "--database-url", db)
        assert code == 0 and "queued 1" in out
        code, out = cli("deliver", "--once", "--database-url", db)
        assert code == 0 and "delivered 1" in out, out
        assert receiver.ids() == [event_id] and receiver.bad == []
        assert cli("webhooks", "replay", "evt_unknown", "--database-url", db)[0] != 0
        store.close()
    finally:
        receiver.stop()


def test_export_and_api_carry_the_human_verdict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = f"sqlite:///{tmp_path / 'store.db'}"
    store = Store(db)
    decide_pets(store, tmp_path, monkeypatch)
    with Session(store.engine) as s:
        users.add_user(s, "rita", Role.REVIEWER, "rita-reviews-1")
        dog = s.query(Item).filter_by(uri="dog1").one()
        decisions.decide(s, dog, decisions.DecisionIn(verdict=Verdict.DISMISS, note="toy"), "rita", "web")
        decisions.decide(s, dog, decisions.DecisionIn(verdict=Verdict.RELABEL, labels=["pets/cat"]), "rita", "web")
        s.commit()

    code, out = cli("export", "--format", "jsonl", "--database-url", db)
    rows = {r["uri"]: r for r in map(json.loads, out.strip().splitlines()[-3:])}
    dog_row = rows["dog1"]
    assert dog_row["decision"] == "block"  # the pipeline's
    assert (dog_row["review_verdict"], dog_row["review_decision"], dog_row["reviewer"]) == ("relabel", "allow", "rita")
    assert dog_row["current_decision"] == "allow" and dog_row["review_labels"] == ["pets/cat"]
    assert dog_row["reviewed_at"] and dog_row["fired"][0]["evidence"] == "axis1"
    assert rows["cat1"]["reviewer"] is None and rows["cat1"]["current_decision"] == "tag"

    path = tmp_path / "out.parquet"
    assert cli("export", "--format", "parquet", "--out", str(path), "--database-url", db)[0] == 0
    table = {r["uri"]: r for r in pq.read_table(path).to_pylist()}
    assert (table["dog1"]["reviewer"], table["dog1"]["review_decision"]) == ("rita", "allow")
    assert json.loads(table["dog1"]["fired"])[0]["name"] == "dog"

    code, out = cli("export", "--format", "csv", "--database-url", db)
    header = next(line for line in out.splitlines() if line.startswith("uri,"))
    assert "review_verdict" in header and "reviewer" in header and ",relabel," in out

    client = TestClient(create_app(Settings(database_url=db), store))
    got = client.get("/api/items", params={"uri": "dog1"}, auth=("rita", "rita-reviews-1"))
    assert got.status_code == 200, got.text
    item = got.json()[0]
    assert item["decision"] == "block" and item["current_decision"] == "allow"
    assert (item["review"]["reviewer"], item["review"]["verdict"], item["review"]["labels"]) == (
        "rita",
        "relabel",
        ["pets/cat"],
    )
    assert item["results"][0]["fired"][0]["evidence"] == "axis1"
    store.close()


def test_the_review_server_delivers_events_unless_told_not_to(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.actions.hooks import hook_settings
    from tests.actions.receiver import wait_until

    db = f"sqlite:///{tmp_path / 'store.db'}"
    store = Store(db)
    receiver = Receiver()
    try:
        receiver.secret = ledger.add_endpoint(store, receiver.url, events=["review.decided"]).secret
        decide_pets(store, tmp_path, monkeypatch)
        with Session(store.engine) as s:
            users.add_user(s, "rita", Role.REVIEWER, "rita-reviews-1")
            s.commit()
            dog_id = s.query(Item).filter_by(uri="dog1").one().id
        settings = hook_settings(db, moderate_api=False)  # no model loading: not what this is about
        with TestClient(create_app(settings, store, deliver=False)) as client:  # --no-deliver
            body = {"verdict": "confirm", "note": "yes"}
            got = client.post(f"/api/items/{dog_id}/decisions", json=body, auth=("rita", "rita-reviews-1"))
            assert got.status_code == 201, got.text
        assert receiver.ids() == []
        with TestClient(create_app(settings, store, deliver=True)):
            wait_until(lambda: len(receiver.ids()) == 1, timeout=20, what="the review event")
        event = receiver.accepted[0]["data"]
        assert event["type"] == "review.decided" and event["review"]["action"] == "confirm" and receiver.bad == []
    finally:
        receiver.stop()
        store.close()
