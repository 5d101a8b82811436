"""Every request the search-cluster backends send, built by pure functions (no I/O).

Building is kept apart from sending so that tests can check each body against the official OpenSearch
REST API specification, and so the Elasticsearch dialect only overrides what really differs
(:class:`OpenSearchDialect` here holds the OpenSearch forms; :mod:`pixdex.index.elasticsearch` subclasses it).

A :class:`Request` names its OpenAPI path template (``/{index}/_search``) and the values of the path
parameters; :attr:`Request.path` fills them in URL-quoted. Bulk bodies are lists of JSON objects sent as
NDJSON.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal
from urllib.parse import quote

from pixdex.document import HIGHLIGHT_FIELDS, TEXT_FIELDS, VECTOR_FIELDS
from pixdex.errors import InvalidRequestError
from pixdex.index.base import (
    Filters,
    SortOrder,
    TextMatch,
    instant_us,
    meaningful_words,
)
from pixdex.index.mapping import (
    CREATED_FIELD,
    ID_FIELD,
    INTERNAL_PREFIX,
    PHASH_BITS_FIELD,
    PHASH_PARTS,
    PHASH_PARTS_FIELD,
    TEXT_BOOSTS,
    KnnSettings,
    analysis_settings,
    base_properties,
    mapping_meta,
    opensearch_phash_property,
    opensearch_vector_property,
    phash_bytes,
    phash_parts,
)

# The same limits as the embedded backend (tests assert they agree).
MAX_QUERY_TOKENS: Final = 32
MIN_PREFIX_CHARS: Final = 3
# Highlight markers: private-use characters, so the text around them can be HTML-escaped on the client
# and the markers then turned into <mark> tags (the engines' own HTML encoder also escapes "/" and "'").
MARK_OPEN: Final = "\ue000"
MARK_CLOSE: Final = "\ue001"
HIGHLIGHT_FRAGMENT_CHARS: Final = 150
# Fields never returned in search hits or get: vectors are read with get_vectors only.
SOURCE_EXCLUDES: Final = (*VECTOR_FIELDS, f"{INTERNAL_PREFIX}*")
_INT_FIELD_LIMITS: Final = {"width": 2**31, "height": 2**31, "face_count": 2**31, "bytes": 2**63}
_TOKEN = re.compile(r"[^\W_]+")

HttpMethod = Literal["GET", "HEAD", "POST", "PUT", "DELETE"]
UpdateMode = Literal["script", "merge"]
# Replaces each given top-level field and leaves the others; a plain partial "doc" update would merge
# object-valued fields (states, derivatives, label scores) key by key and keep stale keys.
REPLACE_FIELDS_SCRIPT: Final = "ctx._source.putAll(params.doc)"


@dataclass(frozen=True)
class Request:
    method: HttpMethod
    endpoint: str
    path_params: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, str] = field(default_factory=dict)
    body: Any = None
    ndjson: bool = False

    @property
    def path(self) -> str:
        path = self.endpoint
        for name, value in self.path_params.items():
            path = path.replace("{" + name + "}", quote(value, safe=""))
        return path

    def encoded_body(self) -> bytes | None:
        if self.body is None:
            return None
        if self.ndjson:
            lines = [json.dumps(line, separators=(",", ":"), allow_nan=False) for line in self.body]
            return ("\n".join(lines) + "\n").encode()
        return json.dumps(self.body, separators=(",", ":"), allow_nan=False).encode()

    @property
    def content_type(self) -> str:
        return "application/x-ndjson" if self.ndjson else "application/json"


# -- validation ------------------------------------------------------------------------------------


# -- queries ---------------------------------------------------------------------------------------


def filter_clauses(f: Filters) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(filter, must_not) clauses for the filters. A document without the filtered field never matches."""
    must: list[dict[str, Any]] = []
    must_not: list[dict[str, Any]] = []
    if f.tenant is not None:
        must.append({"term": {"tenant": _string(f.tenant, "tenant")}})
    if f.formats:
        must.append({"terms": {"format": _strings(f.formats, "formats")}})
    for label in dict.fromkeys(_strings(f.labels, "labels")):
        must.append({"term": {"labels.keyword": label}})
    if f.cameras:
        must.append({"terms": {"camera": _strings(f.cameras, "cameras")}})
    for name, low, high in (
        ("width", f.min_width, f.max_width),
        ("height", f.min_height, f.max_height),
        ("bytes", f.min_bytes, f.max_bytes),
        ("face_count", f.min_faces, f.max_faces),
    ):
        bounds: dict[str, int] = {}
        limit = _INT_FIELD_LIMITS[name]
        # Clamped to the field type: a bound beyond it means the same thing and cannot overflow.
        if low is not None:
            bounds["gte"] = max(_int(low, f"min_{name}"), -limit)
        if high is not None:
            bounds["lte"] = min(_int(high, f"max_{name}"), limit - 1)
        if bounds:
            must.append({"range": {name: bounds}})
    for name, after, before in (
        ("taken_at", f.taken_after, f.taken_before),
        ("uploaded_at", f.uploaded_after, f.uploaded_before),
    ):
        # Bounds are instants in epoch milliseconds: a date string would be parsed by the engine, which
        # rounds "lte: 2030-01-01" up to the end of that day; the embedded backend does not.
        # The specification types date bounds as strings (date math), whatever the format.
        dates: dict[str, str] = {}
        stem = name.removesuffix("_at")
        if after is not None:
            dates["gte"] = str(math.ceil(instant_us(after, f"{stem}_after") / 1000))
        if before is not None:
            dates["lte"] = str(math.floor(instant_us(before, f"{stem}_before") / 1000))
        if dates:
            dates["format"] = "epoch_millis"
            must.append({"range": {name: dates}})
    if f.has_text is not None:
        must.append({"term": {"has_text": bool(f.has_text)}})
    if f.max_nsfw is not None:
        if not isinstance(f.max_nsfw, int | float) or isinstance(f.max_nsfw, bool) or not math.isfinite(f.max_nsfw):
            raise InvalidRequestError("max_nsfw must be a number", field="max_nsfw")
        must.append({"range": {"nsfw_score": {"lte": float(f.max_nsfw)}}})
    if f.sha256 is not None:
        must.append({"term": {"sha256": _string(f.sha256, "sha256").lower()}})
    if f.exclude_ids:
        must_not.append({"ids": {"values": _strings(f.exclude_ids, "exclude_ids")}})
    return must, must_not


