"""The review server: `create_app(settings)` builds the FastAPI app.

Every route but /healthz (and the S3 webhook, which has its own shared-secret auth)
needs a login. Security headers are set on every response by a plain ASGI middleware.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import moderator.store.tables  # noqa: F401  (every table joins Base.metadata)
from moderator.review import (
    auth,
    routes_admin,
    routes_api,
    routes_auth,
    routes_dashboard,
    routes_meta,
    routes_moderate,
    routes_pages,
    routes_tokens,
    search_routes,
)
from moderator.review.params import ERROR_RESPONSES
from moderator.review.templates import HERE, render
from moderator.settings import Settings

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


class SecurityHeaders:
    """Adds the security headers to every HTTP response (errors and static files too)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in SECURITY_HEADERS if k not in names]
                message["headers"] = list(message.get("headers", [])) + extra
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _wants_html(request: Request) -> bool:
    return not request.url.path.startswith("/api") and "text/html" in request.headers.get("accept", "")


async def _not_authenticated(request: Request, exc: Exception) -> Response:
    if _wants_html(request) and request.method == "GET":
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={_quote(target)}", status_code=303)
    return JSONResponse(
        {"detail": "login required"}, status_code=401, headers={"WWW-Authenticate": 'Basic realm="moderator"'}
    )


def _quote(path: str) -> str:
    from urllib.parse import quote

    return quote(path, safe="")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if _wants_html(request):
        principal = getattr(request.state, "principal", None)
        return render(request, "error.html", principal, status_code=exc.status_code, message=exc.detail)
    detail: Any = exc.detail
    if exc.status_code == 422 and isinstance(detail, str):
        # Every 422 has the one documented shape (OpenAPI HTTPValidationError), ours as FastAPI's.
        detail = [{"loc": [], "msg": detail, "type": "value_error"}]
    return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=exc.headers)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    # No input echoed back: a hostile value must not come back in the body.
    errors = [
        {
            "loc": [p if isinstance(p, int) else str(p) for p in e.get("loc", ())],
            "msg": e.get("msg", ""),
            "type": e.get("type", "value_error"),
        }
        for e in exc.errors()
    ]
    if _wants_html(request):
        principal = getattr(request.state, "principal", None)
        message = "; ".join(f"{'.'.join(map(str, e['loc'][1:])) or 'request'}: {e['msg']}" for e in errors)
        return render(request, "error.html", principal, status_code=422, message=message)
    return JSONResponse({"detail": errors}, status_code=422)


def _include_webhook(app: FastAPI, settings: Settings) -> None:
    try:
        from moderator.review.routes_hooks import router, webhook_settings
    except ImportError:
        return
    app.include_router(router)
    app.dependency_overrides[webhook_settings] = lambda: settings  # the app's settings, not a fresh read


def proxy_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's forwarded-header options (`moderator serve`): X-Forwarded-For/-Proto are believed only
    from the operator's trusted_proxies, so a client cannot pick the address the login limit counts."""
    if not settings.trusted_proxies:
        return {"proxy_headers": False, "forwarded_allow_ips": []}
    return {"proxy_headers": True, "forwarded_allow_ips": list(settings.trusted_proxies)}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """What runs beside the server: the moderation service (policies and models loaded now, not on a request)."""
    if app.state.settings.moderate_api:
        routes_moderate.start_service(app)
    delivering = None
    if app.state.deliver:  # issue 14 (B): `moderator serve` delivers decision events unless --no-deliver
        from moderator.actions.deliver import start_in_thread

        delivering = start_in_thread(app.state.store, app.state.settings)
    try:
        yield
    finally:
        if delivering is not None:
            thread, stop = delivering
            stop.set()
            thread.join(timeout=app.state.settings.webhook_timeout_s + 5)
        await routes_moderate.stop_service(app)


def create_app(settings: Settings, store: Any = None, *, deliver: bool = False) -> FastAPI:
    """The review app on `settings.database_url` (or on an open `store`); `deliver`: run the
    decision-event deliverer (actions/deliver.py) on a thread while the app runs."""
    from moderator.store import Store

    store = store or Store(settings.database_url)
    app = FastAPI(
        title="moderator",
        summary="Review flagged images; enqueue scans; look up items and decisions.",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,  # served by routes_meta behind a login
        responses=ERROR_RESPONSES,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.store = store
    app.state.deliver = deliver
    app.state.engine = store.engine
    app.state.metrics = routes_meta.Metrics()
    app.add_exception_handler(auth.NotAuthenticated, _not_authenticated)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    for module in (routes_meta, routes_auth, routes_pages, routes_admin, routes_api, search_routes, routes_moderate):
        app.include_router(module.router)
    app.include_router(routes_dashboard.router)  # issue 18: GET /dashboard
    app.include_router(search_routes.pages)  # issue 18: GET/POST /search, the search page
    app.include_router(routes_tokens.pages)
    app.include_router(routes_tokens.api)
    from moderator.review import routes_appeals, routes_work  # issue 18: leases, undo, hash list, appeals

    app.include_router(routes_work.api)
    app.include_router(routes_work.pages)
    app.include_router(routes_appeals.api)
    app.include_router(routes_appeals.pages)
    _include_webhook(app, settings)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.add_middleware(SecurityHeaders)
    return app
