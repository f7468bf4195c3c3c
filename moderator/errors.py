"""Errors shared across layers (the bottom layer: imports nothing of moderator)."""

from __future__ import annotations


class ScorerUnavailable(Exception):
    """The scorer cannot run here (weights or package missing). One-line message: what and how to fix."""


class SourceError(Exception):
    """A source cannot be listed or read (no bucket, access denied, no credentials, endpoint down).

    One-line message: the target, what went wrong and how to fix it; the CLI prints it as is.
    """


class SourceUnavailable(SourceError, ConnectionError):
    """A source failure that may pass (endpoint down, throttled, 5xx): whoever retries, retries it.

    A ConnectionError too, so retry logic that knows connection failures treats it as one.
    """
