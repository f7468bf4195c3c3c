"""Bounds of the values callers send, declared once: out of range is a 422, never a 500;
and the one shape of every other error answer, ``{"detail": "..."}``.

Database ids are signed 64-bit on SQLite and PostgreSQL; a larger number cannot name a
row and would overflow the driver, so it is refused before any query.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path
from pydantic import BaseModel, Field

MAX_DB_ID = 2**63 - 1
MAX_JOB_ID = 64

DbId = Annotated[int, Field(ge=1, le=MAX_DB_ID)]
ItemId = Annotated[int, Path(ge=1, le=MAX_DB_ID, description="An item id.")]
TokenId = Annotated[int, Path(ge=1, le=MAX_DB_ID, description="An API token id.")]
JobId = Annotated[str, Path(min_length=1, max_length=MAX_JOB_ID, description="A job id.")]


class ErrorOut(BaseModel):
    detail: str


# Documented on every operation (422 keeps FastAPI's validation array).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (400, 401, 403, 404, 413, 429, 503)
}
