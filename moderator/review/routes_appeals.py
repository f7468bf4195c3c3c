"""Appeals (API and pages): a platform (`client`, its own items only) or an admin opens one; reviewers
work the appeal queue at /appeals; a client reads the appeals on its items, outcome and reasons included.
An appeal is decided by another reviewer than the one whose decision it appeals."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy.orm import Session

from moderator.review import appeals, queries
from moderator.review.appeals import AppealDecisionIn, AppealIn, WorkError
from moderator.review.auth import CurrentCaller, CurrentUser, Db, Principal
from moderator.review.params import MAX_DB_ID, ItemId
from moderator.review.routes_work import CONFLICT, fail
from moderator.review.templates import render
from moderator.store.review_work import Appeal, AppealState
from moderator.store.tables import Item

api = APIRouter(prefix="/api", tags=["review work"])
pages = APIRouter(include_in_schema=False)
AppealId = Annotated[int, Path(ge=1, le=MAX_DB_ID, description="An appeal id.")]


class AppealOut(BaseModel):
    id: int
    item_id: int
    item_uri: str
    sha256: str | None
    statement: str
    opened_by: str
    appealed_decision: str
    appealed_review_id: int | None
    appealed_reviewer: str | None = Field(description="Hidden (None) from client accounts.")
    state: AppealState
    decision: str | None = Field(description="The item's decision after the appeal.")
    reasons: str | None = Field(description="The statement of reasons.")
    decided_by: str | None = Field(description="Hidden (None) from client accounts.")
    decision_review_id: int | None
    created_at: datetime
    decided_at: datetime | None


class AppealsOut(BaseModel):
    total: int
    page: int
    per_page: int
    appeals: list[AppealOut]


def appeal_out(a: Appeal, viewer: Principal) -> AppealOut:
    out = AppealOut(
        id=a.id,
        item_id=a.item_id,
        item_uri=a.item_uri,
        sha256=a.item_sha256,
        statement=a.statement,
        opened_by=a.opened_by,
        appealed_decision=a.appealed_decision,
        appealed_review_id=a.appealed_review_id,
        appealed_reviewer=a.appealed_reviewer,
        state=AppealState(a.state),
        decision=a.decision,
        reasons=a.reasons,
        decided_by=a.decided_by,
        decision_review_id=a.decision_review_id,
        created_at=a.created_at,
        decided_at=a.decided_at,
    )
    if viewer.is_client:  # who reviewed is the platform operator's business, not the client's
        out = out.model_copy(update={"appealed_reviewer": None, "decided_by": None})
    return out


def _own_item(db: Session, item_id: int, principal: Principal) -> Item:
    item = db.get(Item, item_id)
    if item is None or (principal.is_client and queries.submitted_id(db, item.id, principal.user.id) is False):
        raise HTTPException(404, "no such item")
    return item


def _appeal(db: Session, appeal_id: int, principal: Principal) -> Appeal:
    appeal = db.get(Appeal, appeal_id)
    if appeal is None or (principal.is_client and queries.submitted_id(db, appeal.item_id, principal.user.id) is False):
        raise HTTPException(404, "no such appeal")
    return appeal


@api.post("/items/{item_id}/appeals", response_model=AppealOut, status_code=201, responses=CONFLICT)
def open_appeal(item_id: ItemId, body: AppealIn, db: Db, principal: CurrentCaller) -> AppealOut:
    """Open an appeal against the item's current decision with the user's statement (a client, for an item it
    sent, or an admin); 409 while the item has an open appeal."""
    if not (principal.is_client or principal.is_admin):
        raise HTTPException(403, "appeals are opened by the platform (a client account) or an admin")
    item = _own_item(db, item_id, principal)
    try:
        appeal = appeals.open_appeal(db, item, body, principal.user.name, principal.user.id)
    except WorkError as e:
        raise fail(e) from None
    db.commit()
    return appeal_out(appeal, principal)


@api.get("/appeals", response_model=AppealsOut)
def get_appeals(
    db: Db,
    principal: CurrentCaller,
    state: AppealState | None = None,
    page: Annotated[int, Query(ge=1, le=queries.MAX_PAGE)] = 1,
    per_page: Annotated[int, Query(ge=1, le=500)] = 50,
) -> AppealsOut:
    """Appeals (a client: those on its own items); open ones oldest first."""
    client = principal.user.id if principal.is_client else None
    rows, total = appeals.list_appeals(db, state, client, page, per_page)
    return AppealsOut(total=total, page=page, per_page=per_page, appeals=[appeal_out(a, principal) for a in rows])


@api.get("/appeals/{appeal_id}", response_model=AppealOut)
def get_appeal(appeal_id: AppealId, db: Db, principal: CurrentCaller) -> AppealOut:
    """One appeal, its outcome and statement of reasons once decided."""
    return appeal_out(_appeal(db, appeal_id, principal), principal)


def decide(db: Session, appeal_id: int, body: AppealDecisionIn, principal: Principal) -> Appeal:
    appeal = _appeal(db, appeal_id, principal)
    try:
        appeals.decide_appeal(db, appeal, body, principal.user.name)
    except WorkError as e:
        raise fail(e) from None
    db.commit()
    return appeal


@api.post("/appeals/{appeal_id}/decision", response_model=AppealOut, responses=CONFLICT)
def decide_api(appeal_id: AppealId, body: AppealDecisionIn, db: Db, principal: CurrentUser) -> AppealOut:
    """Uphold or reverse the decision under appeal, with the statement of reasons; 403 for the reviewer who
    made that decision."""
    return appeal_out(decide(db, appeal_id, body, principal), principal)


# --- pages -------------------------------------------------------------------------------


@pages.get("/appeals", response_class=HTMLResponse)
def appeals_page(
    request: Request,
    db: Db,
    principal: CurrentUser,
    state: AppealState | None = AppealState.OPEN,
    page: Annotated[int, Query(ge=1, le=queries.MAX_PAGE)] = 1,
) -> HTMLResponse:
    rows, total = appeals.list_appeals(db, state, None, page, 50)
    return render(request, "appeals.html", principal, appeals=rows, total=total, state=state, page=page, appeal=None)


@pages.get("/appeals/{appeal_id}", response_class=HTMLResponse)
def appeal_page(request: Request, appeal_id: AppealId, db: Db, principal: CurrentUser) -> HTMLResponse:
    appeal = _appeal(db, appeal_id, principal)
    item = db.get(Item, appeal.item_id)
    past = queries.history(db, appeal.item_uri)
    current = past[0].new_decision if past else (str(item.decision) if item and item.decision else "allow")
    return render(
        request,
        "appeals.html",
        principal,
        appeal=appeal,
        item=item,
        history=past,
        current=current,
        own=appeal.appealed_reviewer == principal.user.name,
    )


@pages.post("/appeals/{appeal_id}/decision")
def decide_form(
    appeal_id: AppealId,
    db: Db,
    principal: CurrentUser,
    outcome: Annotated[appeals.Outcome, Form()],
    reasons: Annotated[str, Form(max_length=10_000)] = "",
    decision: Annotated[str, Form(max_length=16)] = "",
) -> RedirectResponse:
    try:
        body = AppealDecisionIn.model_validate({"outcome": outcome, "reasons": reasons, "decision": decision or None})
    except ValidationError as e:
        raise HTTPException(422, f"{'.'.join(map(str, e.errors()[0]['loc']))}: {e.errors()[0]['msg']}") from None
    decide(db, appeal_id, body, principal)
    return RedirectResponse(f"/appeals/{appeal_id}", status_code=303)
