"""Presented credentials: the one reading of `Authorization: Bearer`, the one constant-time comparison.

Used by user API tokens (auth), the /metrics token and the S3 webhook secret, and by every
CSRF check. Header values reach us decoded as latin-1 and may hold any byte; comparing
bytes (never str, which `hmac.compare_digest` refuses beyond ASCII) keeps every such value
a plain mismatch, never an error.
"""

from __future__ import annotations

import hmac

from pydantic import SecretStr
from starlette.requests import HTTPConnection


def same_secret(presented: str, expected: str) -> bool:
    """Constant-time equality of two texts, whatever characters they hold."""
    return hmac.compare_digest(presented.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass"))


def bearer_token(request: HTTPConnection) -> str | None:
    """The token of `Authorization: Bearer <token>` (scheme case-insensitive), else None."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    token = value.strip()
    return token if scheme.lower() == "bearer" and token else None


def bearer_matches(request: HTTPConnection, secret: SecretStr | None) -> bool:
    """True when the request carries `Authorization: Bearer <secret>`; never for an unset or empty secret."""
    expected = secret.get_secret_value() if secret is not None else ""
    presented = bearer_token(request)
    return bool(expected) and presented is not None and same_secret(presented, expected)
