"""A real webhook receiver on 127.0.0.1 that verifies every request with standardwebhooks.

It can fail the first N requests (HTTP 500), hold a request for a while, be stopped (the
port then refuses connections) and started again on the same port.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError


class Receiver:
    def __init__(self, *, fail_first: int = 0, hold_first_s: float = 0.0, hold_s: float = 0.0) -> None:
        self.secret: str | None = None
        self.fail_first = fail_first
        self.hold_first_s = hold_first_s
        self.hold_s = hold_s
        self.lock = threading.Lock()
        self.requests = 0
        self.accepted: list[dict[str, Any]] = []  # bodies answered 2xx, in arrival order
        self.bad: list[str] = []  # requests whose signature did not verify
        self.broken = 0  # requests cut short by the sender (killed mid-request)
        self.inflight: Counter[str] = Counter()
        self.max_inflight = 0  # the most requests for ONE event id at the same time
        self.first_arrived = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self.port = 0
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def ids(self) -> list[str]:
        with self.lock:
            return [b["data"]["id"] for b in self.accepted]

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                receiver.handle(self)

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("content-length", "0"))
        body = h.rfile.read(length)
        headers = {k.lower(): v for k, v in h.headers.items()}
        if len(body) < length:  # the sender died mid-request: not a signature problem
            with self.lock:
                self.broken += 1
            return
        try:
            assert self.secret is not None
            payload = Webhook(self.secret).verify(body, headers)
        except (WebhookVerificationError, AssertionError) as e:
            with self.lock:
                self.bad.append(f"{headers.get('webhook-id')}: {e}")
            self._answer(h, 400)
            return
        event_id = payload["data"]["id"]
        assert headers["webhook-id"] == event_id
        with self.lock:
            self.requests += 1
            n = self.requests
            self.inflight[event_id] += 1
            self.max_inflight = max(self.max_inflight, self.inflight[event_id])
        self.first_arrived.set()
        try:
            if n <= self.fail_first:
                self._answer(h, 500)
                return
            time.sleep(self.hold_first_s if n == 1 else self.hold_s)
            self._answer(h, 204)
            with self.lock:
                self.accepted.append(payload)
        finally:
            with self.lock:
                self.inflight[event_id] -= 1

    @staticmethod
    def _answer(h: BaseHTTPRequestHandler, status: int) -> None:
        try:
            h.send_response(status)
            h.send_header("content-length", "0")
            h.end_headers()
        except OSError:
            pass  # the sender is gone (killed mid-request)


def wait_until(cond: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def body_json(b: bytes) -> Any:
    return json.loads(b)
