"""The index port: what every backend (embedded SQLite, OpenSearch, Elasticsearch) must provide.

Backends receive plain query objects and return plain results; fusion of keyword and vector results
and the HTTP shape live above this layer, so every backend behaves the same for the same request.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

SortOrder = Literal["relevance", "newest", "oldest"]
FacetName = Literal["format", "labels", "camera", "year"]
FACET_NAMES: tuple[FacetName, ...] = ("format", "labels", "camera", "year")
HitSource = Literal["keyword", "vector", "filter", "hash"]


@dataclass(frozen=True)
class Filters:
    """Exact filters; all given conditions must hold (AND). Ranges are inclusive. Dates are ISO 8601."""

    tenant: str | None = None
    formats: tuple[str, ...] = ()          # any of
    labels: tuple[str, ...] = ()           # all of
    cameras: tuple[str, ...] = ()          # any of (the 'camera' field: "make model")
    min_width: int | None = None
    max_width: int | None = None
    min_height: int | None = None
    max_height: int | None = None
    min_bytes: int | None = None
    max_bytes: int | None = None
    taken_after: str | None = None
    taken_before: str | None = None
    uploaded_after: str | None = None
    uploaded_before: str | None = None
    has_text: bool | None = None
    min_faces: int | None = None
    max_faces: int | None = None
    max_nsfw: float | None = None
    sha256: str | None = None
    exclude_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class VectorQuery:
    """Exact (or, above a documented size, approximate) k-NN by cosine similarity on unit vectors."""

    field: str
    vector: npt.NDArray[np.float32]
    k: int = 10
    min_similarity: float | None = None


@dataclass(frozen=True)
class SearchQuery:
    text: str | None = None
    vector: VectorQuery | None = None
    filters: Filters = field(default_factory=Filters)
    facets: tuple[FacetName, ...] = ()
    facet_size: int = 10
    size: int = 20
    cursor: str | None = None
    sort: SortOrder = "relevance"


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    source: HitSource
    doc: dict[str, Any]
    distance: int | None = None   # Hamming distance, for hash hits
    highlights: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class FacetBucket:
    value: str
    count: int


@dataclass(frozen=True)
class SearchResult:
    hits: list[Hit]
    total: int
    facets: dict[str, list[FacetBucket]] = field(default_factory=dict)
    next_cursor: str | None = None


class ImageIndex(Protocol):
    """A document index with keyword, filter, facet, vector and hash search.

    Upserts are partial: the given top-level fields replace the stored ones, other fields stay. Vector
    fields (see pixdex.document.VECTOR_FIELDS) are given as float arrays or lists and are never returned
    by get/search documents; use get_vectors.
    """

    def ensure(self) -> None:
        """Create the index (tables, mappings) if it does not exist. Idempotent."""

    def upsert(self, doc_id: str, fields: Mapping[str, Any]) -> None: ...

    def upsert_many(self, items: Sequence[tuple[str, Mapping[str, Any]]]) -> list[Exception | None]:
        """Bulk partial upserts; one result per item, None where it succeeded."""
        ...

    def get(self, doc_id: str) -> dict[str, Any] | None: ...

    def get_vectors(self, doc_id: str) -> dict[str, npt.NDArray[np.float32]]: ...

    def delete(self, doc_id: str) -> bool:
        """Delete the document and its vectors; False if it did not exist."""
        ...

    def count(self, filters: Filters | None = None) -> int: ...

    def search(self, query: SearchQuery) -> SearchResult:
        """Keyword search when query.text is set, vector search when query.vector is set (not both),
        otherwise a filtered listing. Paging with the returned opaque cursor is deterministic."""
        ...

    def near_duplicates(
        self, phash: str, max_distance: int, filters: Filters | None = None, size: int = 20
    ) -> list[Hit]:
        """Documents whose 64-bit perceptual hash is within max_distance bits, nearest first."""
        ...

    def stats(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


def iter_ids(hits: Iterable[Hit]) -> list[str]:
    return [h.id for h in hits]
