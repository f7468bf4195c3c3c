"""The JSON API (/api): enqueue scans, job status, item lookup, the queue, decisions.

Callers authenticate with a session (and its CSRF token), HTTP Basic, or a personal
token (`Authorization: Bearer ...`).
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from sqlalchemy.orm import Session

from moderator.review import decisions, queries
from moderator.review.auth import CurrentCaller, CurrentUser, Db, Principal, settings_of
from moderator.review.params import DbId, ItemId, JobId
from moderator.review.routes_pages import Filters
from moderator.review.scan_roots import target_allowed
from moderator.store.tables import Item, Review

router = APIRouter(prefix="/api", tags=["api"])
Target = Annotated[str, StringConstraints(min_length=1, max_length=queries.MAX_URI)]
PolicyName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]*$", max_length=queries.MAX_NAME)]


class ScanIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    targets: list[Target] = Field(
        min_length=1, max_length=10_000, description="Paths, folders, archives or S3 URIs under api_scan_roots."
    )
    policies: list[PolicyName] | None = Field(
        default=None, max_length=100, description="Names of configured policies; all of them when empty."
    )


class ScanOut(BaseModel):
    job_id: str


class ReviewOut(BaseModel):
    id: int
    reviewer: str
    via: str
    verdict: str
    old_decision: str
    new_decision: str
    labels: list[str]
    note: str
    created_at: datetime


class ItemOut(BaseModel):
    id: int
    uri: str
    sha256: str | None
    status: str
    error: str | None
    decision: str | None = Field(description="The pipeline's decision.")
    current_decision: str = Field(description="The latest reviewer decision, else the pipeline's.")
    results: list[dict[str, Any]]
    reviews: list[ReviewOut] = Field(description="Newest first.")
    review: ReviewOut | None = Field(
        default=None, description="The human verdict: the latest reviewer decision (None: not reviewed)."
    )
    meta: dict[str, Any]
    external_id: str | None = Field(default=None, description="The id POST /api/moderate was given for it.")


class QueueOut(BaseModel):
    total: int = Field(description="Exact up to 10,000 (1,000 with a source or date filter): total_capped says more.")
    total_capped: bool = False
    page: int
    per_page: int
    next_cursor: str | None = Field(default=None, description="Pass as `after` for the next page (None: last page).")
    items: list[dict[str, Any]] = Field(description="One per content: its first item, places and place_list.")


class BulkDecisionIn(decisions.DecisionIn):
    item_ids: list[DbId] = Field(min_length=1, max_length=1000)


def _review_out(r: Review) -> ReviewOut:
    return ReviewOut.model_validate(r, from_attributes=True)


def item_out(db: Session, item: Item, viewer: Principal | None = None) -> ItemOut:
    """The item as the API shows it; a client `viewer` sees its own external_id of it, not the latest."""
    results = queries.results_of(db, [item.id]).get(item.id, [])
    past = queries.history(db, item.uri)
    return ItemOut(
        id=item.id,
        uri=item.uri,
        sha256=item.sha256,
        status=str(item.status),
        error=item.error,
        decision=str(item.decision) if item.decision else None,
        current_decision=decisions.current_decision(item, past[0] if past else None),
        results=[
            {
                "policy": r.policy,
                "policy_version": r.policy_version,
                "scorer": r.scorer,
                "model_id": r.model_id,
                "action": str(r.action),
                "scores": r.scores,
                "fired": r.fired,
                "tags": r.tags,
            }
            for r in results
        ],
        reviews=[_review_out(r) for r in past],
        review=_review_out(past[0]) if past else None,
        meta=item.meta or {},
        external_id=_external_id(db, item, viewer),
    )


def _external_id(db: Session, item: Item, viewer: Principal | None) -> str | None:
    if viewer is None or not viewer.is_client:
        return item.external_id
    sent = queries.submitted_id(db, item.id, viewer.user.id)
    return sent if isinstance(sent, str) else None


def configured_policy_files(names: list[str] | None, request: Request) -> list[str] | None:
    """The files of the named configured policies (never a caller's path: no probe of the server's disk)."""
    from moderator.policy.load import PolicyError, load_policies

    if not names:
        return None
    try:
        known = {p.name: str(p.path.resolve()) for p in load_policies(settings_of(request).policy_paths())}
    except PolicyError as e:
        raise HTTPException(503, f"the server's policies do not load: {e}") from None
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise HTTPException(422, f"unknown policy {', '.join(unknown)}; configured: {', '.join(sorted(known))}")
    return [known[n] for n in names]


def may_scan(principal: Principal) -> None:
    if not principal.is_admin:
        raise HTTPException(403, "only admins may enqueue scans")


@router.post("/scans", response_model=ScanOut, status_code=202)
def enqueue_scan(request: Request, body: ScanIn, principal: CurrentUser) -> ScanOut:
    """Queue a scan of paths or S3 URIs under the server's api_scan_roots (admins only); returns the job id."""
    may_scan(principal)
    settings = settings_of(request)
    roots = settings.api_scan_roots
    refused = [i for i, target in enumerate(body.targets) if not target_allowed(target, roots)]
    if refused:
        where = "under the server's scan roots (api_scan_roots)" if roots else "at all: api_scan_roots is empty"
        raise HTTPException(403, f"targets[{refused[0]}]: the API may not enqueue it: not {where}")
    policies = configured_policy_files(body.policies, request)
    try:
        from moderator.queue import enqueue_targets
    except ImportError:
        raise HTTPException(503, "scanning through the queue is not available in this installation") from None
    try:
        job_id = enqueue_targets(body.targets, settings, policies)
    except ValueError as e:
        raise HTTPException(422, str(e)) from None
    except Exception as e:  # the broker or the store is down: nothing to fix in the request
        raise HTTPException(503, f"could not enqueue now ({type(e).__name__}); try again later") from None
    return ScanOut(job_id=job_id)


