"""Review work: leases (/api/items/{id}/lease, /api/queue/claim), undo and the hash list (API and
pages), and what the work partial (templates/partials/work.html) shows."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Form, HTTPException, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from moderator.review import appeals, leases, queries
from moderator.review.appeals import WorkError
from moderator.review.auth import CurrentUser, Db, Principal, settings_of
from moderator.review.links import safe_next
from moderator.review.params import MAX_DB_ID, DbId, ErrorOut, ItemId
from moderator.review.routes_api import ReviewOut
from moderator.review.routes_pages import Filters
from moderator.review.templates import TEMPLATES
from moderator.store.tables import Item, Review, utcnow

api = APIRouter(prefix="/api", tags=["review work"])
pages = APIRouter(include_in_schema=False)
ReviewId = Annotated[int, Path(ge=1, le=MAX_DB_ID, description="A review id (reviews.id in the audit).")]
CONFLICT: dict[int | str, dict[str, Any]] = {409: {"model": ErrorOut}}


class LeaseOut(BaseModel):
    item_id: int | None = None
    sha256: str
    holder: str
    expires_at: datetime
    mine: bool


class ListedOut(BaseModel):
    list_path: str
    added: int = Field(description="Lines written.")
    present: int = Field(description="Hashes already in the list.")
    kinds: list[str]
    pdq_quality: int | None
    note: str


class ClaimOut(BaseModel):
    leases: list[LeaseOut]


def _ttl(request: Request) -> timedelta:
    return timedelta(seconds=settings_of(request).review_lease_s)


def fail(e: WorkError) -> HTTPException:
    return HTTPException(e.status, str(e))


def item_or_404(db: Session, item_id: int) -> Item:
    item = db.get(Item, item_id)
    if item is None:
        raise HTTPException(404, "no such item")
    return item


def _content(db: Session, item_id: int) -> tuple[Item, str]:
    item = item_or_404(db, item_id)
    if not item.sha256:
        raise HTTPException(422, "the item has no content hash (its bytes were never read): nothing to hold")
    return item, item.sha256


def _taken(lease: leases.Lease) -> HTTPException:
    return HTTPException(409, f"Taken: {lease.holder} is working on this content until {lease.expires_at:%H:%M:%S} UTC")


# --- leases ------------------------------------------------------------------------------


@api.post("/items/{item_id}/lease", response_model=LeaseOut, responses=CONFLICT)
def take_lease(request: Request, item_id: ItemId, db: Db, principal: CurrentUser) -> LeaseOut:
    """Hold the item's content (every item with its sha256) for review_lease_s, or renew the hold; 409 when
    another reviewer holds it."""
    item, sha = _content(db, item_id)
    lease = leases.acquire(db, sha, principal.user.name, utcnow(), _ttl(request))
    db.commit()
    if not lease.mine:
        raise _taken(lease)
    return LeaseOut(item_id=item.id, **lease.as_dict())


@api.delete("/items/{item_id}/lease", status_code=204)
def drop_lease(item_id: ItemId, db: Db, principal: CurrentUser) -> Response:
    """Give up your hold on the item's content (nothing happens when you hold none)."""
    _, sha = _content(db, item_id)
    leases.release(db, sha, principal.user.name)
    db.commit()
    return Response(status_code=204)


@api.get("/leases", response_model=list[LeaseOut])
def list_leases(
    db: Db, principal: CurrentUser, item_id: Annotated[list[DbId] | None, Query(max_length=500)] = None
) -> list[LeaseOut]:
    """The live holds on the given items' contents (with item_id), or all live holds (at most 1000)."""
    now = utcnow()
    if item_id:
        shas = {i.id: i.sha256 for i in db.query(Item).filter(Item.id.in_(item_id)) if i.sha256}
        held = leases.holders(db, shas.values(), now, principal.user.name)
        return [LeaseOut(item_id=i, **held[s].as_dict()) for i, s in shas.items() if s in held]
    rows = db.execute(
        leases.LEASES.select().where(leases.LEASES.c.expires_at > now).order_by(leases.LEASES.c.sha256).limit(1000)
    )
    return [
        LeaseOut(sha256=r.sha256, holder=r.holder, expires_at=r.expires_at, mine=r.holder == principal.user.name)
        for r in rows
    ]


def claim_next(db: Session, request: Request, principal: Principal, filters: Any, n: int) -> list[LeaseOut]:
    """Take the first `n` free contents of the queue (its order and filters), skipping what others hold."""
    got: list[LeaseOut] = []
    now, ttl = utcnow(), _ttl(request)
    # From the top of the queue whatever page or cursor the filters carry; pages by offset from there.
    page = filters.model_copy(update={"page": 1, "after": None, "per_page": max(filters.per_page, 50)})
    for _ in range(20):  # bounded: at most 20 pages of held contents are skipped
        rows = queries.queue(db, page).rows
        taken = leases.claim(db, (r.sha256 for r in rows if r.sha256), principal.user.name, now, ttl, n - len(got))
        first = {r.sha256: r.id for r in reversed(rows)}
        got += [LeaseOut(item_id=first.get(lease.sha256), **lease.as_dict()) for lease in taken]
        if len(got) >= n or len(rows) < page.per_page:
            break
        page = page.model_copy(update={"page": page.page + 1})
    db.commit()
    return got


class ClaimIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n: int = Field(default=1, ge=1, le=100, description="How many contents to hold.")


@api.post("/queue/claim", response_model=ClaimOut)
def claim(request: Request, db: Db, principal: CurrentUser, filters: Filters, body: ClaimIn | None = None) -> ClaimOut:
    """Hold the next `n` free contents of the queue (query: the filters of /api/queue), for review_lease_s."""
    return ClaimOut(leases=claim_next(db, request, principal, filters, (body or ClaimIn()).n))


