"""The reviewer's pages: the queue, one item, its image, and the decision forms."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Form, HTTPException, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import ValidationError

from moderator.actions.s3 import current_uri
from moderator.review import decisions, queries, svg
from moderator.review.auth import CurrentUser, Db, settings_of
from moderator.review.humane import describe, score_rows
from moderator.review.images import frame_strip, known_unavailable, load_thumbnail, load_video_frame, why_unavailable
from moderator.review.links import safe_next
from moderator.review.params import DbId, ItemId
from moderator.review.templates import render
from moderator.store.tables import Item, Verdict

router = APIRouter(include_in_schema=False)


# The filters are query parameters (documented in the API schema); blank means no filter.
Filters = Annotated[queries.QueueFilters, Query()]


@router.get("/")
def home(principal: CurrentUser) -> RedirectResponse:
    return RedirectResponse("/queue", status_code=303)


@router.get("/queue", response_class=HTMLResponse)
def queue_page(request: Request, principal: CurrentUser, db: Db, filters: Filters) -> HTMLResponse:
    page = queries.queue(db, filters)
    return render(
        request,
        "queue.html",
        principal,
        page=page,
        filters=filters,
        here=str(request.url.path) + (f"?{request.url.query}" if request.url.query else ""),
    )


@router.get("/items/{item_id}", response_class=HTMLResponse)
def item_page(request: Request, item_id: ItemId, principal: CurrentUser, db: Db) -> HTMLResponse:
    item = db.get(Item, item_id)
    if item is None:
        raise HTTPException(404, "no such item")
    results = queries.results_of(db, [item.id]).get(item.id, [])
    past = queries.history(db, item.uri)
    return render(
        request,
        "item.html",
        principal,
        item=item,
        results=results,
        about=describe(item),
        scores={r.policy: score_rows(r) for r in results},
        score_bar=svg.score_bar,
        unavailable=known_unavailable(str(item.status), item.error),
        frames=frame_strip(item.meta, results),
        history=past,
        current=decisions.current_decision(item, past[0] if past else None),
        back=safe_next(request.query_params.get("back", "/queue")),
    )


def _side(request: Request) -> int | None:
    size = request.query_params.get("size")
    return int(size) if size and size.isdigit() and 32 <= int(size) <= 2048 else None


async def _bytes_uri(request: Request, uri: str) -> str:
    """Where the item's bytes are now: an S3 action may have moved them to quarantine."""
    return await run_in_threadpool(current_uri, request.app.state.store, uri)


@router.get("/items/{item_id}/image")
async def item_image(request: Request, item_id: ItemId, principal: CurrentUser, db: Db) -> Response:
    # unreadable source or undecodable image: the page shows a placeholder
    return await _jpeg_of(request, db, item_id, "image", load_thumbnail)


@router.get("/items/{item_id}/frames/{index}")
async def item_frame(
    request: Request, item_id: ItemId, index: Annotated[int, Path(ge=0, le=64)], principal: CurrentUser, db: Db
) -> Response:
    """Sampled frame `index` of a video item, re-encoded as a JPEG like the item's image."""
    return await _jpeg_of(
        request, db, item_id, "frame", lambda uri, settings, side: load_video_frame(uri, settings, index, side)
    )


async def _jpeg_of(
    request: Request, db: Any, item_id: int, what: str, make: Callable[[str, Any, int | None], bytes]
) -> Response:
    """The item's image or frame as a JPEG rendered by the server; 404 when it cannot be had."""
    item = await run_in_threadpool(db.get, Item, item_id)
    if item is None:
        raise HTTPException(404, "no such item")
    side = _side(request)
    try:
        uri = await _bytes_uri(request, item.uri)
        body = await run_in_threadpool(make, uri, settings_of(request), side)
    except Exception as e:  # unreadable source, undecodable image or video, no such frame: the page says why
        raise HTTPException(404, why_unavailable(e, item.uri)) from None
    return Response(body, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=300"})


@router.post("/decisions")
def decide_form(
    principal: CurrentUser,
    db: Db,
    item_ids: Annotated[list[DbId], Form(max_length=1000)],
    verdict: Annotated[Verdict, Form()],
    labels: Annotated[str, Form()] = "",
    note: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/queue",
) -> RedirectResponse:
    """One or several items at once (the queue's bulk form and keyboard shortcuts)."""
    try:
        d = decisions.DecisionIn(verdict=verdict, labels=decisions.parse_labels(labels), note=note)
    except ValidationError as e:
        raise HTTPException(422, str(e.errors()[0]["msg"])) from None
    items = [db.get(Item, i) for i in item_ids]
    if any(item is None for item in items):
        raise HTTPException(404, "no such item")
    try:
        decisions.decide_many(db, [i for i in items if i is not None], d, principal.user.name, "web")
    except decisions.DecisionError as e:
        raise HTTPException(422, str(e)) from None
    db.commit()
    return RedirectResponse(safe_next(next), status_code=303)
