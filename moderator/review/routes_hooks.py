"""POST /hooks/s3: S3 event notifications pushed over HTTP (MinIO's webhook target, or any sender).

Protected by a shared secret: ``Authorization: Bearer <MODERATOR_WEBHOOK_SECRET>``
(MinIO sends exactly that for ``auth_token=<secret>``). With no secret configured
every request is refused: an open endpoint would let anyone enqueue work.
"""

from __future__ import annotations

import hmac
import threading
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from starlette.concurrency import run_in_threadpool

from moderator.settings import Settings
from moderator.s3events.handler import EventHandler, queue_submit, store_for
from moderator.s3events.parse import MalformedEvent, parse_notification

router = APIRouter()
MAX_BODY_BYTES = 1024 * 1024  # S3 notifications are a few KB


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
            _handlers[key] = EventHandler(store_for(settings), queue_submit(settings))
        return _handlers[key]


def require_secret(request: Request, settings: Settings = Depends(webhook_settings)) -> None:
    secret = settings.webhook_secret
    if secret is None or not secret.get_secret_value():
        raise HTTPException(503, "the S3 webhook is disabled: set MODERATOR_WEBHOOK_SECRET")
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    expected = secret.get_secret_value().encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
        raise HTTPException(401, "missing or wrong webhook secret", headers={"WWW-Authenticate": "Bearer"})


# require_secret runs first (path dependencies precede the endpoint's): an unauthenticated
# caller never gets the body parsed nor the store opened.
@router.post("/hooks/s3", dependencies=[Depends(require_secret)])
async def s3_hook(request: Request, handler: EventHandler = Depends(event_handler)) -> dict[str, Any]:
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise HTTPException(413, f"event body over {MAX_BODY_BYTES} bytes")
    try:
        events = parse_notification(body)
    except MalformedEvent as exc:
        raise HTTPException(400, f"not an S3 event notification: {exc}") from None
    outcome = await run_in_threadpool(handler.handle, events)
    return {
        "submitted": len(outcome.submitted),
        "deleted": len(outcome.deleted),
        "dropped": outcome.dropped,
        "job_id": outcome.job_id,
    }