def pin_clause(created_before_ms: int) -> dict[str, Any]:
    """Only documents created at or before the first page: later ones must not shift a paged list."""
    return {"range": {CREATED_FIELD: {"lte": created_before_ms}}}


def bool_query(
    f: Filters, *, must: Sequence[dict[str, Any]] = (), extra_filters: Sequence[dict[str, Any]] = ()
) -> dict[str, Any]:
    filters, must_not = filter_clauses(f)
    clauses: dict[str, Any] = {}
    if must:
        clauses["must"] = list(must)
    if filters or extra_filters:
        clauses["filter"] = [*filters, *extra_filters]
    if must_not:
        clauses["must_not"] = must_not
    return {"bool": clauses} if clauses else {"match_all": {}}


def query_tokens(text: str) -> tuple[list[str], bool]:
    """The words of user text, and whether the last one is still being typed (matches as a prefix).

    Only runs of letters and digits count, so quotes, operators and field syntax are never query syntax.
    """
    normalized = unicodedata.normalize("NFKC", text)
    tokens = _TOKEN.findall(normalized)[:MAX_QUERY_TOKENS]
    prefix = bool(tokens) and len(tokens[-1]) >= MIN_PREFIX_CHARS and normalized.endswith(tokens[-1])
    return tokens, prefix


