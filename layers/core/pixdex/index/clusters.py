"""Opening an index on a search cluster: detect the engine, pick its dialect and transport.

The one module that knows every dialect. The direction is one way: :mod:`pixdex.index.opensearch` is the
shared cluster core (connection, retries, :class:`ClusterIndex`; OpenSearch request forms are the default
dialect in :mod:`pixdex.index.requests`), :mod:`pixdex.index.elasticsearch` builds on that core, and
this module builds on both. Neither dialect imports this module or the other.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from pixdex.index import requests as rq
from pixdex.index.elasticsearch import ElasticsearchDialect, connect_official
from pixdex.index.mapping import KnnSettings
from pixdex.index.opensearch import (
    Client,
    ClusterIndex,
    ClusterOptions,
    Refresh,
    RetryPolicy,
    connect,
    signing_service,
)
from pixdex.settings import Settings


def cluster_options(settings: Settings, **overrides: Any) -> ClusterOptions:
    """Options for the index URL, name and cluster settings."""
    c = settings.cluster
    values: dict[str, Any] = {
        "url": settings.index_url,
        "alias": settings.index_name,
        "region": settings.aws_region,
        "engine": c.engine,
        "aws_service": c.aws_service,
        "timeout_s": c.timeout_s,
        "max_retries": c.max_retries,
        "refresh": c.refresh,
        "update_mode": c.update_mode,
        "verify_certs": c.verify_certs,
        "ca_certs": c.ca_certs,
        "knn": KnnSettings(m=c.knn_m, ef_construction=c.knn_ef_construction, ef_search=c.knn_ef_search,
                           hamming=c.knn_hamming, engine=c.knn_engine),
    }
    values.update(overrides)
    return ClusterOptions(**values)


def open_cluster_index(options: ClusterOptions, *, credentials: Any = None) -> ClusterIndex:
    """A ready index for the options: connected, the engine detected, :meth:`ClusterIndex.ensure` done."""
    transport = connect(options, credentials=credentials)
    service = signing_service(options)
    serverless = service == "aoss"
    retry = RetryPolicy(options.max_retries, options.backoff_s, options.backoff_max_s)
    version: rq.ClusterVersion
    if serverless:
        # Serverless answers no GET /; its collections run OpenSearch 2.17 (AWS documentation).
        version = rq.ClusterVersion("opensearch", (2, 17, 0))
    else:
        probe = Client(transport, retry=retry, engine="search cluster")
        version = rq.ClusterVersion.parse(probe.call(rq.info()).body or {})
    engine = options.engine
    if engine == "auto":
        engine = "opensearch" if service is not None else version.distribution
    dialect: rq.OpenSearchDialect
    if engine == "elasticsearch":
        dialect = ElasticsearchDialect()
        if service is None:
            transport = connect_official(options) or transport
    else:
        dialect = rq.OpenSearchDialect()
    refresh: Refresh | None = options.refresh or ("false" if serverless else "wait_for")
    index = ClusterIndex(
        Client(transport, retry=retry, engine=dialect.name),
        alias=options.alias,
        dialect=dialect,
        knn=options.knn if not serverless else _no_hamming(options.knn),
        vector_dims=options.vector_dims,
        refresh=refresh,
        update_mode=options.update_mode,
        point_in_time=options.point_in_time,
        pit_keep_alive=options.pit_keep_alive,
        serverless=serverless,
        version=version,
    )
    index.ensure()
    return index


def _no_hamming(knn: KnnSettings) -> KnnSettings:
    # Binary vectors on Serverless are not documented in what AWS publishes: keep the byte pigeonhole.
    return replace(knn, hamming=False)
