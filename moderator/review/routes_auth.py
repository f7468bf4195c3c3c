"""Login and logout (the account page and API tokens: routes_tokens)."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from moderator.review import auth, users
from moderator.review.auth import CurrentCaller, Db, settings_of
from moderator.review.credentials import same_secret
from moderator.review.links import safe_next
from moderator.review.templates import render

router = APIRouter(include_in_schema=False)


def _login_form(request: Request, error: str = "", status_code: int = 200) -> HTMLResponse:
    # Login CSRF: a double-submit token, since there is no session yet to hold one.
    token = secrets.token_urlsafe(24)
    response = render(
        request,
        "login.html",
        None,
        status_code=status_code,
        error=error,
        login_csrf=token,
        next=safe_next(request.query_params.get("next", "/queue")),
    )
    response.set_cookie(
        auth.LOGIN_CSRF_COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=auth.cookie_secure(request, settings_of(request)),
        path="/login",
    )
    return response


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request) -> HTMLResponse:
    return _login_form(request)


@router.post("/login", response_model=None)
def login(
    request: Request,
    db: Db,
    username: Annotated[str, Form()],
    password: Annotated[str, Form()],
    csrf_token: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/queue",
) -> HTMLResponse | RedirectResponse:
    cookie = request.cookies.get(auth.LOGIN_CSRF_COOKIE, "")
    if not cookie or not same_secret(cookie, csrf_token):
        return _login_form(request, "The form expired: please try again.", 403)
    s = settings_of(request)
    try:
        user = users.login(
            db, username, password, auth.client_address(request), s.login_max_failures, s.login_lockout_minutes
        )
    except users.UserError:
        db.commit()
        return _login_form(request, "Too many failed logins: try again later.", 429)
    if user is None:
        db.commit()
        return _login_form(request, "Wrong user name or password.", 401)
    token = auth.start_session(db, user, request.cookies.get(auth.COOKIE))
    db.commit()
    response = RedirectResponse(safe_next(next), status_code=303)
    auth.set_session_cookie(response, request, token)
    response.delete_cookie(auth.LOGIN_CSRF_COOKIE, path="/login")
    return response


@router.post("/logout")
def logout(request: Request, principal: CurrentCaller, db: Db) -> RedirectResponse:
    auth.end_session(db, request.cookies.get(auth.COOKIE))
    db.commit()
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(auth.COOKIE, path="/")
    return response
