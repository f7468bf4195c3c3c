"""What an S3 event body and its events must pass before anything acts on them (pure).

- `nesting_depth`: how deep a JSON text nests, found without parsing (no recursion), so a
  hostile body nested 200,000 levels is refused before `json.loads` recurses on it.
- `allowed`: the operator's bucket/prefix allow-list (setting `s3_event_allow`), obeyed by
  the webhook and the SQS listener alike; an empty list allows every bucket.
"""

from __future__ import annotations

import re
from itertools import accumulate
from typing import Protocol

from moderator.settings import Settings

MAX_DEPTH = 32  # an S3 notification nests 5 levels; SNS wraps the body as a string
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


def nesting_depth(text: str | bytes) -> int:
    """The deepest nesting of arrays and objects in a JSON text (brackets inside strings ignored)."""
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    brackets = _STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    return max(accumulate(_STEP[b] for b in brackets), default=0)


def allow_entry(entry: str) -> tuple[str, str]:
    """(bucket, key prefix) of one allow-list entry: ``bucket``, ``bucket/prefix`` or ``s3://bucket/prefix``."""
    bucket, _, prefix = entry.strip().removeprefix("s3://").partition("/")
    if not bucket:
        raise ValueError(f"s3_event_allow entry {entry!r} names no bucket (expected bucket or bucket/prefix)")
    return bucket, prefix


def key_allowed(bucket: str, key: str, allow: list[str]) -> bool:
    """True when `allow` is empty or one entry's bucket is `bucket` and its prefix starts `key` (literally, as S3)."""
    if not allow:
        return True
    return any(b == bucket and key.startswith(p) for b, p in map(allow_entry, allow))


class _Located(Protocol):
    # an S3Event (parse.py imports this module, so the type is structural)
    @property
    def bucket(self) -> str: ...
    @property
    def key(self) -> str: ...


def allowed(event: _Located, settings: Settings) -> bool:
    return key_allowed(event.bucket, event.key, settings.s3_event_allow)
