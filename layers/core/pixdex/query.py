"""Search requests as users send them -> backend queries, and backend results -> the API's JSON shape."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from pixdex.document import DEFAULT_TENANT
from pixdex.errors import InvalidRequestError, NotFoundError
from pixdex.index.base import (
    FACET_NAMES,
    FacetName,
    Filters,
    Hit,
    ImageIndex,
    SearchQuery,
    SearchResult,
    SortOrder,
    VectorQuery,
)
from pixdex.settings import Settings
from pixdex.storage import ObjectStore

MAX_LIST_ITEMS = 20


@dataclass(frozen=True)
class SearchRequest:
    q: str | None = None
    filters: Filters = field(default_factory=Filters)
    facets: tuple[FacetName, ...] = ()
    size: int = 20
    cursor: str | None = None
    sort: SortOrder = "relevance"

    def to_query(self) -> SearchQuery:
        text = self.q.strip() if self.q else None
        return SearchQuery(
            text=text or None,
            filters=self.filters,
            facets=self.facets,
            size=self.size,
            cursor=self.cursor,
            # Without words there is no relevance to rank by; newest first is what people expect.
            sort=self.sort if text or self.sort != "relevance" else "newest",
        )


def split_list(raw: str | None, *, name: str) -> tuple[str, ...]:
    """API Gateway joins repeated query parameters with commas; accept both forms."""
    if not raw:
        return ()
    items = tuple(dict.fromkeys(p.strip() for p in raw.split(",") if p.strip()))
    if len(items) > MAX_LIST_ITEMS:
        raise InvalidRequestError(f"{name}: at most {MAX_LIST_ITEMS} values", field=name)
    return items


def parse_facets(raw: str | None) -> tuple[FacetName, ...]:
    names = split_list(raw, name="facets")
    unknown = [n for n in names if n not in FACET_NAMES]
    if unknown:
        raise InvalidRequestError(
            f"facets: unknown facet {unknown[0]!r}; expected any of {', '.join(FACET_NAMES)}", field="facets"
        )
    return tuple(n for n in FACET_NAMES if n in names)


class SearchService:
    """The read side of the API, shared by every route and every backend."""

    def __init__(self, settings: Settings, index: ImageIndex, store: ObjectStore) -> None:
        self.settings = settings
        self.index = index
        self.store = store

    def search(self, request: SearchRequest) -> dict[str, Any]:
        result = self.index.search(request.to_query())
        return self._shape(result)

    def document(self, doc_id: str, tenant: str) -> dict[str, Any]:
        """The stored document, or 404 — also for another tenant's id, which must look exactly like absence."""
        doc = self.index.get(doc_id)
        if doc is None or doc.get("tenant", DEFAULT_TENANT) != tenant:
            raise NotFoundError(f"no image with id {doc_id!r}", id=doc_id)
        return doc

    def image(self, doc_id: str, tenant: str) -> dict[str, Any]:
        doc = self.document(doc_id, tenant)
        out = {"id": doc_id, **doc}
        ttl = self.settings.presign_ttl_seconds
        out["original_url"] = self.store.presigned_get(doc["bucket"], doc["key"], ttl)
        out.update(self._derivative_urls(doc))
        return out

    def similar(self, doc_id: str, tenant: str, request: SearchRequest, field: str = "image_vector",
                min_similarity: float | None = None) -> dict[str, Any]:
        self.document(doc_id, tenant)
        vector = self.index.get_vectors(doc_id).get(field)
        if vector is None:
            raise NotFoundError(f"image {doc_id!r} has no {field} (not analysed yet?)", id=doc_id, field=field)
        filters = replace(request.filters, exclude_ids=(*request.filters.exclude_ids, doc_id))
        query = SearchQuery(
            vector=VectorQuery(field=field, vector=vector, k=request.size, min_similarity=min_similarity),
            filters=filters, facets=request.facets, size=request.size, cursor=request.cursor,
        )
        return self._shape(self.index.search(query))

    def duplicates(self, doc_id: str, tenant: str, max_distance: int, size: int) -> dict[str, Any]:
        """Exact copies (same SHA-256) and near copies (perceptual hash within max_distance bits)."""
        doc = self.document(doc_id, tenant)
        exact: list[Hit] = []
        near: list[Hit] = []
        scope = Filters(tenant=tenant, exclude_ids=(doc_id,))
        if doc.get("sha256"):
            exact = self.index.search(
                SearchQuery(filters=replace(scope, sha256=doc["sha256"]), size=size, sort="oldest")
            ).hits
        if doc.get("phash"):
            exact_ids = {h.id for h in exact}
            near = [h for h in self.index.near_duplicates(doc["phash"], max_distance, scope, size + len(exact))
                    if h.id not in exact_ids][:size]
        return {
            "id": doc_id,
            "sha256": doc.get("sha256"),
            "phash": doc.get("phash"),
            "max_distance": max_distance,
            "exact": [self._hit(h) for h in exact],
            "near": [self._hit(h) for h in near],
        }

    def stats(self, tenant: str) -> dict[str, Any]:
        scope = Filters(tenant=tenant)
        result = self.index.search(SearchQuery(filters=scope, facets=("labels", "format", "year"),
                                               facet_size=50, size=1, sort="newest"))
        return {
            "images": result.total,
            "facets": {name: [{"value": b.value, "count": b.count} for b in buckets]
                       for name, buckets in result.facets.items()},
            "index": self.index.stats(),
        }

    def _shape(self, result: SearchResult) -> dict[str, Any]:
        return {
            "hits": [self._hit(h) for h in result.hits],
            "total": result.total,
            "facets": {
                name: [{"value": b.value, "count": b.count} for b in buckets]
                for name, buckets in result.facets.items()
            },
            "next_cursor": result.next_cursor,
        }

    def _hit(self, hit: Hit) -> dict[str, Any]:
        doc = hit.doc
        out: dict[str, Any] = {
            "id": hit.id,
            "key": doc.get("key"),
            "score": hit.score,
            "source": hit.source,
            "name": doc.get("name"),
            "format": doc.get("format"),
            "width": doc.get("width"),
            "height": doc.get("height"),
            "bytes": doc.get("bytes"),
            "labels": doc.get("labels", []),
            "caption": doc.get("caption"),
            "taken_at": doc.get("taken_at"),
            "uploaded_at": doc.get("uploaded_at"),
        }
        if hit.distance is not None:
            out["distance"] = hit.distance
        if hit.highlights:
            out["highlights"] = hit.highlights
        out.update(self._derivative_urls(doc))
        return out

    def _derivative_urls(self, doc: dict[str, Any]) -> dict[str, str | None]:
        ttl = self.settings.presign_ttl_seconds
        derivatives = doc.get("derivatives") or {}
        urls: dict[str, str | None] = {}
        for name in ("thumbnail", "preview"):
            d = derivatives.get(name)
            urls[f"{name}_url"] = (
                self.store.presigned_get(self.settings.derivatives_bucket, d["key"], ttl) if d else None
            )
        return urls
