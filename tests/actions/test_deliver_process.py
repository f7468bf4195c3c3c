"""`moderator deliver` as a process: SIGKILLed mid-delivery, nothing is lost; SIGTERM stops it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from moderator.store import Store
from moderator.store import deliveries as ledger
from moderator.store.tables import DeliveryState
from tests.actions.hooks import decide_pets
from tests.actions.receiver import Receiver, wait_until

MODERATOR = str(Path(sys.executable).parent / "moderator")


def _deliver(url: str, *args: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "MODERATOR_DATABASE_URL": url,
        "MODERATOR_WEBHOOK_ALLOW_PRIVATE": "true",
        "MODERATOR_WEBHOOK_TIMEOUT_S": "1",  # leases of 3 * 1 + 2 = 5 s
        "MODERATOR_WEBHOOK_BACKOFF_S": "0.05",
        "MODERATOR_WEBHOOK_BACKOFF_MAX_S": "0.2",
        "MODERATOR_DELIVER_POLL_S": "0.05",
    }
    return subprocess.Popen([MODERATOR, "deliver", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_a_deliverer_killed_mid_delivery_loses_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = Store(url)
    receiver = Receiver(hold_first_s=3.0)  # the first request hangs: the process dies inside it
    try:
        receiver.secret = ledger.add_endpoint(store, receiver.url).secret
        decide_pets(store, tmp_path, monkeypatch)
        wanted = {e.id for e in ledger.list_events(store)}
        first = _deliver(url)
        try:
            assert receiver.first_arrived.wait(60), first.stderr.read1().decode() if first.stderr else ""
            first.send_signal(signal.SIGKILL)
            assert first.wait(10) == -signal.SIGKILL
        finally:
            if first.poll() is None:
                first.kill()
        leased = [d for d in ledger.list_deliveries(store) if d.state is DeliveryState.PENDING]
        assert leased, "the killed process left work undone"

        second = _deliver(url)
        try:
            wait_until(
                lambda: (
                    {d.state for d in ledger.list_deliveries(store)} == {DeliveryState.DELIVERED}
                    and len(ledger.list_deliveries(store)) == len(wanted)
                ),
                timeout=60,
                what="every delivery after the restart",
            )
            second.send_signal(signal.SIGTERM)
            assert second.wait(20) == 0  # a clean stop
        finally:
            if second.poll() is None:
                second.kill()
        assert receiver.bad == []
        assert set(receiver.ids()) == wanted  # at least once each: nothing lost
        # Only what was in flight when the process died may have come twice (at least once, never lost).
        twice = {i for i in receiver.ids() if receiver.ids().count(i) > 1}
        assert twice <= {d.event_id for d in leased}
    finally:
        receiver.stop()
        store.close()
