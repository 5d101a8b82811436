"""Factories for running the behaviour suite against a real search cluster.

``conftest.py`` registers them in ``BACKENDS`` with ``requires_env`` set, so they run only when
``OPENSEARCH_URL`` (an OpenSearch domain, Serverless collection or self-managed cluster) or
``ELASTICSEARCH_URL`` (Elasticsearch 8+) is set, e.g.::

    OPENSEARCH_URL=https://admin:secret@localhost:9200 pytest tests/integration/index
    OPENSEARCH_URL=https://search-pixdex-xyz.eu-west-1.es.amazonaws.com pytest tests/integration/index

Each test gets its own alias (the ``name`` the suite passes) and drops it afterwards. Writes wait for a
refresh so every read sees them, as the behaviour suite assumes.
"""

from __future__ import annotations

import os
from pathlib import Path

from pixdex.index.base import ImageIndex
from pixdex.index.clusters import open_cluster_index
from pixdex.index.mapping import KnnSettings
from pixdex.index.opensearch import ClusterIndex, ClusterOptions, Engine
from pixdex.local.opensearch_node import KNN_ENGINE


def cluster_index(url: str, name: str, engine: Engine) -> ClusterIndex:
    # Self-signed development clusters (the OpenSearch demo certificate) are common; set
    # PIXDEX_TEST_VERIFY_CERTS=false to accept them.
    verify = os.environ.get("PIXDEX_TEST_VERIFY_CERTS", "true").lower() not in ("0", "false", "no")
    return open_cluster_index(ClusterOptions(url=url, alias=name, engine=engine, verify_certs=verify))


def make_opensearch(tmp_path: Path, name: str) -> ImageIndex:
    return cluster_index(os.environ["OPENSEARCH_URL"], name, "opensearch")


def make_on_node(url: str, name: str) -> ImageIndex:
    """The session's real OpenSearch node: painless scripted upserts, Lucene-engine k-NN (the artifact has
    no faiss library), binary Hamming vectors for the perceptual hash."""
    return open_cluster_index(
        ClusterOptions(url=url, alias=name, engine="opensearch", knn=KnnSettings(engine=KNN_ENGINE))
    )


def make_elasticsearch(tmp_path: Path, name: str) -> ImageIndex:
    return cluster_index(os.environ["ELASTICSEARCH_URL"], name, "elasticsearch")


def drop_cluster_index(index: ImageIndex) -> None:
    assert isinstance(index, ClusterIndex)
    index.drop()