def text_query(text: str, match: TextMatch = "all") -> dict[str, Any] | None:
    """All words must match, each in any text field (like the embedded FTS index); None without words.

    Each word is matched against the English-stemmed fields and the plain ``.std`` fields, best field
    counting, with the field weights as boosts; a stop word ("not", "the") still matches through ``.std``.
    With ``match="any"`` the words that are not stop words are OR-ed instead (as the embedded index does:
    :func:`pixdex.index.base.meaningful_words`), so BM25 ranks documents holding more of them first.
    """
    tokens, prefix = query_tokens(text)
    words = meaningful_words(tokens, match)
    if not words:
        return None
    fields = [f"{name}^{TEXT_BOOSTS[name]:g}" for name in TEXT_FIELDS]
    plain = [f"{name}.std^{TEXT_BOOSTS[name]:g}" for name in TEXT_FIELDS]
    clauses: list[dict[str, Any]] = []
    for i in words:
        token = tokens[i]
        word = {
            "multi_match": {"query": token, "fields": [*fields, *plain], "type": "best_fields", "operator": "and"}
        }
        if prefix and i == len(tokens) - 1:
            started = {"multi_match": {"query": token, "fields": plain, "type": "phrase_prefix"}}
            clauses.append({"bool": {"should": [word, started], "minimum_should_match": 1}})
        else:
            clauses.append(word)
    if match == "any":
        return {"bool": {"should": clauses, "minimum_should_match": 1}}
    return {"bool": {"must": clauses}}


def sort_clause(sort: SortOrder, by_score: bool) -> list[Any]:
    """Deterministic order with the id as tie-break; relevance without a score lists newest first.

    Documents without ``uploaded_at`` come last when newest first and first when oldest first, as in the
    embedded backend.
    """
    if sort == "relevance" and by_score:
        # "_score" alone sorts descending; the object form is ambiguous in the API specification.
        return ["_score", {ID_FIELD: {"order": "asc"}}]
    if sort == "oldest":
        return [{"uploaded_at": {"order": "asc", "missing": "_first"}}, {ID_FIELD: {"order": "asc"}}]
    return [{"uploaded_at": {"order": "desc", "missing": "_last"}}, {ID_FIELD: {"order": "desc"}}]


def facet_aggs(names: Sequence[str], size: int) -> dict[str, Any]:
    """Aggregations for the facets; ``year`` is taken_at's year, else uploaded_at's, in UTC, so it is two
    histograms (the second over documents without taken_at) merged on the client."""
    order = [{"_count": "desc"}, {"_key": "asc"}]
    # Each shard returns more than asked so the merged top buckets are exact for realistic cardinalities.
    shard_size = max(size * 5, 100)
    aggs: dict[str, Any] = {}
    for name in names:
        if name == "year":
            year = {"calendar_interval": "year", "format": "yyyy", "min_doc_count": 1, "time_zone": "UTC"}
            aggs["year_taken"] = {"date_histogram": {"field": "taken_at", **year}}
            aggs["year_uploaded"] = {
                "filter": {"bool": {"must_not": [{"exists": {"field": "taken_at"}}]}},
                "aggs": {"years": {"date_histogram": {"field": "uploaded_at", **year}}},
            }
        else:
            target = {"format": "format", "labels": "labels.keyword", "camera": "camera"}[name]
            aggs[name] = {"terms": {"field": target, "size": size, "shard_size": shard_size, "order": order}}
    return aggs


def highlight() -> dict[str, Any]:
    return {
        "pre_tags": [MARK_OPEN],
        "post_tags": [MARK_CLOSE],
        "require_field_match": False,
        "fields": {
            name: {"number_of_fragments": 1, "fragment_size": HIGHLIGHT_FRAGMENT_CHARS} for name in HIGHLIGHT_FIELDS
        },
    }


# What a ranking of many vector hits needs of each (sort key and facets), read from doc values: reading the
# stored _source of 1000 hits costs the node about as much as the graph search itself.
RANKING_FIELDS: Final = ("labels.keyword", "format", "uploaded_at", "taken_at")
_DATE_FIELDS: Final = frozenset({"uploaded_at", "taken_at"})
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def docvalue_request(fields: Sequence[str]) -> list[dict[str, str]]:
    """``docvalue_fields`` entries; dates as epoch milliseconds, so no format has to be parsed back."""
    return [{"field": f, "format": "epoch_millis"} if f in _DATE_FIELDS else {"field": f} for f in fields]


