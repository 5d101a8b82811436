"""``pixdex reindex`` over real HTTP: a new version, copied documents, an atomic alias move."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from pixdex.index import requests as rq
from pixdex.index.base import Filters, SearchQuery, VectorQuery, iter_ids
from pixdex.index.mapping import UPDATED_FIELD, KnnSettings
from pixdex.index.opensearch import ClusterIndex
from pixdex.index.reindex import (
    STAGING_SUFFIX,
    _copy,
    _shaped,
    main,
    prepare_empty,
    reindex,
    swap_to_staging,
)
from tests.integration.opensearch.conftest import IndexFactory


def corpus(n: int) -> dict[str, dict[str, Any]]:
    rng = np.random.default_rng(11)
    return {
        f"d{i:03d}": {
            "tenant": "t1",
            "name_text": f"photo {i} sunset" if i % 2 else f"photo {i} harbour",
            "labels": ["sea"] if i % 3 else ["sea", "boat"],
            "phash": f"{i:016x}",
            "uploaded_at": f"2024-02-{1 + i % 28:02d}T10:00:00Z",
            "derivatives": {"thumbnail": {"width": 256, "format": "webp"}},
            "caption_vector": rng.standard_normal(384).astype(np.float32),
        }
        for i in range(n)
    }


def aliases(index: ClusterIndex) -> dict[str, Any]:
    response = index.client.call(rq.get_alias(index.alias), allow=(404,))
    return dict(response.body) if response.status == 200 else {}


ENGINE_OPTIONS: dict[str, dict[str, Any]] = {
    "noida": {},
    "osmem": {"update_mode": "merge", "knn": KnnSettings(hamming=False)},
    # The real node: painless upserts, Lucene-engine k-NN and Hamming vectors.
    "node": {"knn": KnnSettings(engine="lucene")},
}


@pytest.mark.parametrize("engine", ["noida", "osmem", "node"])
def test_reindex_copies_everything_and_moves_the_alias(
    engine: str, request: pytest.FixtureRequest
) -> None:
    factory: IndexFactory = request.getfixturevalue(f"{engine}_index")
    options = ENGINE_OPTIONS[engine]
    index = factory(**options)
    docs = corpus(40)
    assert index.upsert_many(list(docs.items())) == [None] * len(docs)
    before = {doc_id: index.get(doc_id) for doc_id in docs}
    assert index.physical == f"{index.alias}-v1"

    report = reindex(index)

    assert (report.old, report.new) == (f"{index.alias}-v1", f"{index.alias}-v2")
    assert report.copied == len(docs) and report.failed == 0 and report.swapped
    assert index.physical == f"{index.alias}-v2"
    assert list(aliases(index)) == [f"{index.alias}-v2"]
    assert {doc_id: index.get(doc_id) for doc_id in docs} == before
    assert index.count() == len(docs)
    assert index.count(Filters(labels=("boat",))) == 14
    np.testing.assert_allclose(
        index.get_vectors("d007")["caption_vector"],
        docs["d007"]["caption_vector"] / np.linalg.norm(docs["d007"]["caption_vector"]),
        atol=1e-6,
    )
    assert [h.id for h in index.near_duplicates(f"{5:016x}", 1)][:1] == ["d005"]
    if engine in ("noida", "node"):
        query = VectorQuery("caption_vector", docs["d012"]["caption_vector"], k=3)
        assert iter_ids(index.search(SearchQuery(vector=query)).hits)[0] == "d012"
    # Writes after the move land in the new version.
    index.upsert("d999", {"name_text": "after the move"})
    assert index.get("d999") == {"name_text": "after the move"}

    again = reindex(index, drop_old=True)
    assert (again.old, again.new, again.dropped_old) == (f"{index.alias}-v2", f"{index.alias}-v3", True)
    assert index.count() == len(docs) + 1
    assert index.client.send(rq.index_exists(f"{index.alias}-v2")).status == 404


def test_catch_up_never_overwrites_a_newer_copy(noida_index: IndexFactory) -> None:
    index = noida_index()
    index.upsert("x", {"name_text": "old"})
    new = index.create_version(2, alias=False)
    target = _shaped(index, new)
    assert _copy(index, index.alias, target, query={"match_all": {}}, mode="index") == (1, 0)
    # A newer write reaches the new version first (after the swap, say); the old copy must not win.
    target.upsert("x", {"name_text": "newer"})
    assert _copy(index, index.alias, target, query={"match_all": {}}, mode="newer") == (1, 0)
    assert target.get("x") == {"name_text": "newer"}
    # And an old-side update newer than the new copy does replace it.
    index.upsert("x", {"name_text": "newest"})
    assert _copy(index, index.alias, target, query={"range": {UPDATED_FIELD: {"gte": 0}}}, mode="newer") == (1, 0)
    assert target.get("x") == {"name_text": "newest"}
    target.client.call(rq.delete_index(new))


def test_empty_version_for_rederivation_then_swap(osmem_index: IndexFactory) -> None:
    index = osmem_index(update_mode="merge")
    index.upsert("old", {"name_text": "from the old mapping"})
    new = prepare_empty(index)
    assert new == f"{index.alias}-v2"
    staging = ClusterIndex(index.client, alias=index.alias + STAGING_SUFFIX, update_mode="merge")
    staging.upsert("fresh", {"name_text": "re-derived from the bucket"})
    assert index.get("fresh") is None  # readers still see the old version

    old, moved = swap_to_staging(index, drop_old=True)
    assert (old, moved) == (f"{index.alias}-v1", new)
    assert index.get("fresh") == {"name_text": "re-derived from the bucket"}
    assert index.get("old") is None
    assert staging.resolve_alias() is None


def test_command_line(osmem_index: IndexFactory, capsys: pytest.CaptureFixture[str]) -> None:
    index = osmem_index(update_mode="merge")
    # The transport is wrapped in a spec checker only where the specification is present.
    transport = index.client.transport
    url = getattr(transport, "inner", transport).target.display
    assert main(["--status", "--index-url", url, "--index-name", index.alias]) == 0
    assert f"{index.alias} -> {index.alias}-v1" in capsys.readouterr().out
    assert main(["--index-url", "sqlite:///tmp/x.db", "--status"]) == 2
