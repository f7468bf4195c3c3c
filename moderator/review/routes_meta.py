"""/healthz (the only anonymous page), /metrics, and the API schema for logged-in users."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest
from sqlalchemy import text

from moderator.review import auth, queries
from moderator.review.auth import CurrentUser, Db, settings_of
from moderator.review.credentials import bearer_matches
from moderator.review.templates import render

router = APIRouter(include_in_schema=False)


class Metrics:
    """One registry per app, so several apps in one process (tests) do not collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.decisions = Counter(
            "moderator_review_decisions", "Reviewer decisions recorded", ["verdict"], registry=self.registry
        )
        self.login_failures = Counter("moderator_login_failures", "Failed logins", registry=self.registry)
        self.queue = Gauge("moderator_review_queue_items", "Unreviewed flagged items", registry=self.registry)


@router.get("/healthz")
def healthz(db: auth.Db) -> dict[str, str]:
    db.execute(text("SELECT 1"))
    return {"status": "ok"}


@router.get("/metrics")
def metrics(request: Request, db: Db) -> Response:
    """Prometheus metrics: for the metrics bearer token, or an admin."""
    if not bearer_matches(request, settings_of(request).metrics_token):
        principal = auth.resolve(request, db)
        if principal is None:
            raise auth.NotAuthenticated()
        if not principal.is_admin:
            raise HTTPException(403, "only admins or the metrics token may read metrics")
    m: Metrics = request.app.state.metrics
    m.queue.set(queries.queue_size(db))
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/openapi.json")
def openapi(request: Request, principal: CurrentUser) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@router.get("/docs", response_class=HTMLResponse)
def docs(request: Request, principal: CurrentUser) -> HTMLResponse:
    """The API described from the OpenAPI schema, rendered here (no CDN, no inline script)."""
    schema: dict[str, Any] = request.app.openapi()
    ops = [
        {"method": method.upper(), "path": path, "summary": op.get("summary", ""), "doc": op.get("description", "")}
        for path, methods in schema.get("paths", {}).items()
        for method, op in methods.items()
    ]
    return render(request, "docs.html", principal, ops=ops)