def ranking_doc(fields: Mapping[str, Any]) -> dict[str, Any]:
    """A hit's doc values (``fields``) as the few document fields a ranking reads: labels, format and the
    dates as UTC instants."""
    doc: dict[str, Any] = {}
    labels = fields.get("labels.keyword")
    if isinstance(labels, list):
        doc["labels"] = [str(x) for x in labels]
    fmt = fields.get("format")
    if isinstance(fmt, list) and fmt:
        doc["format"] = str(fmt[0])
    for name in _DATE_FIELDS:
        value = fields.get(name)
        if isinstance(value, list) and value:
            instant = _EPOCH + timedelta(milliseconds=int(float(value[0])))
            doc[name] = instant.isoformat().replace("+00:00", "Z")
    return doc


def search_body(
    *,
    query: dict[str, Any],
    sort: list[Any] | None,
    size: int,
    search_after: Sequence[Any] | None = None,
    aggs: dict[str, Any] | None = None,
    with_highlight: bool = False,
    track_scores: bool = False,
    pit: tuple[str, str] | None = None,
    source: bool | list[str] = True,
) -> dict[str, Any]:
    body: dict[str, Any] = {"query": query, "size": size, "track_total_hits": True}
    body["_source"] = {"excludes": list(SOURCE_EXCLUDES)} if source is True else source
    if sort is not None:
        body["sort"] = sort
    if search_after is not None:
        body["search_after"] = list(search_after)
    if aggs:
        body["aggs"] = aggs
    if with_highlight:
        body["highlight"] = highlight()
    if track_scores:
        body["track_scores"] = True
    if pit is not None:
        body["pit"] = {"id": pit[0], "keep_alive": pit[1]}
    return body


def search(index: str, body: dict[str, Any]) -> Request:
    """A search on the index, or within the point in time named in the body (then without an index)."""
    if "pit" in body:
        return Request("POST", "/_search", body=body)
    return Request("POST", "/{index}/_search", {"index": index}, body=body)


def count(index: str, query: dict[str, Any]) -> Request:
    return Request("POST", "/{index}/_count", {"index": index}, body={"query": query})


def ids_query(ids: Sequence[str]) -> dict[str, Any]:
    return {"ids": {"values": list(ids)}}


def phash_candidates_query(phash: str, max_distance: int) -> dict[str, Any]:
    """Documents sharing at least 8 - d of the hash's bytes at the same position; only for d < 8.

    A hash within d bits differs in at most d bytes, so no document within the distance is left out.
    """
    if not 0 <= max_distance < PHASH_PARTS:
        raise ValueError("the byte pigeonhole only prunes for distances below 8")
    return {
        "bool": {
            "should": [{"term": {PHASH_PARTS_FIELD: part}} for part in phash_parts(phash)],
            "minimum_should_match": PHASH_PARTS - max_distance,
        }
    }


def exists_query(name: str) -> dict[str, Any]:
    return {"exists": {"field": name}}


# -- documents -------------------------------------------------------------------------------------


def update_lines(
    index: str, doc_id: str, doc: Mapping[str, Any], *, created_ms: int, mode: UpdateMode
) -> list[dict[str, Any]]:
    """The two bulk lines of a partial upsert: the given fields replace the stored ones.

    ``created_ms`` goes into the document only when this creates it (the ``upsert`` body), so later
    updates keep the creation time that paging pins against.
    """
    action = {"update": {"_index": index, "_id": doc_id, "retry_on_conflict": 3}}
    if mode == "script":
        payload: dict[str, Any] = {
            "script": {"source": REPLACE_FIELDS_SCRIPT, "lang": "painless", "params": {"doc": dict(doc)}},
            "scripted_upsert": True,
            "upsert": {CREATED_FIELD: created_ms},
        }
    else:
        # Without scripting: object-valued fields merge key by key instead of being replaced.
        payload = {"doc": dict(doc), "upsert": {**doc, CREATED_FIELD: created_ms}}
    return [action, payload]


