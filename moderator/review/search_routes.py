"""Search in the API (and for the review UI): stored items by text, by example image, or like an item.

    GET  /search?q=...&decision=&policy=&source=&since=&until=    the review UI's page (also ?like=ITEM_ID)
    POST /search  (multipart file + the same filters, CSRF)        the page, by an example image
    GET  /api/search?q=a+red+car&k=20        text (CLIP text encoder)
    GET  /api/search?sha256=HEX&k=20         "more like this": the item's own embedding, itself left out
    POST /api/search/image  (multipart file)  an example image

Cosine over the stored embeddings of the configured model (moderator.engine.search: exact for a
small store, else the approximate index on disk); one SearchIndex per app and model, which
sees new embeddings by one max(seq) probe per query.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, HTTPException, Query, Request, UploadFile
from fastapi.responses import HTMLResponse
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.datastructures import UploadFile as StarletteUpload

from moderator.engine.search import Hit, ItemFilter, SearchIndex
from moderator.review.auth import CurrentUser, Db, Principal, settings_of
from moderator.review.params import MAX_DB_ID
from moderator.store.tables import Item
from moderator.types import Action

router = APIRouter(prefix="/api", tags=["search"])
TopK = Annotated[int, Query(ge=1, le=500, description="How many results.")]


class HitOut(BaseModel):
    sha256: str
    score: float
    uris: list[str]


def _index(request: Request) -> SearchIndex:
    from moderator.models import model_id_for

    model_id = model_id_for(settings_of(request))
    cache: dict[str, SearchIndex] | None = getattr(request.app.state, "search_indexes", None)
    if cache is None:
        cache = request.app.state.search_indexes = {}
    if model_id not in cache:
        cache[model_id] = SearchIndex(request.app.state.store, model_id, settings_of(request))
    return cache[model_id]


def _out(hits: list[Hit]) -> list[HitOut]:
    return [HitOut(sha256=h.sha256, score=h.score, uris=h.uris) for h in hits]


@router.get("/search", response_model=list[HitOut])
def search(
    request: Request, principal: CurrentUser, q: str | None = None, sha256: str | None = None, k: TopK = 20
) -> list[HitOut]:
    """Items most similar to a text (q) or to a stored item (sha256), best first."""
    from moderator.engine.search import item_query, text_query
    from moderator.errors import ScorerUnavailable

    if (q is None) == (sha256 is None):
        raise HTTPException(422, "give exactly one of q or sha256")
    index = _index(request)
    if sha256 is not None:
        query = item_query(index.store, index.model_id, sha256.lower())
        if query is None:
            raise HTTPException(404, f"no stored embedding of {index.model_id} for that sha256")
        return _out(index.search(query, k, exclude=sha256.lower()))
    if not q or len(q) > 1000:
        raise HTTPException(422, "q must be 1 to 1000 characters")
    try:
        query = text_query(settings_of(request), q)
    except ScorerUnavailable as e:
        raise HTTPException(503, str(e)) from None
    return _out(index.search(query, k))


@router.post("/search/image", response_model=list[HitOut])
async def search_image(request: Request, principal: CurrentUser, file: UploadFile, k: TopK = 20) -> list[HitOut]:
    """Items that look like an uploaded example image."""
    from starlette.concurrency import run_in_threadpool

    from moderator.engine.prepare import items_from_bytes
    from moderator.engine.search import image_query
    from moderator.errors import ScorerUnavailable

    settings = settings_of(request)
    data = await file.read(settings.max_image_bytes + 1)
    if len(data) > settings.max_image_bytes:
        raise HTTPException(413, f"image larger than {settings.max_image_bytes} bytes")
    index = _index(request)
    upload = items_from_bytes([("the upload", data)])[0]
    try:
        query = await run_in_threadpool(image_query, settings, upload, index.store)
    except ScorerUnavailable as e:
        raise HTTPException(503, str(e)) from None
    except ValueError as e:
        raise HTTPException(422, str(e)) from None
    return _out(await run_in_threadpool(index.search, query, k))


# -- the search page (issue 18): GET /search (text, "more like this"), POST /search (an upload) ---------

pages = APIRouter(include_in_schema=False)
PAGE_K = 40
DECISIONS = ("block", "review", "tag", "allow")


@dataclass(frozen=True)
class PageFilters:
    """The page's filters as typed (blank: no filter); ItemFilter is what the search applies."""

    decision: str = ""
    policy: str = ""
    source: str = ""
    since: str = ""
    until: str = ""

    def item_filter(self) -> ItemFilter:
        day = timedelta(days=1)
        return ItemFilter(
            decision=Action(self.decision) if self.decision in DECISIONS else None,
            policy=self.policy.strip() or None,
            uri_prefix=self.source.strip() or None,
            since=_day(self.since),
            until=(d + day) if (d := _day(self.until)) else None,  # the whole "until" day is in
        )

    def query(self, **extra: str) -> str:
        pairs = {**{f.name: getattr(self, f.name) for f in fields(self)}, **extra}
        return urlencode({k: v for k, v in pairs.items() if v})


