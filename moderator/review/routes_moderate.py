"""POST /api/moderate: one image in, its verdict in the answer (the scan's path, batched: moderate_batch).

    curl -H "Authorization: Bearer $TOKEN" --data-binary @photo.jpg -H 'Content-Type: image/jpeg' \
         'http://127.0.0.1:8000/api/moderate?external_id=upload-42'

The body is the image itself (any type but the two below), a multipart upload (its file part;
`policies` and `external_id` may be form fields), or JSON `{"uri": "s3://bucket/key", ...}`
naming an object a source plugin reads (only under moderate_uri_roots). The item is stored
like a scanned one (uri `upload:<sha256>` or the given uri) and answered in the /api/items
shape plus the decision of the policies that ran, the tags, and whether it came from the store.
The body is counted while it streams in and refused (413) past moderate_max_bytes, before
anything is decoded; an image that cannot be decoded is recorded and answered 422 with the
reason a scan records. Any role may call it, the `client` role included.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncGenerator, Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from moderator.engine.prepare import items_from_bytes
from moderator.review import auth, queries
from moderator.review.auth import Principal, settings_of
from moderator.review.moderate_batch import Arrival, ModerateService, Outcome, Overloaded, Unavailable
from moderator.review.routes_api import ItemOut, PolicyName, item_out
from moderator.review.scan_roots import target_allowed
from moderator.settings import Settings
from moderator.store.tables import Item, ItemSubmission, utcnow
from moderator.types import Action, ItemStatus, SourceItem, most_severe

router = APIRouter(prefix="/api", tags=["moderate"])
ExternalId = Annotated[str, StringConstraints(min_length=1, max_length=255)]
JSON_LIMIT = 64 * 1024  # a uri body is small
MULTIPART_SLACK = 64 * 1024  # part headers and form fields around the file
RETRY_AFTER_S = 1
HASH_INLINE = 1 << 20  # larger bodies are hashed off the event loop


class ModerateUri(BaseModel):
    """The JSON body: an object to read instead of the image bytes."""

    model_config = ConfigDict(extra="forbid")

    uri: Annotated[str, StringConstraints(min_length=1, max_length=queries.MAX_URI)] = Field(
        description="An object a source plugin reads, e.g. s3://bucket/key, under moderate_uri_roots."
    )
    policies: list[PolicyName] | None = Field(default=None, max_length=100, description="Only these policies.")
    external_id: ExternalId | None = Field(default=None, description="Your id of the image, echoed and stored.")


class PolicyNotRun(BaseModel):
    policy: str
    reason: str


class ModerateOut(ItemOut):
    decision: str | None = Field(description="The most severe action of the policies that ran (allow when none fired).")
    tags: list[str] = Field(description="Every tag the policies that ran gave it.")
    cached: bool = Field(description="Answered from the store: its stored results were current, no model ran.")
    policies_not_run: list[PolicyNotRun] = Field(description="Configured policies that cannot run here, and why.")


# -- the service on the app (started by the lifespan) ---------------------------------------


def start_service(app: FastAPI) -> ModerateService:
    service = ModerateService(app.state.settings, app.state.store)
    service.start()
    app.state.moderate = service
    return service


async def stop_service(app: FastAPI) -> None:
    service: ModerateService | None = getattr(app.state, "moderate", None)
    if service is not None:
        await asyncio.to_thread(service.stop)


def _service(request: Request) -> ModerateService:
    service: ModerateService | None = getattr(request.app.state, "moderate", None)
    if service is None:
        raise HTTPException(503, "the moderation service is not running (it starts with the server)")
    return service


def arriving(request: Request) -> Iterator[Arrival | None]:
    """Counted from before the credentials are checked until the request is queued (the window waits for it)."""
    service: ModerateService | None = getattr(request.app.state, "moderate", None)
    arrival = service.arrival() if service is not None else None
    try:
        yield arrival
    finally:
        if arrival is not None:
            arrival.done()


async def moderate_caller(request: Request, principal: auth.SignedIn) -> Principal:
    """Any role; a browser session sends its CSRF token in the header (the body is the image, never a form
    read for it)."""
    await auth.check_csrf(request, principal, read_form=False)
    request.state.principal = principal
    return principal


Caller = Annotated[Principal, Depends(moderate_caller)]


# -- the body -----------------------------------------------------------------------------


async def read_limited(request: Request, limit: int, what: str = "image") -> bytes:
    """The body, counted while it streams in: 413 as soon as it passes `limit` (or says it will)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"the {what} is {declared} bytes, over the limit of {limit}")
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise HTTPException(413, f"the {what} is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _multipart(request: Request, raw: bytes, limit: int) -> tuple[bytes, dict[str, str]]:
    """The one file part and the text fields of a multipart body already read (and bounded)."""
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    async def replay() -> AsyncGenerator[bytes, None]:
        yield raw

    try:
        form = await MultiPartParser(request.headers, replay(), max_files=1, max_fields=8).parse()
    except MultiPartException as e:
        raise HTTPException(422, f"bad multipart body: {e.message}") from None
    try:
        files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        if not files:
            raise HTTPException(422, "the multipart body has no file part")
        data = await files[0].read(limit + 1)
        if len(data) > limit:
            raise HTTPException(413, f"the image is over the limit of {limit} bytes")
        fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
        return data, fields
    finally:
        await form.close()


def _source_item(uri: str, settings: Settings) -> SourceItem:
    """The one object `uri` names, through the source plugins; only under moderate_uri_roots."""
    from moderator import sources

    if not target_allowed(uri, settings.moderate_uri_roots):
        where = "under moderate_uri_roots" if settings.moderate_uri_roots else "at all: moderate_uri_roots is empty"
        raise HTTPException(403, f"the API may not read that uri: not {where}")
    try:
        found = next(iter(sources.iter_targets([uri], settings)), None)
    except ValueError as e:
        raise HTTPException(422, str(e)) from None
    except Exception as e:  # the source is unreachable or refused us: nothing to fix in the request
        raise HTTPException(502, f"could not read {uri}: {type(e).__name__}") from None
    if found is None or found.uri != uri:
        raise HTTPException(404, "no object at that uri (a prefix or folder is not one image)")
    if found.size is not None and found.size > settings.moderate_max_bytes:
        raise HTTPException(413, f"the object is {found.size} bytes, over the limit of {settings.moderate_max_bytes}")
    return found


def _split(value: str | None) -> list[str] | None:
    return [p.strip() for p in value.split(",") if p.strip()] if value else None


def _policy_key(service: ModerateService, names: list[str] | None) -> tuple[str, ...] | None:
    if not names:
        return None
    if not service.wait_ready(timeout=0) or service.error:
        return tuple(sorted(set(names)))  # checked once loaded (the worker answers 503 if it never loads)
    unknown = sorted(set(names) - set(service.configured))
    if unknown:
        configured = ", ".join(sorted(service.configured))
        raise HTTPException(422, f"unknown policy {', '.join(unknown)}; configured: {configured}")
    chosen = tuple(sorted(set(names)))
    return None if set(chosen) == set(service.configured) else chosen


# -- the answer -------------------------------------------------------------------------------


def _record_submission(db: Session, item: Item, user_id: int, external_id: str | None) -> None:
    """Who sent it (a client reads only what it sent) and their id of it; the item keeps the latest id."""
    now = utcnow()
    for _ in range(2):  # two requests of one caller racing on a new row: the loser updates
        row = db.scalars(
            select(ItemSubmission).where(ItemSubmission.item_id == item.id, ItemSubmission.user_id == user_id)
        ).one_or_none()
        if row is None:
            row = ItemSubmission(item_id=item.id, user_id=user_id, external_id=external_id, created_at=now)
            db.add(row)
        elif external_id is not None:
            row.external_id = external_id
        row.updated_at = now
        if external_id is not None:
            item.external_id = external_id
        try:
            db.commit()
            return
        except IntegrityError:
            db.rollback()
    raise RuntimeError("could not record the submission")


def answer(db: Session, outcome: Outcome, principal: Principal, external_id: str | None) -> tuple[int, dict[str, Any]]:
    """(status, body) from what is stored now for the item the worker handled."""
    item = db.scalars(select(Item).where(Item.uri == outcome.uri)).one()
    _record_submission(db, item, principal.user.id, external_id)
    out = item_out(db, item, principal)
    ran = set(outcome.policies)
    results = [r for r in out.results if r["policy"] in ran]
    ok = item.status is ItemStatus.OK
    body = ModerateOut.model_validate(
        {
            **out.model_dump(),
            "results": results,
            "decision": str(most_severe(Action(r["action"]) for r in results)) if ok else None,
            "tags": sorted({t for r in results for t in r["tags"]}),
            "cached": not outcome.scored,
            "policies_not_run": [{"policy": p.policy, "reason": p.reason} for p in outcome.not_run],
        }
    ).model_dump(mode="json")
    if ok:
        return 200, body
    reason = outcome.reason or item.error_reason or str(item.status)
    detail = [{"loc": ["body"], "msg": item.error or reason, "type": reason}]
    return 422, {"detail": detail, "item": body}


def server_timing(seconds: dict[str, float], batch_size: int, total: float) -> str:
    parts = [f"{name};dur={1000 * s:.1f}" for name, s in seconds.items() if name != "batch"]
    parts.append(f'batch;dur={1000 * seconds.get("batch", 0.0):.1f};desc="{batch_size} in batch"')
    parts.append(f"total;dur={1000 * total:.1f}")
    return ", ".join(parts)


async def _item_of(
    request: Request, settings: Settings, names: list[str] | None, external_id: str | None
) -> tuple[SourceItem, list[str] | None, str | None]:
    """The item the body sends (bytes, a multipart file, or a uri), and the policies and external_id
    it names (the body's own fields win over the query's)."""
    limit = settings.moderate_max_bytes
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json":
        try:
            body = ModerateUri.model_validate_json(await read_limited(request, JSON_LIMIT, "JSON body"))
        except ValidationError as e:
            raise HTTPException(422, f"bad JSON body: {e.errors()[0]['msg']}") from None
        names, external_id = body.policies or names, body.external_id or external_id
        item = await run_in_threadpool(_source_item, body.uri, settings)
    else:
        if kind == "multipart/form-data":
            data, fields = await _multipart(request, await read_limited(request, limit + MULTIPART_SLACK), limit)
            names = _split(fields.get("policies")) or names
            external_id = fields.get("external_id") or external_id
            if external_id is not None and len(external_id) > 255:
                raise HTTPException(422, "external_id is at most 255 characters")
        else:
            data = await read_limited(request, limit)
        if not data:
            raise HTTPException(422, "the body is empty: send the image bytes")
        digest = hashlib.sha256(data) if len(data) <= HASH_INLINE else await asyncio.to_thread(hashlib.sha256, data)
        item = items_from_bytes([(f"upload:{digest.hexdigest()}", data)])[0]
    return item, names, external_id


@router.post(
    "/moderate",
    response_model=ModerateOut,
    responses={422: {"description": "Not an image the decoder can read (recorded): detail[0].type is the reason."}},
    openapi_extra={
        "requestBody": {
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "file": {"type": "string", "format": "binary"},
                            "policies": {"type": "string"},
                            "external_id": {"type": "string"},
                        },
                    }
                },
                "application/json": {"schema": ModerateUri.model_json_schema()},
            }
        }
    },
)
async def moderate(
    request: Request,
    arrival: Annotated[Arrival | None, Depends(arriving)],  # before the credentials: it counts them too
    principal: Caller,
    policies: Annotated[
        str | None, Query(max_length=4096, description="Comma-separated policy names: only these run.")
    ] = None,
    external_id: Annotated[ExternalId | None, Query(description="Your id of the image, echoed and stored.")] = None,
) -> JSONResponse:
    """Moderate one image now: its decision, tags and every policy's scores and fired classes, stored like a
    scanned item (the same bytes again are answered from the store)."""
    start = asyncio.get_running_loop().time()
    service = _service(request)
    settings = settings_of(request)
    item, names, external_id = await _item_of(request, settings, _split(policies), external_id)
    key = _policy_key(service, names)
    try:
        outcome = await service.submit(item, key, external_id, arrival)  # ends the arrival (errors: `arriving`)
    except Overloaded as e:
        raise HTTPException(503, f"busy: {e}; try again shortly", headers={"Retry-After": str(RETRY_AFTER_S)}) from None
    except Unavailable as e:
        raise HTTPException(503, str(e)) from None
    except KeyError as e:  # a policy named before the service had loaded
        raise HTTPException(422, f"unknown policy {e.args[0]}") from None
    status, body_out = await run_in_threadpool(_answer_in_session, request, outcome, principal, external_id)
    timing = server_timing(outcome.seconds, outcome.batch_size, asyncio.get_running_loop().time() - start)
    return JSONResponse(body_out, status_code=status, headers={"Server-Timing": timing})


def _answer_in_session(
    request: Request, outcome: Outcome, principal: Principal, external_id: str | None
) -> tuple[int, dict[str, Any]]:
    with Session(request.app.state.engine, expire_on_commit=False) as db:
        return answer(db, outcome, principal, external_id)
