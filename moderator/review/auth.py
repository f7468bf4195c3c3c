"""Who is asking: server-side sessions (cookie), personal API tokens, HTTP Basic; CSRF.

A browser session is a random token in an HttpOnly cookie; the database keeps only its
sha256, the user, a CSRF synchronizer token and the time of the last request (idle
expiry). Token and Basic callers are exempt from CSRF: browsers never attach those
credentials to a cross-site request by themselves.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Response
from sqlalchemy import delete
from sqlalchemy.orm import Session

from moderator.review import users
from moderator.review.credentials import bearer_token, same_secret
from moderator.settings import Settings
from moderator.store.tables import Role, User, WebSession, utcnow

COOKIE = "moderator_session"
LOGIN_CSRF_COOKIE = "moderator_login_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
# last_seen is written at most this often, so reading pages is not a write each time.
TOUCH_EVERY = timedelta(seconds=30)


class NotAuthenticated(Exception):
    """Raised by the dependencies; the app turns it into a login redirect or a 401."""


@dataclass
class Principal:
    user: User
    via: str  # session, token or basic
    session: WebSession | None = None

    @property
    def is_admin(self) -> bool:
        return self.user.role == Role.ADMIN

    @property
    def is_client(self) -> bool:
        """A platform's account: POST /api/moderate and the items it sent, nothing else."""
        return self.user.role == Role.CLIENT

    @property
    def csrf_token(self) -> str:
        return self.session.csrf_token if self.session else ""


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_db(request: Request) -> Iterator[Session]:
    """One SQLAlchemy session per request; endpoints that write commit themselves."""
    with Session(request.app.state.engine, expire_on_commit=False) as db:
        yield db


Db = Annotated[Session, Depends(get_db)]


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


# --- sessions --------------------------------------------------------------------------


def start_session(db: Session, user: User, old_token: str | None) -> str:
    """A fresh session id for `user` (rotated at every login); the old one is dropped."""
    if old_token:
        db.execute(delete(WebSession).where(WebSession.id == users.sha256_hex(old_token)))
    token = secrets.token_urlsafe(32)
    db.add(WebSession(id=users.sha256_hex(token), user_id=user.id, csrf_token=secrets.token_urlsafe(32)))
    return token


def end_session(db: Session, token: str | None) -> None:
    if token:
        db.execute(delete(WebSession).where(WebSession.id == users.sha256_hex(token)))


def session_user(db: Session, token: str, idle: timedelta) -> tuple[User, WebSession] | None:
    row = db.get(WebSession, users.sha256_hex(token))
    if row is None:
        return None
    now = utcnow()
    user = db.get(User, row.user_id)
    if user is None or user.disabled or now - row.last_seen > idle:
        db.delete(row)
        db.commit()
        return None
    if now - row.last_seen > TOUCH_EVERY:
        row.last_seen = now
        db.commit()
    return user, row


def cookie_secure(request: Request, settings: Settings) -> bool:
    return settings.secure_cookies or request.url.scheme == "https"


def set_session_cookie(response: Response, request: Request, token: str) -> None:
    response.set_cookie(
        COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=cookie_secure(request, settings_of(request)),
        path="/",
    )


# --- resolving the caller -------------------------------------------------------------


def _basic(db: Session, request: Request, value: str) -> User | None:
    try:
        name, _, password = base64.b64decode(value, validate=True).decode().partition(":")
    except ValueError:  # not base64 (binascii.Error), not ASCII, not UTF-8 (UnicodeDecodeError)
        return None
    s = settings_of(request)
    try:
        user = users.login(db, name, password, client_address(request), s.login_max_failures, s.login_lockout_minutes)
    except users.UserError as e:
        db.commit()
        raise HTTPException(429, str(e)) from None
    db.commit()
    return user


def resolve(request: Request, db: Session) -> Principal | None:
    """The caller, from Authorization (Bearer token or Basic) or else the session cookie."""
    token = bearer_token(request)
    if token is not None:
        user = users.user_for_token(db, token)
        db.commit()
        return Principal(user, "token") if user else None
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "basic" and value.strip():
        user = _basic(db, request, value.strip())
        return Principal(user, "basic") if user else None
    token = request.cookies.get(COOKIE)
    if token:
        found = session_user(db, token, timedelta(minutes=settings_of(request).session_idle_minutes))
        if found:
            return Principal(found[0], "session", found[1])
    return None


def optional_principal(request: Request, db: Db) -> Principal | None:
    return resolve(request, db)


def _principal(request: Request, db: Db) -> Principal:
    principal = resolve(request, db)
    if principal is None:
        raise NotAuthenticated()
    request.state.principal = principal
    return principal


async def check_csrf(request: Request, principal: Principal, *, read_form: bool = True) -> None:
    """Synchronizer token on every state-changing request of a cookie session (in the header, or a form
    field unless `read_form` is False: a body that is not for reading as a form, e.g. an upload)."""
    if principal.via != "session" or request.method not in UNSAFE_METHODS:
        return
    sent = request.headers.get(CSRF_HEADER)
    if (
        sent is None
        and read_form
        and request.headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data")
        )
    ):
        value = (await request.form()).get(CSRF_FIELD)
        sent = value if isinstance(value, str) else None
    if not sent or not same_secret(sent, principal.csrf_token):
        raise HTTPException(403, "missing or wrong CSRF token: reload the page and try again")


async def current_caller(request: Request, principal: Annotated[Principal, Depends(_principal)]) -> Principal:
    """Any signed-in role, `client` included: only for what a client may do (its own items and tokens)."""
    await check_csrf(request, principal)
    return principal


async def current_user(principal: Annotated[Principal, Depends(current_caller)]) -> Principal:
    """A reviewer or an admin: every route but the few a `client` may use (deny by default)."""
    if principal.is_client:
        raise HTTPException(403, "a client account may only call POST /api/moderate and read the items it sent")
    return principal


async def current_admin(principal: Annotated[Principal, Depends(current_user)]) -> Principal:
    if not principal.is_admin:
        raise HTTPException(403, "only admins may do this")
    return principal


SignedIn = Annotated[Principal, Depends(_principal)]  # no CSRF check yet: the route does its own
CurrentCaller = Annotated[Principal, Depends(current_caller)]
CurrentUser = Annotated[Principal, Depends(current_user)]
CurrentAdmin = Annotated[Principal, Depends(current_admin)]