def _day(text: str) -> datetime | None:
    try:
        return datetime.combine(date.fromisoformat(text), time.min, UTC) if text else None
    except ValueError:
        raise HTTPException(422, f"not a date (YYYY-MM-DD): {text[:40]!r}") from None


@dataclass(frozen=True)
class PageHit:
    item_id: int
    uri: str
    decision: str
    score: float
    places: int


def _page_hits(db: Session, hits: list[Hit]) -> list[PageHit]:
    """Each hit as the first of its (matching) items, with how many places hold the same bytes."""
    first = {h.uris[0]: h for h in hits if h.uris}
    rows = {
        uri: (i, d) for i, uri, d in db.execute(select(Item.id, Item.uri, Item.decision).where(Item.uri.in_(first)))
    }
    out = []
    for uri, h in first.items():
        if uri in rows:
            item_id, decision = rows[uri]
            out.append(PageHit(item_id, uri, str(decision or "none"), h.score, len(h.uris)))
    return out


def _form(request: Request) -> PageFilters:
    p = request.query_params
    return PageFilters(*(p.get(name, "")[:1000] for name in ("decision", "policy", "source", "since", "until")))


def _render(
    request: Request, principal: Principal, filters: PageFilters, *, status: int = 200, **context: Any
) -> HTMLResponse:
    from moderator.review.templates import render

    context.setdefault("hits", None)
    context.setdefault("error", None)
    context.setdefault("q", "")
    context.setdefault("like", None)
    here = "/search" + (f"?{request.url.query}" if request.url.query else "")
    return render(request, "search.html", principal, status, filters=filters, decisions=DECISIONS, here=here, **context)


@pages.get("/search", response_class=HTMLResponse)
def search_page(
    request: Request,
    principal: CurrentUser,
    db: Db,
    q: Annotated[str, Query(max_length=1000)] = "",
    like: Annotated[int | None, Query(ge=1, le=MAX_DB_ID)] = None,
) -> HTMLResponse:
    """Text search, or "more like this" (like=item id), with the filters."""
    from moderator.engine.search import item_query, text_query
    from moderator.errors import ScorerUnavailable

    filters = _form(request)
    where = filters.item_filter()
    index = _index(request)
    if like is not None:
        item = db.get(Item, like)
        if item is None:
            raise HTTPException(404, "no such item")
        query = item_query(index.store, index.model_id, item.sha256) if item.sha256 else None
        if query is None:
            return _render(request, principal, filters, like=item, error="this item has no stored embedding")
        hits = index.search(query, PAGE_K, exclude=item.sha256, where=where)
        return _render(request, principal, filters, like=item, hits=_page_hits(db, hits))
    if not q.strip():
        return _render(request, principal, filters)
    try:
        hits = index.search(text_query(settings_of(request), q.strip()), PAGE_K, where=where)
    except ScorerUnavailable as e:
        return _render(request, principal, filters, q=q, error=str(e), status=503)
    return _render(request, principal, filters, q=q, hits=_page_hits(db, hits))


@pages.post("/search", response_class=HTMLResponse)
async def search_upload(request: Request, principal: CurrentUser, db: Db) -> HTMLResponse:
    """An example image (multipart `file`), with the filters as form fields (CSRF checked by CurrentUser)."""
    from starlette.concurrency import run_in_threadpool

    from moderator.engine.prepare import items_from_bytes
    from moderator.engine.search import image_query
    from moderator.errors import ScorerUnavailable

    settings = settings_of(request)
    form = await request.form()
    filters = PageFilters(*(str(form.get(n) or "")[:1000] for n in ("decision", "policy", "source", "since", "until")))
    upload = form.get("file")
    if not isinstance(upload, StarletteUpload) or not upload.filename:
        return _render(request, principal, filters, error="choose an image to search with", status=422)
    data = await upload.read(settings.max_image_bytes + 1)
    if len(data) > settings.max_image_bytes:
        return _render(request, principal, filters, error="the image is too large", status=413)
    index = _index(request)
    try:
        query = await run_in_threadpool(image_query, settings, items_from_bytes([("the upload", data)])[0], index.store)
        hits = await run_in_threadpool(lambda: index.search(query, PAGE_K, where=filters.item_filter()))
    except ScorerUnavailable as e:
        return _render(request, principal, filters, error=str(e), status=503)
    except ValueError as e:
        return _render(request, principal, filters, error=str(e), status=422)
    return _render(request, principal, filters, upload=upload.filename, hits=_page_hits(db, hits))
