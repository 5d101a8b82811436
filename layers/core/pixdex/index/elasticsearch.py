"""The Elasticsearch 8+ dialect of the search-cluster backend, and the official client as a transport.

Everything the engines share (queries, filters, aggregations, bulk lines, highlighting, search_after,
aliases, analysis) is built once in :mod:`pixdex.index.requests`; this module holds only what differs:

=====================  ========================================  =========================================
                       OpenSearch                                Elasticsearch
=====================  ========================================  =========================================
vector field           ``knn_vector`` (faiss HNSW, inner         ``dense_vector`` (``dot_product``, HNSW,
                       product), ``index.knn: true``             unquantised so scores are exact cosines)
vector search          ``knn`` query with a ``filter``           top-level ``knn`` option with a ``filter``
                                                                 and ``num_candidates``
score -> cosine        1 + ip (ip >= 0), 1 / (1 - ip) otherwise  (1 + cos) / 2
point in time          ``POST <index>/_search/point_in_time``    ``POST <index>/_pit``,
                       ``DELETE _search/point_in_time``          ``DELETE _pit``
perceptual hash        binary ``knn_vector``, Hamming space      byte pigeonhole + exact client check only
                       (2.16+), byte pigeonhole for d < 8        (no Hamming k-NN; a scan for d >= 8)
=====================  ========================================  =========================================

Hybrid keyword + vector ranking lives above the index port (reciprocal rank fusion of the two result
lists on the client), so Elasticsearch's licensed ``rrf`` retriever is never needed.

Sending: by default the same urllib3 connection as OpenSearch (plain HTTP+JSON). With the optional
``elasticsearch`` extra installed (the official client, 8.x), :class:`ElasticClientTransport` sends
through it instead, e.g. to use an ``Elasticsearch`` object configured for Elastic Cloud (cloud id, API
key); :func:`elasticsearch_index` wraps such a client.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from pixdex.errors import IndexMappingError
from pixdex.index import requests as rq
from pixdex.index.mapping import KnnSettings, analysis_settings
from pixdex.index.opensearch import (
    Client,
    ClusterIndex,
    ClusterOptions,
    Response,
    RetryPolicy,
    Transport,
    TransportError,
    connect,
    parse_target,
)

# Elasticsearch refuses num_candidates above this.
MAX_NUM_CANDIDATES = 10_000


class ElasticsearchDialect(rq.OpenSearchDialect):
    name = "elasticsearch"
    vector_type = "dense_vector"
    dim_key = "dims"

    def supports_hamming(self, version: rq.ClusterVersion | None) -> bool:
        return False

    def supports_method_parameters(self, version: rq.ClusterVersion | None) -> bool:
        return False

    def knn_engine(self, knn: KnnSettings) -> str:
        return "lucene"  # dense_vector is always Lucene HNSW

    def index_settings(self, knn: KnnSettings, *, serverless: bool) -> dict[str, Any]:
        return {"analysis": analysis_settings()}

    def vector_property(self, dim: int, knn: KnnSettings) -> dict[str, Any]:
        # Unit vectors: dot_product is cosine similarity. Plain hnsw, not 8.14+'s default int8_hnsw, so
        # scores are exact and min_similarity thresholds mean the same as on the other backends.
        return {
            "type": "dense_vector",
            "dims": dim,
            "index": True,
            "similarity": "dot_product",
            "index_options": {"type": "hnsw", "m": knn.m, "ef_construction": knn.ef_construction},
        }

    def phash_property(self, knn: KnnSettings) -> dict[str, Any]:
        raise IndexMappingError("Elasticsearch has no binary Hamming vectors here: the byte pigeonhole is used")

    def knn_search(
        self,
        index: str,
        *,
        field_name: str,
        vector: Sequence[float],
        k: int,
        filter_query: dict[str, Any],
        knn: KnnSettings,
        version: rq.ClusterVersion | None,
        source: bool | list[str] = True,
        docvalue_fields: Sequence[str] = (),
    ) -> rq.Request:
        """The ``knn`` search option; its filter is applied during the graph search (pre-filtering)."""
        clause = {
            "field": field_name,
            "query_vector": list(vector),
            "k": k,
            "num_candidates": min(max(knn.ef_search, k), MAX_NUM_CANDIDATES),
            "filter": filter_query,
        }
        body: dict[str, Any] = {"knn": clause, "size": k}
        body["_source"] = {"excludes": list(rq.SOURCE_EXCLUDES)} if source is True else source
        if docvalue_fields:
            body["docvalue_fields"] = rq.docvalue_request(docvalue_fields)
        return rq.Request("POST", "/{index}/_search", {"index": index}, body=body)

    def hamming_search(
        self, index: str, *, phash: str, k: int, filter_query: dict[str, Any], version: rq.ClusterVersion | None
    ) -> rq.Request:
        raise IndexMappingError("Elasticsearch has no binary Hamming vectors here: the byte pigeonhole is used")

    def cosine(self, score: float, knn: KnnSettings) -> float:
        return 2.0 * score - 1.0

    def create_pit(self, index: str, keep_alive: str) -> rq.Request:
        return rq.Request("POST", "/{index}/_pit", {"index": index}, params={"keep_alive": keep_alive})

    def pit_id(self, response: Mapping[str, Any]) -> str:
        return str(response["id"])

    def delete_pit(self, pit_id: str) -> rq.Request:
        return rq.Request("DELETE", "/_pit", body={"id": pit_id})


class ElasticClientTransport:
    """Sends through an official ``elasticsearch.Elasticsearch`` client (8.x).

    Give the client ``max_retries=0``: retries with backoff happen in :class:`pixdex.index.opensearch.Client`.
    """

    def __init__(self, client: Any) -> None:
        self._client = client

    def perform(self, request: rq.Request) -> Response:
        from elastic_transport import ApiError
        from elastic_transport import TransportError as EsTransportError

        headers = {"content-type": request.content_type, "accept": "application/json"}
        try:
            answer = self._client.perform_request(
                request.method,
                request.path,
                params=dict(request.params) or None,
                headers=headers,
                body=request.encoded_body(),
            )
        except ApiError as exc:
            return Response(int(exc.meta.status), _body(exc.body), _retry_after(exc.meta.headers))
        except EsTransportError as exc:
            raise TransportError(f"{request.method} {request.path}: {exc}") from None
        return Response(int(answer.meta.status), _body(answer.body), _retry_after(answer.meta.headers))

    def close(self) -> None:
        self._client.close()


def elasticsearch_index(
    client: Any,
    *,
    alias: str = "pixdex-images",
    knn: KnnSettings | None = None,
    retry: RetryPolicy | None = None,
    refresh: Any = "wait_for",
    update_mode: rq.UpdateMode = "script",
) -> ClusterIndex:
    """A ready index on an Elasticsearch cluster reached through an official client object."""
    index = ClusterIndex(
        Client(ElasticClientTransport(client), retry=retry, engine="elasticsearch"),
        alias=alias,
        dialect=ElasticsearchDialect(),
        knn=knn,
        refresh=refresh,
        update_mode=update_mode,
    )
    index.ensure()
    return index


def connect_official(options: ClusterOptions) -> Transport | None:
    """The official client as the (cached) transport for the options' URL; None without that extra."""
    try:
        import elasticsearch  # noqa: F401
    except ImportError:
        return None
    return connect(options, variant="official", make=lambda: ElasticClientTransport(official_client(
        options.url, timeout_s=options.timeout_s, verify_certs=options.verify_certs,
        ca_certs=options.ca_certs, pool_maxsize=options.pool_maxsize,
    )))