@router.get("/jobs/{job_id}")
def job_status(request: Request, job_id: JobId, principal: CurrentUser) -> dict[str, Any]:
    """A job's state and progress counts."""
    store = request.app.state.store
    job = store.get_job(job_id)
    if job is None:
        raise HTTPException(404, "no such job")
    return {k: (str(v) if k == "state" else v) for k, v in vars(job).items()}


@router.get("/items", response_model=list[ItemOut])
def lookup_items(
    db: Db,
    principal: CurrentCaller,
    uri: Annotated[str | None, Query(max_length=queries.MAX_URI)] = None,
    sha256: Annotated[str | None, Query(max_length=64)] = None,
) -> list[ItemOut]:
    """Items by uri or by content sha256 (one of them); a client sees only the items it sent."""
    if (uri is None) == (sha256 is None):
        raise HTTPException(422, "give exactly one of uri or sha256")
    sender = principal.user.id if principal.is_client else None
    found = queries.find_items(db, uri=uri, sha256=sha256, submitted_by=sender)
    return [item_out(db, item, principal) for item in found]


@router.get("/items/{item_id}", response_model=ItemOut)
def get_item(item_id: ItemId, db: Db, principal: CurrentCaller) -> ItemOut:
    """One item; to a client, only one it sent (others read as unknown)."""
    item = db.get(Item, item_id)
    if item is None or (principal.is_client and queries.submitted_id(db, item.id, principal.user.id) is False):
        raise HTTPException(404, "no such item")
    return item_out(db, item, principal)


@router.get("/queue", response_model=QueueOut)
def get_queue(db: Db, principal: CurrentUser, filters: Filters) -> QueueOut:
    """Unreviewed items flagged review or block (query: decision, policy, class, tag, source, since, until,
    min_score, max_score, page, per_page)."""
    page = queries.queue(db, filters)
    return QueueOut(
        total=page.total,
        total_capped=page.total_capped,
        page=page.page,
        per_page=page.per_page,
        next_cursor=page.next_cursor,
        items=[asdict(r) for r in page.rows],
    )


def _decide(db: Session, item_ids: list[int], d: decisions.DecisionIn, principal: Principal) -> list[ReviewOut]:
    items = [db.get(Item, i) for i in item_ids]
    missing = [i for i, item in zip(item_ids, items, strict=True) if item is None]
    if missing:
        raise HTTPException(404, f"no such item: {missing[0]}")
    try:
        reviews = decisions.decide_many(db, [i for i in items if i is not None], d, principal.user.name, "api")
    except decisions.DecisionError as e:
        raise HTTPException(422, str(e)) from None
    db.commit()
    return [_review_out(r) for r in reviews]


@router.post("/items/{item_id}/decisions", response_model=ReviewOut, status_code=201)
def decide_item(item_id: ItemId, body: decisions.DecisionIn, db: Db, principal: CurrentUser) -> ReviewOut:
    """Record a reviewer decision (confirm, dismiss, relabel) on one item."""
    return _decide(db, [item_id], body, principal)[0]


@router.post("/decisions", response_model=list[ReviewOut], status_code=201)
def decide_bulk(body: BulkDecisionIn, db: Db, principal: CurrentUser) -> list[ReviewOut]:
    """The same decision on several items, all or none."""
    d = decisions.DecisionIn.model_validate(body.model_dump(exclude={"item_ids"}))
    return _decide(db, body.item_ids, d, principal)
