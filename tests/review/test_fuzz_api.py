"""A bounded schemathesis run against the app's own OpenAPI schema, as a logged-in admin.

Every operation of /openapi.json gets generated requests, valid and invalid; the run fails
on any 5xx, on a status code the schema does not document, and on a body that does not
match the documented schema (a 422 whose detail is not the validation array, say). Bounded
by hypothesis settings so the whole file takes about a minute.
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import update
from sqlalchemy.orm import Session

from moderator.review import users
from moderator.review.app import create_app
from moderator.review.routes_hooks import event_handler
from moderator.s3events.handler import EventHandler
from moderator.store.tables import ApiToken

from .conftest import seed_store
from .helpers import Seeded

pytestmark = pytest.mark.slow
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES = 25  # per operation and phase
WEBHOOK_SECRET = "fuzz-webhook-secret"


class Fuzzed:
    def __init__(self, seeded: Seeded, token: str) -> None:
        self.seeded = seeded
        self.token = token
        self.headers = {"Authorization": f"Bearer {token}"}

    def keep_token(self) -> None:
        """The fuzzer may DELETE /api/tokens/{id} with our own id: un-revoke it so the run stays logged in."""
        with Session(self.seeded.store.engine) as db:
            db.execute(
                update(ApiToken).where(ApiToken.token_hash == users.sha256_hex(self.token)).values(revoked=False)
            )
            db.commit()


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Fuzzed:
    root: Path = tmp_path_factory.mktemp("fuzz")
    seeded = seed_store(
        f"sqlite:///{root / 'fuzz.db'}",
        root / "images",
        model="test-tiny",
        pretrained="none",
        device="cpu",
        login_max_failures=1000,
        webhook_secret=WEBHOOK_SECRET,
    )
    with Session(seeded.store.engine) as db:
        token = users.create_token(db, "adam", "fuzz")
        db.commit()
    return Fuzzed(seeded, token)


class Enqueued(list[list[str]]):
    """The job queue at the webhook's edge: records what it was sent (no broker, no S3 listing)."""

    def __call__(self, uris: list[str]) -> str:
        self.append(list(uris))
        return f"job-{len(self)}"


@pytest.fixture(scope="module")
def api_schema(fuzzed: Fuzzed) -> Any:
    app = create_app(fuzzed.seeded.settings, fuzzed.seeded.store)
    app.dependency_overrides[event_handler] = lambda: EventHandler(fuzzed.seeded.store, Enqueued())
    with TestClient(app) as client:  # the first search loads the (tiny) text model: not within a fuzz timeout
        assert client.get("/api/search", params={"q": "warm up"}, headers=fuzzed.headers).status_code == 200
    return schemathesis.openapi.from_asgi("/openapi.json", app, headers=fuzzed.headers)


def _fuzz(operation: Any, mode: GenerationMode, fuzzed: Fuzzed) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
    )
    def run(case: Any) -> None:
        fuzzed.keep_token()
        headers = {"Authorization": f"Bearer {WEBHOOK_SECRET}"} if operation.path == "/hooks/s3" else fuzzed.headers
        case.call_and_validate(headers=headers, checks=CHECKS)

    run()


# schemathesis' own pytest wiring (schema.parametrize) does not run on pytest 9: the operations are driven here.
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_operation_answers_as_documented(api_schema: Any, fuzzed: Fuzzed, mode: GenerationMode) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 12, [op.label for op in operations]  # the whole API, not a stub
    failures = []
    for operation in operations:
        try:
            _fuzz(operation, mode, fuzzed)
        except Exception as exc:  # noqa: BLE001  (each operation's failure is reported, the others still run)
            failures.append(f"{operation.label}: {''.join(traceback.format_exception(exc))[-4000:]}")
    assert not failures, "\n\n".join(failures)
