"""`moderator serve`: the review UI, the JSON API, /healthz and /metrics."""

from __future__ import annotations

from typing import Annotated

import typer

from moderator.cli.common import DatabaseOpt, make_settings, open_store


def serve(
    host: Annotated[
        str, typer.Option(help="Address to listen on (put a TLS proxy in front for anything public).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    no_deliver: Annotated[
        bool,
        typer.Option("--no-deliver", help="Do not deliver decision events here (run `moderator deliver` instead)."),
    ] = False,
    database_url: DatabaseOpt = None,
) -> None:
    """Serve the review UI and API (create a first admin with `moderator users add NAME --role admin`)."""
    import uvicorn

    from moderator.review.app import create_app, proxy_options

    settings = make_settings(database_url=database_url)
    app = create_app(settings, open_store(settings, create=True, announce=True), deliver=not no_deliver)
    # Forwarded headers only from MODERATOR_TRUSTED_PROXIES (else MODERATOR_SECURE_COOKIES behind TLS).
    uvicorn.run(app, host=host, port=port, **proxy_options(settings))
