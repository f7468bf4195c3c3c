"""POST /hooks/s3: S3 event notifications pushed over HTTP (MinIO's webhook target, or any sender).

Protected by a shared secret: ``Authorization: Bearer <MODERATOR_WEBHOOK_SECRET>``
(MinIO sends exactly that for ``auth_token=<secret>``). With no secret configured
every request is refused: an open endpoint would let anyone enqueue work.

Hostile bodies cost little: the body is counted while it streams in (413 as soon as it
passes 1 MiB), JSON nested too deep is refused before parsing (400), events outside the
operator's allow-list (`s3_event_allow`) are refused and counted. Events are acted on per
bucket: a bucket the store cannot list (none such, access denied) is an error in the
answer and in its failed job, while the other buckets' events go on. A fault that a retry
can mend (broker or database down) answers 503, so the sender delivers again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from moderator.errors import SourceError, SourceUnavailable
from moderator.review.credentials import bearer_matches
from moderator.review.params import ErrorOut
from moderator.s3events.guard import allowed
from moderator.s3events.handler import EventHandler, QueueUnavailable, queue_submit, store_for
from moderator.s3events.parse import MalformedEvent, S3Event, parse_notification
from moderator.settings import Settings

log = logging.getLogger(__name__)
router = APIRouter(tags=["hooks"])
MAX_BODY_BYTES = 1024 * 1024  # S3 notifications are a few KB
NOTIFICATION = "An S3 event notification: AWS Records, an SNS envelope, MinIO's form, or s3:TestEvent."


class HookOut(BaseModel):
    submitted: int = Field(description="Created objects enqueued for scanning.")
    deleted: int = Field(description="Removed objects marked deleted.")
    dropped: int = Field(description="Duplicate or out-of-order events.")
    job_id: str | None = Field(description="The job of the enqueued objects (the first, when several buckets).")
    refused: int = Field(0, description="Events outside s3_event_allow (present when not 0).")
    errors: list[str] = Field(default_factory=list, description="Buckets whose events failed (present when any).")


def webhook_settings() -> Settings:
    """Overridable (app.dependency_overrides) by an app that holds its own Settings."""
    return Settings()


_handlers: dict[tuple[str, str], EventHandler] = {}
_lock = threading.Lock()


def event_handler(settings: Settings = Depends(webhook_settings)) -> EventHandler:
    """One handler (store, queue) per database and broker, built on first use."""
    key = (settings.database_url, settings.broker_url)
    with _lock:
        if key not in _handlers:
            try:
                _handlers[key] = EventHandler(store_for(settings), queue_submit(settings))
            except QueueUnavailable as exc:
                raise HTTPException(503, str(exc)) from None
        return _handlers[key]


def require_secret(request: Request, settings: Settings = Depends(webhook_settings)) -> None:
    secret = settings.webhook_secret
    if secret is None or not secret.get_secret_value():
        raise HTTPException(503, "the S3 webhook is disabled: set MODERATOR_WEBHOOK_SECRET")
    if not bearer_matches(request, secret):
        raise HTTPException(401, "missing or wrong webhook secret", headers={"WWW-Authenticate": "Bearer"})


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The body, counted as it streams in: 413 as soon as it passes `limit` (never read whole first)."""
    too_large = HTTPException(413, f"event body over {limit} bytes")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def by_bucket(events: list[S3Event]) -> Iterator[tuple[str, list[S3Event]]]:
    groups: dict[str, list[S3Event]] = {}
    for event in events:
        groups.setdefault(event.bucket, []).append(event)
    yield from groups.items()


def refused_by_source(exc: BaseException) -> bool:
    """True when the objects' source refused them for good (no such bucket, access denied) or no source takes
    them; False for faults a later delivery may not meet (endpoint down, throttling, broker or database down)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, SourceUnavailable):
            return False
        if isinstance(seen, SourceError | ValueError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _one_line(exc: BaseException, bucket: str) -> str:
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text if f"s3://{bucket}" in text else f"s3://{bucket}: {text}"


def act(handler: EventHandler, events: list[S3Event]) -> HookOut:
    """Each bucket's events on their own: one bucket's refusal is recorded, the others go on."""
    out = HookOut(submitted=0, deleted=0, dropped=0, job_id=None)
    for bucket, group in by_bucket(events):
        try:
            outcome = handler.handle(group)
        except Exception as exc:
            if not refused_by_source(exc):
                raise
            message = _one_line(exc, bucket)
            log.warning("S3 events of %d objects not acted on: %s", len(group), message)
            out.errors.append(message)
            continue
        out.submitted += len(outcome.submitted)
        out.deleted += len(outcome.deleted)
        out.dropped += outcome.dropped
        out.job_id = out.job_id or outcome.job_id
    return out


# require_secret runs first (path dependencies precede the endpoint's): an unauthenticated
# caller never gets the body read nor the store opened.
@router.post(
    "/hooks/s3",
    dependencies=[Depends(require_secret)],
    response_model=HookOut,
    responses={code: {"model": ErrorOut} for code in (400, 401, 413, 503)},
    # The body is read raw (streamed against the limit), so its shape is declared here.
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"type": "object", "description": NOTIFICATION}}},
        }
    },
)
async def s3_hook(
    request: Request, handler: EventHandler = Depends(event_handler), settings: Settings = Depends(webhook_settings)
) -> Any:
    """Act on one S3 event notification (MinIO webhook, or an AWS-shaped body)."""
    body = await read_body(request)
    try:
        events = parse_notification(body)
    except MalformedEvent as exc:
        raise HTTPException(400, f"not an S3 event notification: {exc}") from None
    chosen = [e for e in events if allowed(e, settings)]
    if len(chosen) < len(events):
        log.warning("refused %d S3 events outside s3_event_allow", len(events) - len(chosen))
    try:
        out = await run_in_threadpool(act, handler, chosen)
    except Exception as exc:
        log.exception("acting on %d S3 events failed; the sender should deliver them again", len(chosen))
        message = f"could not act on the events now ({type(exc).__name__}); deliver them again later"
        raise HTTPException(503, message) from None
    out.refused = len(events) - len(chosen)
    # refused and errors only when they say something: senders and tests read the four counts.
    empty = {name for name in ("refused", "errors") if not getattr(out, name)}
    return JSONResponse(out.model_dump(exclude=empty))
