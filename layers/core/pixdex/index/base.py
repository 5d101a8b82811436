"""The index port: what every backend (embedded SQLite, OpenSearch, Elasticsearch) must provide.

Backends receive plain query objects and return plain results; fusion of keyword and vector results
and the HTTP shape live above this layer, so every backend behaves the same for the same request.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal, Protocol

import numpy as np
import numpy.typing as npt

from pixdex.document import VECTOR_FIELDS
from pixdex.errors import InvalidRequestError, PixdexError

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

# Limits every backend enforces the same way (a backend may hold less, never accept more).
MAX_PAGE_SIZE: Final = 1000
MAX_K: Final = 10_000
MAX_FACET_SIZE: Final = 1000

SortOrder = Literal["relevance", "newest", "oldest"]
FacetName = Literal["format", "labels", "camera", "year"]
FACET_NAMES: tuple[FacetName, ...] = ("format", "labels", "camera", "year")
HitSource = Literal["keyword", "vector", "filter", "hash"]
# How the words of keyword text match: "all" of them (AND), or "any" of the meaningful ones (OR, ranked
# by BM25, so documents holding more and rarer words come first); see :func:`meaningful_words`.
TextMatch = Literal["all", "any"]
TEXT_MATCHES: tuple[TextMatch, ...] = ("all", "any")
# Lucene's English stop words (the english analyser's ``_english_`` list). With ``match="any"`` they are
# dropped from the query by every backend alike: "a" or "of" would otherwise match nearly every document
# (SQLite's porter tokenizer keeps them, and a cluster's plain ``.std`` sub-fields keep them too).
STOP_WORDS: Final = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their then there these "
    "they this to was will with".split()
)


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
    match: TextMatch = "all"


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

    def get_vectors_many(self, doc_ids: Sequence[str],
                         fields: Sequence[str]) -> dict[str, dict[str, npt.NDArray[np.float32]]]:
        """``get_vectors`` of many documents at once, only the named fields; {} for a missing document."""
        ...

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


def meaningful_words(tokens: Sequence[str], match: TextMatch) -> list[int]:
    """Positions of the query tokens that take part in matching: all of them for ``"all"``; for ``"any"``
    the ones that are not stop words (none when every token is one)."""
    if match == "all":
        return list(range(len(tokens)))
    return [i for i, t in enumerate(tokens) if t.casefold() not in STOP_WORDS]


def validate_query(q: SearchQuery) -> None:
    """The checks every backend applies to a query before running it, in the same terms."""
    if q.text is not None and q.vector is not None:
        raise InvalidRequestError("a query is keyword or vector, not both", field="vector")
    if q.text is not None and not isinstance(q.text, str):
        raise InvalidRequestError("text must be a string", field="q")
    if q.match not in TEXT_MATCHES:
        raise InvalidRequestError(f"unknown text match {q.match!r}; expected one of {TEXT_MATCHES}", field="match")
    check_range("size", q.size, 1, MAX_PAGE_SIZE)
    check_range("facet_size", q.facet_size, 1, MAX_FACET_SIZE)
    if q.sort not in ("relevance", "newest", "oldest"):
        raise InvalidRequestError(f"unknown sort {q.sort!r}", field="sort")
    for name in q.facets:
        if name not in FACET_NAMES:
            raise InvalidRequestError(f"unknown facet {name!r}; expected one of {FACET_NAMES}", field="facets")
    if q.vector is not None:
        if q.vector.field not in VECTOR_FIELDS:
            raise InvalidRequestError(f"unknown vector field {q.vector.field!r}", field="vector.field")
        check_range("k", q.vector.k, 1, MAX_K)
        ms = q.vector.min_similarity
        if ms is not None and (not isinstance(ms, int | float) or isinstance(ms, bool) or not -1.0 <= ms <= 1.0):
            raise InvalidRequestError("min_similarity must be between -1 and 1", field="min_similarity")


def check_range(name: str, value: object, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidRequestError(f"{name} must be an integer from {low} to {high}", field=name)
    return value


def parse_instant(value: object, name: str, error: type[PixdexError] = InvalidRequestError) -> datetime:
    """An ISO 8601 date or date-time as an aware datetime; no offset means UTC."""
    if not isinstance(value, str):
        raise error(f"{name} must be an ISO 8601 date-time string", field=name)
    try:
        instant = datetime.fromisoformat(value.strip())
    except ValueError:
        raise error(f"{name}: not an ISO 8601 date-time: {value[:40]!r}", field=name) from None
    return instant if instant.tzinfo is not None else instant.replace(tzinfo=UTC)


def instant_us(value: object, name: str, error: type[PixdexError] = InvalidRequestError) -> int:
    delta = parse_instant(value, name, error) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
