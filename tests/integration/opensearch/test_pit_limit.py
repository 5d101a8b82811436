"""On the real OpenSearch node: a search whose point in time is refused still pages.

Every page 1 with more hits opens a point in time, and a node holds at most
``search.max_open_pit_context`` of them for their keep-alive; a busy API reaches that limit (it
failed `pixdex bench query` at 100k documents with 429 "too many Point In Time contexts").
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator

import pytest

from pixdex.index.base import SearchQuery, iter_ids
from pixdex.index.opensearch import ClusterIndex
from tests.integration.index.backends_search import drop_cluster_index, make_on_node
from tests.integration.index.test_index_behaviour import all_pages


def _cluster_setting(url: str, name: str, value: int | None) -> None:
    body = json.dumps({"transient": {name: value}}).encode()
    request = urllib.request.Request(f"{url}/_cluster/settings", data=body, method="PUT",  # noqa: S310
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as resp:  # noqa: S310  # the node on loopback
        assert resp.status == 200


@pytest.fixture
def one_pit_node(opensearch_node: str) -> Iterator[str]:
    _cluster_setting(opensearch_node, "search.max_open_pit_context", 1)
    try:
        yield opensearch_node
    finally:
        _cluster_setting(opensearch_node, "search.max_open_pit_context", None)


def test_paging_goes_on_when_the_node_refuses_a_point_in_time(one_pit_node: str) -> None:
    index = make_on_node(one_pit_node, "pixdex-test-pit-limit")
    try:
        assert isinstance(index, ClusterIndex)
        index.ensure()
        docs = {f"doc-{i}": {"key": f"sunset/{i}.jpg", "format": "jpeg", "caption": f"a red sunset number {i}"}
                for i in range(5)}
        assert index.upsert_many(list(docs.items())) == [None] * len(docs)
        query = SearchQuery(text="sunset", size=2)
        holder = index.search(query)  # takes the node's only point in time
        assert holder.next_cursor is not None
        assert sorted(all_pages(index, query)) == sorted(docs)  # its point in time was refused
        assert index.point_in_time  # a refusal is not taken for a cluster without points in time
        rest = index.search(SearchQuery(text="sunset", size=2, cursor=holder.next_cursor))
        assert not set(iter_ids(rest.hits)) & set(iter_ids(holder.hits))
    finally:
        drop_cluster_index(index)
