"""What the item page says about an item, as people read it: times, sizes and places, not raw fields.

Pure functions over a stored item (its `meta` as the sources and the decoder wrote it) and
its results; empty values are dropped, unknown keys are kept with a readable name.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from moderator.types import Action

_FLAGGED = (Action.REVIEW.value, Action.BLOCK.value)
# Shown elsewhere on the page (the frame strip) or folded into another line below.
_FOLDED = {"frame_times", "format", "width", "height", "frames", "bucket", "key", "size", "archive", "member", "inside"}
_NAMES = {
    "mtime_ns": "Modified",
    "last_modified": "Modified",
    "etag": "ETag",
    "version_id": "S3 version",
    "occurrence": "Occurrence in the archive",
    "duration": "Duration",
}


def when(value: datetime | str | int | float | None) -> str | None:
    """A time as 'YYYY-MM-DD HH:MM UTC' (datetime, ISO text, or nanoseconds since the epoch)."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        at = datetime.fromtimestamp(value / 1e9, UTC)
    elif isinstance(value, str):
        try:
            at = datetime.fromisoformat(value)
        except ValueError:
            return value
    else:
        at = value
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def size(n: int | float | None) -> str | None:
    """Bytes as people read them: '1.4 MB' (decimal units), '812 bytes'."""
    if n is None:
        return None
    n = float(n)
    if n < 1000:
        return f"{int(n)} bytes"
    for unit in ("kB", "MB", "GB", "TB"):
        n /= 1000
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if n < 100 else f"{n:.0f} {unit}"
    return None  # pragma: no cover


def _plain(value: Any) -> str | None:
    if value is None or value == "" or value == [] or value == {}:
        return None
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value if v not in (None, "")) or None
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items() if v not in (None, "")) or None
    return str(value)


def describe(item: Any) -> list[tuple[str, str]]:
    """(label, text) lines about `item`, in reading order, without empty ones."""
    meta: dict[str, Any] = dict(item.meta or {})
    lines: list[tuple[str, str | None]] = []
    if meta.get("bucket") and meta.get("key"):
        lines.append(("S3 object", f"bucket {meta['bucket']}, key {meta['key']}"))
    if meta.get("archive"):
        path = [str(meta["archive"]), *map(str, meta.get("inside") or [])]
        lines.append(("In archive", " › ".join(path)))
        lines.append(("Member", _plain(meta.get("member"))))
    picture = ", ".join(
        p
        for p in (
            _plain(meta.get("format")),
            f"{meta['width']} × {meta['height']} px" if meta.get("width") and meta.get("height") else None,
            f"{meta['frames']} frames" if isinstance(meta.get("frames"), int) and meta["frames"] > 1 else None,
        )
        if p
    )
    lines.append(("Image", picture or None))
    lines.append(("Size", size(item.size if item.size is not None else meta.get("size"))))
    for key, value in meta.items():
        if key in _FOLDED:
            continue
        name = _NAMES.get(key) or key.replace("_", " ").capitalize()
        if key in ("mtime_ns", "last_modified"):
            text = when(value)
        elif key == "duration" and isinstance(value, int | float):
            text = f"{value:.1f} s"
        else:
            text = _plain(value)
        lines.append((name, text))
    lines.append(("First stored", when(getattr(item, "created_at", None))))
    lines.append(("Last scanned", when(getattr(item, "updated_at", None))))
    return [(k, v) for k, v in lines if v]


def score_rows(result: Any) -> list[dict[str, Any]]:
    """A result's classes, highest score first, each with the threshold it fired at (None: did not fire)."""
    fired = {str(f.get("name")): f for f in result.fired or ()}
    rows = []
    for name, score in sorted((result.scores or {}).items(), key=lambda kv: (-float(kv[1]), kv[0])):
        f = fired.get(name)
        rows.append(
            {
                "name": name,
                "score": float(score),
                "threshold": float(f["threshold"]) if f and f.get("threshold") is not None else None,
                "action": str(f.get("action")) if f else None,
                "flagged": bool(f and f.get("action") in _FLAGGED),
            }
        )
    return rows
