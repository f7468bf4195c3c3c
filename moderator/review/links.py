"""Links and redirects built from what a caller sent (?next=, ?back=, form fields): same-site paths only.

Browsers read ``\\`` as ``/`` and drop tabs and newlines inside URLs, so ``/\\evil.com`` and
``/\\t/evil.com`` lead off-site although they start with one slash. A target is kept only
when it is a plain absolute path: one leading ``/``, no backslash, no control character or
whitespace, no scheme or host; anything else becomes the default.
"""

from __future__ import annotations

from urllib.parse import urlsplit

MAX_TARGET = 2048


def same_site_path(target: str) -> bool:
    if not target.startswith("/") or len(target) > MAX_TARGET:
        return False
    if target.startswith("//") or "\\" in target or any(c <= " " or c == "\x7f" for c in target):
        return False
    parts = urlsplit(target)
    return not parts.scheme and not parts.netloc


def safe_next(target: str, default: str = "/queue") -> str:
    """`target` when it is a same-site path, else `default` (no open redirect)."""
    return target if same_site_path(target) else default
