"""GET /dashboard: how the queue, the reviewers and the policies are doing (figures in review/dashboard.py)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from moderator.review import dashboard, svg
from moderator.review.auth import CurrentUser, Db
from moderator.review.templates import render

router = APIRouter(include_in_schema=False)


def age(delta: timedelta) -> str:
    """A duration as people say it: "3 d 4 h", "12 min"."""
    seconds = max(int(delta.total_seconds()), 0)
    d, rest = divmod(seconds, 86400)
    h, rest = divmod(rest, 3600)
    m = rest // 60
    if d:
        return f"{d} d {h} h" if h else f"{d} d"
    if h:
        return f"{h} h {m} min" if m else f"{h} h"
    return f"{m} min" if m else "under a minute"


def _charts(board: dashboard.Dashboard) -> dict[str, Any]:
    q = board.queue
    scale = max((w.block + w.review for w in q.by_policy), default=0)
    policy_bars = {
        w.policy: svg.bar(
            [("block", w.block), ("review", w.review)], scale, f"{w.policy}: {w.block} block, {w.review} review"
        )
        for w in q.by_policy
    }
    peak = max((r.total for r in board.reviewers), default=0)
    reviewer_sparks = {
        r.name: svg.sparkline(r.per_day, f"{r.name}: decisions per day, {r.total} in {len(board.days)} days")
        for r in board.reviewers
    }
    reviewer_bars = {
        r.name: svg.bar([("s0", r.total)], peak, f"{r.name}: {r.total} decisions") for r in board.reviewers
    }
    judged = max((c.confirmed + c.dismissed for c in board.classes), default=0)
    class_bars = {
        (c.policy, c.name): svg.bar(
            [("confirmed", c.confirmed), ("dismissed", c.dismissed)],
            judged,
            f"{c.policy}/{c.name}: {c.confirmed} confirmed, {c.dismissed} dismissed",
        )
        for c in board.classes
    }
    curves = {
        (c.policy, c.name): svg.precision_curve(
            c.curve,
            board.target,
            c.suggested,
            c.fires_at,
            f"{c.policy}/{c.name}: reviewed precision by threshold; target {board.target:.2f}",
        )
        for c in board.classes
    }
    flow = svg.day_columns(
        board.days,
        [("flagged in", "in", q.arrived), ("decided", "decided", q.decided)],
        f"Items per day over {len(board.days)} days: flagged in and decided by reviewers",
    )
    return {
        "policy_bars": policy_bars,
        "reviewer_sparks": reviewer_sparks,
        "reviewer_bars": reviewer_bars,
        "class_bars": class_bars,
        "curves": curves,
        "flow": flow,
    }


@router.get("/dashboard", response_class=HTMLResponse)
def dashboard_page(
    request: Request,
    principal: CurrentUser,
    db: Db,
    days: Annotated[int, Query(ge=1, le=90, description="Days of history shown (today included).")] = 30,
    target: Annotated[
        float, Query(ge=0.5, le=0.999, description="Target precision of the suggested thresholds.")
    ] = 0.9,
) -> HTMLResponse:
    board = dashboard.compute(db, days=days, target=target)
    oldest = board.queue.oldest
    return render(
        request,
        "dashboard.html",
        principal,
        board=board,
        oldest_age=age(board.now - oldest) if isinstance(oldest, datetime) else None,
        **_charts(board),
    )
