"""S3 actions: act on the S3 object of each decision event (tag it, quarantine it, undo it).

A consumer of the decision events (moderator/actions/events.py), beside webhook endpoints:
the deliverer hands it each event and retries it (with backoff) when it raises. For each
event the object is brought to the state the rules (s3_plan.py) give for the item's
current decision, from the state recorded in `s3_action_state`:

- a quarantined object whose decision no longer moves it is moved back first (copied,
  verified, then the quarantined copy deleted), then
- moderator's tags are set (merged with the owner's tags, which are never dropped) or, when
  the decision wants none, the values those keys had before are restored, then
- an object the decision moves is moved (s3_ops.move: copied, verified, then deleted).

A dismissed block is therefore undone whichever event brings it (review.decided or the
item.decided after it): the second finds nothing left to do. An event whose seq is not
newer than the last one acted upon is a no-op (redeliveries, stale events). Each step is
recorded in its own transaction right after S3 did it, so a retry after a crash redoes only
what is left; every step, failure and no-op is appended to `s3_action_log`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select

from moderator.actions.events import Event
from moderator.actions.performers import PerformError
from moderator.actions.s3_ops import (
    Located,
    S3ActionError,
    copy,
    delete,
    get_tags,
    head,
    locate,
    move,
    put_tags,
    still_current,
    verify,
)
from moderator.actions.s3_plan import (
    S3_MAX_TAGS,
    Plan,
    S3ActionsConfig,
    S3ActionsConfigError,
    load_config,
    merged_tags,
    plan,
    quarantine_key,
)
from moderator.settings import Settings
from moderator.sources.s3 import client, parse_uri
from moderator.store import Store
from moderator.store.tables import Item, S3ActionLog, S3ActionState, utcnow

KIND = "s3"
TARGET = "objects"  # one target: the rules file (deliveries list it as s3:objects)
# Longer than a move of the largest image can take (a copy, a read back to verify it, a delete).
LEASE_S = 600.0
log = logging.getLogger(__name__)


class _Skip(Exception):
    """Nothing can be done to this object (gone, or other content there now): recorded, not retried."""


@dataclass
class Outcome:
    """What one event did (for the deliverer's record and the tests)."""

    outcome: str  # done, no_op, skipped, not_applicable
    detail: str


class S3Actions:
    """The S3 action performer; one per process (its boto3 client is shared, thread-safe)."""

    kind = KIND
    lease_s = LEASE_S

    def __init__(self, settings: Settings, store: Store, config: S3ActionsConfig | None = None) -> None:
        if config is None:
            if settings.s3_actions is None:
                raise ValueError("S3 actions need a rules file: set MODERATOR_S3_ACTIONS")
            config = load_config(settings.s3_actions)
        self.settings = settings
        self.store = store
        self.config = config
        self._mtime: int | None = None
        if settings.s3_actions is not None and settings.s3_actions.exists():
            self._mtime = settings.s3_actions.stat().st_mtime_ns

    @property
    def _s3(self) -> Any:
        return client("s3", self.settings)

    # -- the record -----------------------------------------------------------------------

    def _log(self, event: Event, step: str, outcome: str, detail: str) -> None:
        with self.store.session() as db:
            db.add(
                S3ActionLog(event_id=event.id, seq=event.seq, uri=event.uri, step=step, outcome=outcome, detail=detail)
            )

    def _load(self, uri: str) -> S3ActionState:
        with self.store.session() as db:
            state = db.get(S3ActionState, uri)
            if state is None:
                return S3ActionState(uri=uri, last_seq=0)
            db.expunge(state)
            return state

    def _save(self, state: S3ActionState) -> None:
        state.updated_at = utcnow()
        with self.store.session() as db:
            db.merge(state)

    def _item_meta(self, item_id: int) -> dict[str, Any]:
        with self.store.session() as db:
            meta = db.scalar(select(Item.meta).where(Item.id == item_id))
        return dict(meta or {})

    # -- the Performer protocol (actions/performers.py) ------------------------------------

    def refresh(self) -> None:
        """Re-read the rules file when it changed; a file that no longer loads keeps the rules in force."""
        path = self.settings.s3_actions
        if path is None:
            return
        try:
            mtime = path.stat().st_mtime_ns
        except OSError:
            return
        if mtime != self._mtime:
            try:
                self.config = load_config(path)
            except S3ActionsConfigError as exc:
                log.error("%s: keeping the S3 action rules loaded before", exc)
            self._mtime = mtime

    def targets(self, event: Event) -> list[str]:
        """Every event, s3:// or not: an item that is no S3 object is recorded as not applicable."""
        return [TARGET]

    def perform(self, target: str, event: Event) -> int | None:
        try:
            self.act(event)
        except S3ActionError as exc:
            raise PerformError(str(exc)) from exc
        return None

    # -- one event ------------------------------------------------------------------------

    def act(self, event: Event) -> Outcome:
        """Act on one event; raises S3ActionError (recorded) when a step failed and should be retried."""
        if not event.uri.startswith("s3://"):
            return self._finish(event, None, "not_applicable", "not an s3:// item: nothing to act on")
        state = self._load(event.uri)
        if event.seq <= state.last_seq:
            return self._finish(
                event, None, "no_op", f"seq {event.seq} is not newer than seq {state.last_seq}, already acted upon"
            )
        decision = event.decision.value if event.decision is not None else None
        target = plan(
            self.config,
            decision,
            {p.policy: p.action.value for p in event.policies},
            event.policy_versions,
        )
        step = "none"
        try:
            done: list[str] = []
            untag = "tag" if target.tags else "untag"
            for step, run in (("move_back", self._undo_move), (untag, self._tags), ("move", self._move)):
                line = run(event, state, target)
                if line:
                    self._log(event, step, "done", line)
                    done.append(line)
        except _Skip as skip:
            return self._finish(event, state, "skipped", str(skip), step=step, target=target)
        except S3ActionError as exc:
            self._log(event, step, "failed", str(exc))
            raise
        except Exception as exc:  # a bug or the store: recorded too, and the deliverer retries it
            self._log(event, step, "failed", f"{type(exc).__name__}: {exc}")
            raise
        if done:
            return self._finish(event, state, "done", "; ".join(done), target=target, logged=True)
        why = f"already as {target.rule} wants" if target.rule else f"no rule for {decision}"
        return self._finish(event, state, "no_op", f"nothing to do: {why}", target=target)

    def _finish(
        self,
        event: Event,
        state: S3ActionState | None,
        outcome: str,
        detail: str,
        *,
        step: str = "none",
        target: Plan | None = None,
        logged: bool = False,
    ) -> Outcome:
        untouched = state is not None and state.last_seq == 0 and not state.tags and not state.moved_to
        if untouched and outcome == "no_op":
            state = None  # nothing was ever done to it: no state row for each allowed object
        if state is not None:
            if target is not None:
                state.decision, state.rule = target.decision, target.rule
            state.last_seq, state.last_event_id = event.seq, event.id
            self._save(state)
        if not logged:
            self._log(event, step, outcome, detail)
        return Outcome(outcome, detail)

    # -- the steps (each returns its audit line, or None when there was nothing to do) ------

    def _source(self, event: Event, state: S3ActionState) -> Located:
        bucket, key = parse_uri(event.uri)
        meta = self._item_meta(event.item_id)
        found = locate(
            self._s3,
            bucket,
            key,
            etag=state.etag or meta.get("etag"),
            version_id=state.version_id or meta.get("version_id"),
        )
        if found is None:
            raise _Skip(f"{event.uri} no longer exists or holds other content than was judged: nothing done")
        return found

    def _where(self, event: Event, state: S3ActionState) -> Located:
        """The object as it is now: its quarantined copy, or the source."""
        if state.moved_to is None:
            return self._source(event, state)
        bucket, key = parse_uri(state.moved_to)
        found = head(self._s3, bucket, key, state.moved_version_id)
        if found is None:
            raise S3ActionError(f"{state.moved_to}: the quarantined copy of {event.uri} is gone")
        return Located(bucket, key, state.moved_version_id, str(found["ETag"]).strip('"'), found["ContentLength"], None)

    def _tags(self, event: Event, state: S3ActionState, target: Plan) -> str | None:
        want, have = target.tags, state.tags or {}
        if want == have:
            return None
        owned = self.config.tag_keys
        loc = self._where(event, state)
        current = get_tags(self._s3, loc)
        if state.tags is None:
            state.prior_tags = {k: current[k] for k in owned if k in current}
        new = merged_tags(current, want or (state.prior_tags or {}), owned)
        if len(new) > S3_MAX_TAGS:
            raise S3ActionError(
                f"{loc.describe()}: {len(new)} tags with moderator's, S3 allows {S3_MAX_TAGS}: "
                f"the object has {len(new) - len(want)} of its own; nothing was changed"
            )
        put_tags(self._s3, loc, new)
        kept = len([k for k in current if k not in owned])
        if want:
            state.tags = dict(want)
            line = f"tagged {loc.describe()} {' '.join(f'{k}={v}' for k, v in want.items())} ({kept} own tags kept)"
        else:
            restored = state.prior_tags or {}
            state.tags, state.prior_tags = None, None
            line = f"untagged {loc.describe()} (moderator's keys restored to {restored or 'absent'}; {kept} own kept)"
        if state.moved_to is None:
            state.version_id, state.etag = loc.version_id, loc.etag
        self._save(state)
        return line

    def _move(self, event: Event, state: S3ActionState, target: Plan) -> str | None:
        if target.move_to is None or state.moved_to is not None:
            return None
        if event.sha256 is None:
            raise _Skip(f"{event.uri}: no sha256 of the judged bytes to verify a copy against: not moved")
        src = self._source(event, state)
        bucket, prefix = target.move_to
        base = quarantine_key(prefix, src.bucket, src.key)
        dest, line = move(self._s3, src, bucket, [base, f"{base}.{event.sha256[:16]}"], event.sha256)
        state.version_id, state.etag = src.version_id, src.etag
        state.moved_to, state.moved_version_id, state.moved_at = dest.uri, dest.version_id, utcnow()
        self._save(state)
        return line

    def _undo_move(self, event: Event, state: S3ActionState, target: Plan) -> str | None:
        if state.moved_to is None:
            return None
        bucket, key = parse_uri(event.uri)
        if target.move_to is not None:
            qbucket, prefix = target.move_to
            if state.moved_to.startswith(f"s3://{qbucket}/{quarantine_key(prefix, bucket, key)}"):
                return None  # already where this decision wants it
        if event.sha256 is None:
            raise S3ActionError(f"{event.uri}: no sha256 to verify the copy moved back against")
        s3 = self._s3
        quarantined = self._where(event, state)
        line = self._restore(s3, quarantined, bucket, key, event.sha256, state.moved_at)
        restored = head(s3, bucket, key)
        assert restored is not None  # just copied and verified
        state.version_id = restored.get("VersionId")
        state.etag = str(restored["ETag"]).strip('"')
        state.moved_to, state.moved_version_id, state.moved_at = None, None, None
        self._save(state)
        return line

    def _restore(self, s3: Any, q: Located, bucket: str, key: str, sha256: str, moved_at: datetime | None) -> str:
        """Copy the quarantined object back to bucket/key, verify it, then delete the quarantined copy."""
        uri = f"s3://{bucket}/{key}"
        there = head(s3, bucket, key)
        restored: Located | None = None
        if there is not None:
            current = Located(
                bucket,
                key,
                there.get("VersionId"),
                str(there["ETag"]).strip('"'),
                there["ContentLength"],
                there.get("LastModified"),
            )
            if verify(s3, current, size=q.size, sha256=sha256, etag=None) is None:
                restored = current  # moved back before (interrupted after its copy): the same bytes
            elif not (current.versioned and moved_at and current.last_modified and current.last_modified < moved_at):
                raise S3ActionError(
                    f"{uri} now holds a newer object than the one quarantined; nothing was overwritten and the "
                    f"quarantined copy stays at {q.describe()}"
                )
            # else: an older version became current when the judged one was deleted; restore on top of it.
        if restored is None:
            restored = copy(s3, q, bucket, key)
            problem = verify(s3, restored, size=q.size, sha256=sha256, etag=q.etag)
            if problem is not None:
                delete(s3, restored)  # exactly the copy just made (its version, or a key that was free)
                raise S3ActionError(f"{uri}: the copy moved back did not verify ({problem}); it was removed")
        if not still_current(s3, q):
            raise S3ActionError(f"{q.describe()} changed while being moved back: not deleted")
        delete(s3, q)
        return f"moved {q.describe()} back to {restored.describe()}: sha256 verified, quarantined copy deleted"


def performer(settings: Settings, store: Store) -> S3Actions | None:
    """The S3 performer when a rules file is set (MODERATOR_S3_ACTIONS), else None."""
    if settings.s3_actions is None:
        return None
    return S3Actions(settings, store)


@dataclass(frozen=True)
class LogEntry:
    at: datetime
    event_id: str
    seq: int
    uri: str
    step: str
    outcome: str
    detail: str


def action_log(store: Store, *, outcome: str | None = None, uri: str | None = None, limit: int = 100) -> list[LogEntry]:
    """The audit of S3 actions, newest first (every step tried, its outcome and what it did)."""
    stmt = select(S3ActionLog).order_by(S3ActionLog.id.desc()).limit(limit)
    if outcome is not None:
        stmt = stmt.where(S3ActionLog.outcome == outcome)
    if uri is not None:
        stmt = stmt.where(S3ActionLog.uri == uri)
    with store.session() as db:
        return [LogEntry(r.created_at, r.event_id, r.seq, r.uri, r.step, r.outcome, r.detail) for r in db.scalars(stmt)]


def current_uri(store: Store, uri: str) -> str:
    """Where an item's bytes are now: its quarantined copy when an S3 action moved it, else `uri`
    (for readers such as the review UI's images: a quarantined item must stay reviewable)."""
    with store.session() as db:
        moved = db.scalar(select(S3ActionState.moved_to).where(S3ActionState.uri == uri))
    return moved or uri