def official_client(url: str, *, timeout_s: float, verify_certs: bool, ca_certs: str | None, pool_maxsize: int) -> Any:
    """An official client for one URL (basic auth from the URL's user:pass), without its own retries."""
    from elasticsearch import Elasticsearch

    target = parse_target(url)
    auth = (target.username, target.password or "") if target.username is not None else None
    extra: dict[str, Any] = {"ca_certs": ca_certs} if ca_certs else {}
    return Elasticsearch(
        hosts=[f"{target.scheme}://{target.host}:{target.port}{target.prefix}"],
        basic_auth=auth,
        request_timeout=timeout_s,
        max_retries=0,
        retry_on_status=(),
        retry_on_timeout=False,
        verify_certs=verify_certs,
        connections_per_node=pool_maxsize,
        **extra,
    )


def _body(value: Any) -> Any:
    if isinstance(value, bytes | str):
        text = value.decode() if isinstance(value, bytes) else value
        try:
            return json.loads(text) if text else None
        except ValueError:
            return text
    # HEAD answers are booleans; everything else is already decoded JSON.
    return None if isinstance(value, bool) else value


def _retry_after(headers: Any) -> float | None:
    try:
        value = headers.get("retry-after") if headers is not None else None
        return float(value) if value else None
    except (TypeError, ValueError):
        return None