# --- undo and hash list ------------------------------------------------------------------


def _review(db: Session, review_id: int) -> Review:
    review = db.get(Review, review_id)
    if review is None:
        raise HTTPException(404, "no such review")
    return review


def undo_reviews(db: Session, request: Request, principal: Principal, ids: list[int], via: str) -> list[Review]:
    window = timedelta(seconds=settings_of(request).review_undo_s)
    now = utcnow()
    backs = []
    try:
        for review_id in ids:
            review = _review(db, review_id)
            appeals.check_undoable(db, review, principal.user.name, principal.is_admin, now, window)
            backs.append(appeals.undo(db, review, principal.user.name, via))
    except WorkError as e:
        # No rollback: the request's session ends uncommitted (all or none), and a rollback would
        # expire the caller's session row that the error page still reads.
        raise fail(e) from None
    db.commit()
    return backs


@api.post("/reviews/{review_id}/undo", response_model=ReviewOut, status_code=201, responses=CONFLICT)
def undo_api(request: Request, review_id: ReviewId, db: Db, principal: CurrentUser) -> ReviewOut:
    """Undo your decision (within review_undo_s, while nobody decided the item since): appends a review with
    verdict "undo" that puts the decision back."""
    [back] = undo_reviews(db, request, principal, [review_id], "api")
    return ReviewOut.model_validate(back, from_attributes=True)


async def list_review(request: Request, db: Session, review_id: int) -> ListedOut:
    from moderator.actions.s3 import current_uri
    from moderator.sources import read_uri

    review = _review(db, review_id)
    settings = settings_of(request)
    data: bytes | None
    try:
        uri = await run_in_threadpool(current_uri, request.app.state.store, review.item_uri)
        data = await run_in_threadpool(read_uri, uri, settings)
    except Exception:  # noqa: BLE001 - unreadable now: the exact hash is still listed
        data = None
    if data is not None and hashlib.sha256(data).hexdigest() != review.item_sha256:
        data = None  # the bytes changed since the review: a PDQ of them would list something else
    try:
        listed = await run_in_threadpool(appeals.add_to_hash_list, review, data, settings)
    except WorkError as e:
        raise fail(e) from None
    return ListedOut(**vars(listed))


@api.post("/reviews/{review_id}/hashlist", response_model=ListedOut, status_code=201, responses=CONFLICT)
async def hashlist_api(request: Request, review_id: ReviewId, db: Db, principal: CurrentUser) -> ListedOut:
    """Add the content a review blocked to the hash list (settings.review_hash_list): sha256, and PDQ where
    the image gives a reliable one; each entry's source is "review:<id>"."""
    return await list_review(request, db, review_id)


# --- appeals -----------------------------------------------------------------------------


@pages.post("/work/undo")
def undo_form(
    request: Request,
    db: Db,
    principal: CurrentUser,
    review_ids: Annotated[list[DbId], Form(max_length=200)],
    next: Annotated[str, Form()] = "/queue",
) -> RedirectResponse:
    undo_reviews(db, request, principal, review_ids, "web")
    return RedirectResponse(safe_next(next), status_code=303)


@pages.post("/work/hashlist")
async def hashlist_form(
    request: Request,
    db: Db,
    principal: CurrentUser,
    review_ids: Annotated[list[DbId], Form(max_length=200)],
    next: Annotated[str, Form()] = "/queue",
) -> RedirectResponse:
    for review_id in review_ids:
        await list_review(request, db, review_id)
    # The pages' query strings are strict (filters): the note is shown by its fragment (CSS :target).
    return RedirectResponse(f"{safe_next(next).partition('#')[0]}#listed", status_code=303)


@pages.post("/work/next")
def next_form(request: Request, db: Db, principal: CurrentUser, filters: Filters) -> RedirectResponse:
    """The queue's "next free item" button: hold the first content nobody else holds and open it."""
    got = claim_next(db, request, principal, filters, 1)
    back = "/queue" + (f"?{request.url.query}" if request.url.query else "")
    if not got or got[0].item_id is None:
        return RedirectResponse(back + "#none-free", status_code=303)
    return RedirectResponse(f"/items/{got[0].item_id}?back={_quote(back)}", status_code=303)


def _quote(path: str) -> str:
    from urllib.parse import quote

    return quote(path, safe="")


# --- what the partial template shows (templates/partials/work.html) ----------------------


def work_view(request: Request, user: Any, item: Any = None) -> dict[str, Any]:
    """For the item and queue pages: the user's last decision open to undo, the lease on the item's
    content, the item's appeals, the number of open appeals."""
    settings = settings_of(request)
    now = utcnow()
    with Session(request.app.state.engine) as db:
        last = appeals.last_decision(db, user.name, now, timedelta(seconds=settings.review_undo_s))
        ids = {r.item_uri: i for r, i in zip(last, _ids(db, [r.item_uri for r in last]), strict=True)}
        view: dict[str, Any] = {
            "last": last,
            "last_ids": ids,
            "blocked": [r for r in last if r.new_decision == "block" and r.item_sha256],
            "open_appeals": appeals.open_count(db),
            "lease_s": settings.review_lease_s,
        }
        if item is not None:
            view["lease"] = leases.held_by(db, item.sha256, now, user.name) if item.sha256 else None
            view["appeals"] = appeals.appeals_of_item(db, item.id)
    return view


def _ids(db: Session, uris: list[str]) -> list[int | None]:
    found = dict(db.query(Item.uri, Item.id).filter(Item.uri.in_(uris)).all()) if uris else {}
    return [found.get(u) for u in uris]


TEMPLATES.env.globals["work_view"] = work_view
