"""The Deliverer: fans new decision events out to the performers and delivers them.

One loop (`run`), any number of replicas on one store:
1. dispatch: new outbox events -> one delivery per (performer kind, target) that wants it;
2. for each target with deliveries due, lease at most `webhook_concurrency` minus what this
   deliverer already has in flight there, and run them on a thread pool. A dead or slow
   target so holds at most that many threads: the others keep going;
3. an attempt's outcome: delivered; or retried after an exponential backoff with jitter;
   or failed when the next attempt would fall after `webhook_retry_for_s` (left for replay).
Leases last longer than a request may (timeouts), so a deliverer killed mid-request loses
nothing: its leases expire and any replica delivers those again (at least once).
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from secrets import token_hex
from typing import TYPE_CHECKING

from moderator.actions.events import event_from_row
from moderator.actions.performers import Performer, PerformError, load_performers
from moderator.store import deliveries as ledger
from moderator.store.tables import DeliveryState, utcnow

if TYPE_CHECKING:
    from moderator.settings import Settings
    from moderator.store import Store

log = logging.getLogger(__name__)


def backoff_s(attempts: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """The wait after `attempts` failed attempts: base * 2^(attempts-1), at most cap, times a
    random factor in [0.5, 1) so failing deliveries do not retry in lockstep."""
    delay = min(cap, base * 2.0 ** max(0, attempts - 1))
    return delay * (0.5 + 0.5 * (rng or random).random())


class Deliverer:
    def __init__(
        self,
        store: Store,
        settings: Settings,
        performers: Sequence[Performer] | None = None,
        *,
        owner: str | None = None,
        threads: int | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.performers = {p.kind: p for p in (load_performers(settings, store) if performers is None else performers)}
        self.owner = owner or f"{socket.gethostname()[:40]}:{os.getpid()}:{token_hex(3)}"
        self.per_target = settings.webhook_concurrency
        self.threads = threads or max(8, min(64, settings.webhook_concurrency * 8))
        # Longer than one request can take (connect + read timeouts and some slack).
        self.lease_s = 3 * settings.webhook_timeout_s + 2
        self._inflight: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self.delivered = 0
        self.attempts = 0

    # -- one round -----------------------------------------------------------------------

    def targets_of(self, rows: Sequence[ledger.OutboxRow]) -> dict[str, list[tuple[str, str]]]:
        out: dict[str, list[tuple[str, str]]] = {}
        for row in rows:
            try:
                event = event_from_row(row.id, row.type, row.item_id, row.seq, row.payload, row.created_at)
            except ValueError:
                log.exception("outbox event %s does not validate: not delivered", row.id)
                continue
            out[row.id] = [(kind, t) for kind, p in self.performers.items() for t in p.targets(event)]
        return out

    def refresh(self) -> None:
        for p in self.performers.values():
            p.refresh()

    def step(self, pool: ThreadPoolExecutor) -> int:
        """Dispatch new events and start due deliveries; returns how much was done."""
        self.refresh()
        done = 0
        while (n := ledger.dispatch(self.store, self.targets_of)) > 0:
            done += n
        for kind, target in ledger.due_targets(self.store):
            performer = self.performers.get(kind)
            if performer is None:
                continue  # a kind this deliverer does not run (another replica may)
            with self._lock:
                free = min(self.per_target - self._inflight[kind, target], self.threads - sum(self._inflight.values()))
            if free <= 0:
                continue
            lease = float(getattr(performer, "lease_s", self.lease_s))
            for claimed in ledger.claim(self.store, self.owner, kind, target, limit=free, lease_s=lease):
                with self._lock:
                    self._inflight[kind, target] += 1
                pool.submit(self._attempt, performer, claimed)
                done += 1
        return done

    def _attempt(self, performer: Performer, c: ledger.Claimed) -> None:
        try:
            event = event_from_row(
                c.event.id, c.event.type, c.event.item_id, c.event.seq, c.event.payload, c.event.created_at
            )
            status = performer.perform(c.target, event)
        except PerformError as e:
            self._failed(c, str(e), e.status, retry=e.retry)
        except Exception as e:  # a performer's bug or an outage: recorded and retried, never silent
            self._failed(c, f"{type(e).__name__}: {e}", None, retry=True)
        else:
            ledger.finish(self.store, c.delivery_id, self.owner, state=DeliveryState.DELIVERED, status=status)
            self.delivered += 1
        finally:
            self.attempts += 1
            with self._lock:
                self._inflight[c.kind, c.target] -= 1
            self._wake.set()

    def _failed(self, c: ledger.Claimed, error: str, status: int | None, *, retry: bool) -> None:
        s = self.settings
        now = utcnow()
        nxt: datetime = now + timedelta(seconds=backoff_s(c.attempts + 1, s.webhook_backoff_s, s.webhook_backoff_max_s))
        give_up = not retry or nxt > c.retry_since + timedelta(seconds=s.webhook_retry_for_s)
        state = DeliveryState.FAILED if give_up else DeliveryState.PENDING
        log.warning("delivery %s of %s to %s:%s: %s (%s)", c.delivery_id, c.event.id, c.kind, c.target, error, state)
        ledger.finish(
            self.store, c.delivery_id, self.owner, state=state, status=status, error=error, next_attempt_at=nxt
        )

    # -- loops ---------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Deliver until `stop` is set; in-flight attempts finish before it returns."""
        with ThreadPoolExecutor(self.threads, thread_name_prefix="deliver") as pool:
            while not stop.is_set():
                try:
                    busy = self.step(pool)
                except Exception:  # the store is down or busy: try again after a pause
                    log.exception("deliverer round failed")
                    busy = 0
                if not busy:
                    self._wake.wait(self.settings.deliver_poll_s)
                    self._wake.clear()

    def run_until_idle(self, timeout_s: float = 60.0) -> None:
        """Deliver until nothing is due or in flight (later retries stay scheduled)."""
        deadline = utcnow() + timedelta(seconds=timeout_s)
        with ThreadPoolExecutor(self.threads, thread_name_prefix="deliver") as pool:
            while utcnow() < deadline:
                busy = self.step(pool)
                with self._lock:
                    inflight = sum(self._inflight.values())
                if not busy and not inflight:
                    return
                self._wake.wait(0.05)
                self._wake.clear()


def start_in_thread(store: Store, settings: Settings) -> tuple[threading.Thread, threading.Event]:
    """A Deliverer on a daemon thread (moderator serve); set the event to stop it."""
    stop = threading.Event()
    deliverer = Deliverer(store, settings)
    thread = threading.Thread(target=deliverer.run, args=(stop,), name="moderator-deliver", daemon=True)
    thread.start()
    return thread, stop
