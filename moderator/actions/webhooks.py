"""The webhook performer: registered endpoints, their filters, and signed POSTs.

Bodies are signed with the Standard Webhooks scheme through the `standardwebhooks` library
(headers webhook-id = the event id, webhook-timestamp, webhook-signature), so a receiver
verifies with `standardwebhooks.Webhook(secret).verify(body, headers)` or any port of it.
Redirects are not followed (a 3xx is a failure), and an endpoint's host is resolved and
checked again before every request (not only when it is added), so an endpoint cannot be
pointed at a private address later through DNS.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from moderator.actions.events import Event
from moderator.actions.performers import PerformError
from moderator.types import Action

if TYPE_CHECKING:
    import httpx

    from moderator.settings import Settings
    from moderator.store import Store
    from moderator.store.deliveries import EndpointInfo

KIND = "webhook"
USER_AGENT = "moderator-webhooks/1"


class UrlRefused(ValueError):
    """An endpoint URL moderator will not call."""


def check_url(url: str, *, allow_private: bool) -> None:
    """Refuse what is not http(s) with a host, and (unless allowed) any host that resolves to a
    private, loopback, link-local or otherwise non-public address."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UrlRefused(f"{url!r} is not an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise UrlRefused("an endpoint URL must not carry a user name or password")
    if allow_private:
        return
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    except OSError as e:
        raise UrlRefused(f"cannot resolve {parts.hostname}: {e}") from None
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if not address.is_global:
            raise UrlRefused(
                f"{parts.hostname} resolves to {address}, a private or loopback address: refused"
                " (set MODERATOR_WEBHOOK_ALLOW_PRIVATE=true to allow it)"
            )


def matches(endpoint: EndpointInfo, event: Event) -> bool:
    """Whether an endpoint's filters (empty: everything) want an event.

    decisions: the event's decision or the one it replaces is listed (so an endpoint for
    blocks hears when a block is lifted). policies: a listed policy fired in the event, or
    the event lowers the decision of an item a listed policy judged.
    """
    if endpoint.events and event.type not in endpoint.events:
        return False
    if endpoint.decisions:
        named = {event.decision, event.previous_decision} - {None}
        if not any(str(d) in endpoint.decisions for d in named):
            return False
    if endpoint.policies:
        judged = [p for p in event.policies if p.policy in endpoint.policies]
        fired = any(p.fired or p.action is not Action.ALLOW for p in judged)
        new = (event.decision or Action.ALLOW).severity
        old = (event.previous_decision or Action.ALLOW).severity
        if not (fired or (judged and new < old)):
            return False
    return True


class WebhookPerformer:
    kind = KIND

    def __init__(self, settings: Settings, store: Store) -> None:
        import httpx

        self.settings = settings
        self.store = store
        self.endpoints: dict[str, EndpointInfo] = {}
        timeout = settings.webhook_timeout_s
        self.client: httpx.Client = httpx.Client(
            timeout=httpx.Timeout(timeout), follow_redirects=False, headers={"user-agent": USER_AGENT}
        )

    def refresh(self) -> None:
        from moderator.store.deliveries import list_endpoints

        self.endpoints = {str(e.id): e for e in list_endpoints(self.store, enabled_only=True)}

    def targets(self, event: Event) -> list[str]:
        return [key for key, ep in self.endpoints.items() if matches(ep, event)]

    def perform(self, target: str, event: Event) -> int | None:
        from standardwebhooks import Webhook

        endpoint = self.endpoints.get(target)
        if endpoint is None:
            self.refresh()
            endpoint = self.endpoints.get(target)
        if endpoint is None:
            raise PerformError(f"endpoint {target} was removed or disabled", retry=False)
        try:
            check_url(endpoint.url, allow_private=self.settings.webhook_allow_private)
        except UrlRefused as e:
            raise PerformError(str(e), retry=False) from None
        body = json.dumps(event.body(), separators=(",", ":"), ensure_ascii=False)
        now = datetime.now(UTC)
        signature = Webhook(endpoint.secret).sign(event.id, now, body)
        headers = {
            "content-type": "application/json",
            "webhook-id": event.id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": signature,
        }
        try:
            response = self.client.post(endpoint.url, content=body.encode(), headers=headers)
        except Exception as e:  # connection refused, timeout, TLS: all retried
            raise PerformError(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__) from None
        if not 200 <= response.status_code < 300:
            raise PerformError(f"HTTP {response.status_code}", status=response.status_code)
        return response.status_code


def performer(settings: Settings, store: Store) -> WebhookPerformer:
    return WebhookPerformer(settings, store)