def index_lines(index: str, doc_id: str, source: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A whole-document write (reindex copy)."""
    return [{"index": {"_index": index, "_id": doc_id}}, dict(source)]


def bulk(lines: Sequence[dict[str, Any]], refresh: str | None) -> Request:
    params = {"refresh": refresh} if refresh else {}
    return Request("POST", "/_bulk", params=params, body=list(lines), ndjson=True)


def get_doc(index: str, doc_id: str, *, includes: Sequence[str] = (), excludes: Sequence[str] = ()) -> Request:
    params: dict[str, str] = {}
    if includes:
        params["_source_includes"] = ",".join(includes)
    if excludes:
        params["_source_excludes"] = ",".join(excludes)
    return Request("GET", "/{index}/_doc/{id}", {"index": index, "id": doc_id}, params=params)


def mget(index: str, doc_ids: Sequence[str], *, includes: Sequence[str] = ()) -> Request:
    params = {"_source_includes": ",".join(includes)} if includes else {}
    return Request("POST", "/{index}/_mget", {"index": index}, params=params, body={"ids": list(doc_ids)})


def delete_doc(index: str, doc_id: str, refresh: str | None) -> Request:
    params = {"refresh": refresh} if refresh else {}
    return Request("DELETE", "/{index}/_doc/{id}", {"index": index, "id": doc_id}, params=params)


# -- index administration --------------------------------------------------------------------------


def info() -> Request:
    return Request("GET", "/")


def get_alias(alias: str) -> Request:
    return Request("GET", "/_alias/{name}", {"name": alias})


def index_exists(index: str) -> Request:
    return Request("HEAD", "/{index}", {"index": index})


def get_mapping(index: str) -> Request:
    return Request("GET", "/{index}/_mapping", {"index": index})


def put_mapping(index: str, properties: Mapping[str, Any]) -> Request:
    return Request("PUT", "/{index}/_mapping", {"index": index}, body={"properties": dict(properties)})


def delete_index(index: str) -> Request:
    return Request("DELETE", "/{index}", {"index": index})


def refresh_index(index: str) -> Request:
    return Request("POST", "/{index}/_refresh", {"index": index})


def swap_alias(alias: str, old: Sequence[str], new: str) -> Request:
    """One atomic alias update: readers and writers move from the old indexes to the new one at once."""
    actions: list[dict[str, Any]] = [{"remove": {"index": name, "alias": alias}} for name in old]
    actions.append({"add": {"index": new, "alias": alias, "is_write_index": True}})
    return Request("POST", "/_aliases", body={"actions": actions})


# -- the OpenSearch dialect ------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterVersion:
    distribution: Literal["opensearch", "elasticsearch"]
    number: tuple[int, int, int]

    @classmethod
    def parse(cls, info: Mapping[str, Any]) -> ClusterVersion:
        version = info.get("version") or {}
        dist: Literal["opensearch", "elasticsearch"] = (
            "opensearch" if version.get("distribution") == "opensearch" else "elasticsearch"
        )
        parts = [int(p) if p.isdigit() else 0 for p in str(version.get("number", "0.0.0")).split("-")[0].split(".")]
        major, minor, patch = ([*parts, 0, 0, 0])[:3]
        return cls(dist, (major, minor, patch))


class OpenSearchDialect:
    """The OpenSearch forms of everything that differs between the engines. Pure: builds, never sends."""

    name: str = "opensearch"
    vector_type: str = "knn_vector"
    dim_key: str = "dimension"
    # Item and request errors that mean "this document (or mapping) can never be accepted".
    mapping_errors: frozenset[str] = frozenset({
        "mapper_parsing_exception", "document_parsing_exception", "strict_dynamic_mapping_exception",
        "illegal_argument_exception", "script_exception", "x_content_parse_exception",
        "mapper_exception", "parse_exception",
    })

    def supports_hamming(self, version: ClusterVersion | None) -> bool:
        # Binary knn_vector with Hamming space came with OpenSearch 2.16 (faiss only).
        return version is not None and version.distribution == "opensearch" and version.number >= (2, 16, 0)

    def supports_method_parameters(self, version: ClusterVersion | None) -> bool:
        return version is not None and version.number >= (2, 16, 0)

    def knn_engine(self, knn: KnnSettings) -> str:
        """The engine that builds and searches the vector graphs (recorded in stats)."""
        return knn.engine

    def index_settings(self, knn: KnnSettings, *, serverless: bool) -> dict[str, Any]:
        index: dict[str, Any] = {"knn": True}
        if not serverless:
            # Serverless manages index settings itself; there ef_search travels with each query.
            index["knn.algo_param.ef_search"] = knn.ef_search
        return {"index": index, "analysis": analysis_settings()}

    def vector_property(self, dim: int, knn: KnnSettings) -> dict[str, Any]:
        return opensearch_vector_property(dim, knn)

    def phash_property(self, knn: KnnSettings) -> dict[str, Any]:
        return opensearch_phash_property(knn)

    def mappings(self, dims: Mapping[str, int], knn: KnnSettings, *, phash_bits: bool) -> dict[str, Any]:
        props = base_properties()
        props.update({name: self.vector_property(dim, knn) for name, dim in dims.items()})
        if phash_bits:
            props[PHASH_BITS_FIELD] = self.phash_property(knn)
        return {"dynamic": False, "_meta": mapping_meta(), "properties": props}

    def create_index(
        self,
        name: str,
        *,
        alias: str | None,
        dims: Mapping[str, int],
        knn: KnnSettings,
        phash_bits: bool,
        serverless: bool = False,
    ) -> Request:
        body: dict[str, Any] = {
            "settings": self.index_settings(knn, serverless=serverless),
            "mappings": self.mappings(dims, knn, phash_bits=phash_bits),
        }
        if alias is not None:
            body["aliases"] = {alias: {"is_write_index": True}}
        return Request("PUT", "/{index}", {"index": name}, body=body)

    def add_vector_field(self, index: str, name: str, dim: int, knn: KnnSettings) -> Request:
        return put_mapping(index, {name: self.vector_property(dim, knn)})

    def knn_search(
        self,
        index: str,
        *,
        field_name: str,
        vector: Sequence[float],
        k: int,
        filter_query: dict[str, Any],
        knn: KnnSettings,
        version: ClusterVersion | None,
        source: bool | list[str] = True,
        docvalue_fields: Sequence[str] = (),
    ) -> Request:
        """Efficient filtered k-NN: the filter is applied during the graph search (faiss, 2.9+), so a
        selective filter still yields k hits where k exist."""
        clause: dict[str, Any] = {"vector": list(vector), "k": k, "filter": filter_query}
        if self.supports_method_parameters(version):
            clause["method_parameters"] = {"ef_search": max(knn.ef_search, k)}
        body = search_body(query={"knn": {field_name: clause}}, sort=None, size=k, source=source)
        body.pop("track_total_hits")
        if docvalue_fields:
            body["docvalue_fields"] = docvalue_request(docvalue_fields)
        return search(index, body)

    def hamming_search(
        self, index: str, *, phash: str, k: int, filter_query: dict[str, Any], version: ClusterVersion | None
    ) -> Request:
        clause: dict[str, Any] = {"vector": phash_bytes(phash), "k": k, "filter": filter_query}
        body = search_body(query={"knn": {PHASH_BITS_FIELD: clause}}, sort=None, size=k)
        body.pop("track_total_hits")
        return search(index, body)

    def cosine(self, score: float, knn: KnnSettings) -> float:
        """Cosine similarity of unit vectors from the engine's k-NN score."""
        if knn.space_type == "cosinesimil":
            return 2.0 * score - 1.0
        # faiss inner product: score = 1 + ip for ip >= 0, else 1 / (1 - ip).
        return score - 1.0 if score >= 1.0 else 1.0 - 1.0 / score

    def create_pit(self, index: str, keep_alive: str) -> Request:
        return Request(
            "POST", "/{index}/_search/point_in_time", {"index": index}, params={"keep_alive": keep_alive}
        )

    def pit_id(self, response: Mapping[str, Any]) -> str:
        return str(response["pit_id"])

    def delete_pit(self, pit_id: str) -> Request:
        return Request("DELETE", "/_search/point_in_time", body={"pit_id": [pit_id]})


def _int(value: object, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidRequestError(f"{name} must be an integer", field=name)
    return value


def _string(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise InvalidRequestError(f"{name} must be a string", field=name)
    return value


def _strings(values: object, name: str) -> list[str]:
    if not isinstance(values, tuple | list) or not all(isinstance(v, str) for v in values):
        raise InvalidRequestError(f"{name} must be a list of strings", field=name)
    return list(values)
