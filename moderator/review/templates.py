"""Server-rendered pages: Jinja2 with autoescape on, so stored metadata is always escaped."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from moderator.review.auth import CSRF_FIELD, Principal

HERE = Path(__file__).resolve().parent
TEMPLATES = Jinja2Templates(directory=HERE / "templates")
TEMPLATES.env.autoescape = True  # every template, whatever its file name


def render(
    request: Request, name: str, principal: Principal | None, status_code: int = 200, **context: Any
) -> HTMLResponse:
    context.update(user=principal.user if principal else None, csrf_token=principal.csrf_token if principal else "")
    context.setdefault("csrf_field", CSRF_FIELD)
    return TEMPLATES.TemplateResponse(request, name, context, status_code=status_code)


def _replace_page(params: Any, page: int) -> str:
    """The current query string with another page number."""
    pairs = [(k, v) for k, v in params.multi_items() if k != "page"] + [("page", str(page))]
    return urlencode(pairs)


TEMPLATES.env.filters["replace_page"] = _replace_page
