"""Admin pages: users (add, disable, enable, role) and the audit trail."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from moderator.review import queries, users
from moderator.review.auth import CurrentAdmin, Db
from moderator.review.queries import MAX_PAGE
from moderator.review.templates import render
from moderator.store.tables import Role

router = APIRouter(prefix="/admin", include_in_schema=False)


@router.get("/users", response_class=HTMLResponse)
def users_page(
    request: Request, principal: CurrentAdmin, db: Db, error: Annotated[str, Query(max_length=500)] = ""
) -> HTMLResponse:
    return render(request, "users.html", principal, users=users.list_users(db), error=error, roles=list(Role))


@router.post("/users", response_model=None)
def add_user(
    request: Request,
    principal: CurrentAdmin,
    db: Db,
    name: Annotated[str, Form()],
    password: Annotated[str, Form()],
    role: Annotated[Role, Form()] = Role.REVIEWER,
) -> HTMLResponse | RedirectResponse:
    try:
        users.add_user(db, name, role, password)
    except users.UserError as e:
        db.rollback()
        return render(
            request,
            "users.html",
            principal,
            status_code=422,
            users=users.list_users(db),
            error=str(e),
            roles=list(Role),
        )
    db.commit()
    return RedirectResponse("/admin/users", status_code=303)


@router.post("/users/{name}/{action}")
def change_user(
    name: Annotated[str, Path(max_length=64)],
    action: Annotated[str, Path(max_length=16)],
    principal: CurrentAdmin,
    db: Db,
) -> RedirectResponse:
    if name == principal.user.name and action in ("disable", Role.REVIEWER, Role.CLIENT):
        raise HTTPException(422, "admins cannot disable or demote themselves")
    try:
        if action in ("disable", "enable"):
            users.set_disabled(db, name, action == "disable")
        elif action in (Role.REVIEWER, Role.ADMIN, Role.CLIENT):
            users.set_role(db, name, Role(action))
        else:
            raise HTTPException(404, "unknown action")
    except users.UserError as e:
        raise HTTPException(404, str(e)) from None
    db.commit()
    return RedirectResponse("/admin/users", status_code=303)


@router.get("/audit", response_class=HTMLResponse)
def audit_page(
    request: Request, principal: CurrentAdmin, db: Db, page: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1
) -> HTMLResponse:
    return render(request, "audit.html", principal, reviews=queries.audit(db, page), page=page)
