"""Search in the API (and for the review UI): stored items by text, by example image, or like an item.

    GET  /api/search?q=a+red+car&k=20        text (CLIP text encoder)
    GET  /api/search?sha256=HEX&k=20         "more like this": the item's own embedding, itself left out
    POST /api/search/image  (multipart file)  an example image

Exact cosine over the stored embeddings of the configured model (moderator.engine.search);
the index is kept per app and reloaded when new embeddings are stored.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, UploadFile
from pydantic import BaseModel

from moderator.engine.search import Hit, SearchIndex
from moderator.review.auth import CurrentUser, settings_of

router = APIRouter(prefix="/api", tags=["search"])
TopK = Annotated[int, Query(ge=1, le=500, description="How many results.")]


class HitOut(BaseModel):
    sha256: str
    score: float
    uris: list[str]


def _index(request: Request) -> SearchIndex:
    from moderator.models import model_id_for

    model_id = model_id_for(settings_of(request))
    cache: dict[str, SearchIndex] | None = getattr(request.app.state, "search_indexes", None)
    if cache is None:
        cache = request.app.state.search_indexes = {}
    if model_id not in cache:
        cache[model_id] = SearchIndex(request.app.state.store, model_id)
    return cache[model_id]


def _out(hits: list[Hit]) -> list[HitOut]:
    return [HitOut(sha256=h.sha256, score=h.score, uris=h.uris) for h in hits]


@router.get("/search", response_model=list[HitOut])
def search(
    request: Request, principal: CurrentUser, q: str | None = None, sha256: str | None = None, k: TopK = 20
) -> list[HitOut]:
    """Items most similar to a text (q) or to a stored item (sha256), best first."""
    from moderator.engine.search import item_query, text_query
    from moderator.errors import ScorerUnavailable

    if (q is None) == (sha256 is None):
        raise HTTPException(422, "give exactly one of q or sha256")
    index = _index(request)
    if sha256 is not None:
        query = item_query(index.store, index.model_id, sha256.lower())
        if query is None:
            raise HTTPException(404, f"no stored embedding of {index.model_id} for that sha256")
        return _out(index.search(query, k, exclude=sha256.lower()))
    if not q or len(q) > 1000:
        raise HTTPException(422, "q must be 1 to 1000 characters")
    try:
        query = text_query(settings_of(request), q)
    except ScorerUnavailable as e:
        raise HTTPException(503, str(e)) from None
    return _out(index.search(query, k))


@router.post("/search/image", response_model=list[HitOut])
async def search_image(request: Request, principal: CurrentUser, file: UploadFile, k: TopK = 20) -> list[HitOut]:
    """Items that look like an uploaded example image."""
    from starlette.concurrency import run_in_threadpool

    from moderator.engine.prepare import items_from_bytes
    from moderator.engine.search import image_query
    from moderator.errors import ScorerUnavailable

    settings = settings_of(request)
    data = await file.read(settings.max_image_bytes + 1)
    if len(data) > settings.max_image_bytes:
        raise HTTPException(413, f"image larger than {settings.max_image_bytes} bytes")
    index = _index(request)
    upload = items_from_bytes([("the upload", data)])[0]
    try:
        query = await run_in_threadpool(image_query, settings, upload, index.store)
    except ScorerUnavailable as e:
        raise HTTPException(503, str(e)) from None
    except ValueError as e:
        raise HTTPException(422, str(e)) from None
    return _out(await run_in_threadpool(index.search, query, k))
