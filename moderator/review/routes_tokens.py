"""Personal API tokens: the account page (make, list, revoke your own) and /api/tokens.

A user lists and revokes their own tokens; an admin anyone's. Another user's token id
reads as unknown (404) to a non-admin, so ids reveal nothing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import BaseModel

from moderator.review import users
from moderator.review.auth import CurrentCaller, Db, Principal
from moderator.review.params import TokenId
from moderator.review.templates import render
from moderator.store.tables import ApiToken

pages = APIRouter(include_in_schema=False)
api = APIRouter(prefix="/api", tags=["tokens"])


class TokenOut(BaseModel):
    id: int
    user: str
    label: str
    created_at: datetime
    last_used: datetime | None
    revoked: bool


def token_out(token: ApiToken, owner: str) -> TokenOut:
    return TokenOut(
        id=token.id,
        user=owner,
        label=token.label,
        created_at=token.created_at,
        last_used=token.last_used,
        revoked=token.revoked,
    )


def _revoke(db: Db, token_id: int, principal: Principal) -> TokenOut:
    try:
        token, owner = users.revoke_token(db, token_id, principal.user)
    except users.UserError as e:
        raise HTTPException(404, str(e)) from None
    db.commit()
    return token_out(token, owner)


@api.get("/tokens", response_model=list[TokenOut])
def list_tokens(
    db: Db,
    principal: CurrentCaller,
    user: Annotated[
        str | None, Query(max_length=64, description="Whose tokens (admins only); yours by default.")
    ] = None,
) -> list[TokenOut]:
    """Your API tokens, newest first (an admin may name any user)."""
    name = user or principal.user.name
    if name != principal.user.name and not principal.is_admin:
        raise HTTPException(403, "only admins may list other users' tokens")
    try:
        return [token_out(t, owner) for t, owner in users.list_tokens(db, name)]
    except users.UserError as e:
        raise HTTPException(404, str(e)) from None


@api.delete("/tokens/{token_id}", response_model=TokenOut)
def revoke_token(token_id: TokenId, db: Db, principal: CurrentCaller) -> TokenOut:
    """Revoke one of your tokens (an admin: anyone's); it stops working at once."""
    return _revoke(db, token_id, principal)


def _account(request: Request, principal: Principal, db: Db, new_token: str | None = None) -> HTMLResponse:
    tokens = [t for t, _ in users.list_tokens(db, principal.user.name)]
    return render(request, "account.html", principal, new_token=new_token, tokens=tokens)


@pages.get("/account", response_class=HTMLResponse)
def account(request: Request, principal: CurrentCaller, db: Db) -> HTMLResponse:
    return _account(request, principal, db)


@pages.post("/account/tokens", response_class=HTMLResponse)
def new_token(
    request: Request, principal: CurrentCaller, db: Db, label: Annotated[str, Form(max_length=128)] = ""
) -> HTMLResponse:
    if principal.via != "session":
        raise HTTPException(403, "API tokens are made from a browser session or the CLI")
    token = users.create_token(db, principal.user.name, label)
    db.commit()
    return _account(request, principal, db, new_token=token)


@pages.post("/account/tokens/{token_id}/revoke")
def revoke_from_page(token_id: TokenId, principal: CurrentCaller, db: Db) -> RedirectResponse:
    _revoke(db, token_id, principal)
    return RedirectResponse("/account", status_code=303)
