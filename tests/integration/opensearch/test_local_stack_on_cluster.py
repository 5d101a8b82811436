"""`pixdex up --index-url` against a search cluster (the Elasticsearch 8 emulator): the whole local chain,
upload to search, with the cluster backend instead of the embedded index."""

from __future__ import annotations

from pathlib import Path

import pytest

from pixdex.document import document_id
from tests import imagegen
from tests.e2e.conftest import start_stack, stop_stack
from tests.integration.opensearch.conftest import Emulator

pytestmark = pytest.mark.e2e


def test_upload_to_search_on_a_cluster(noida: Emulator, tmp_path: Path) -> None:
    stack = start_stack(tmp_path / "data", "--index-url", noida.url)
    try:
        stack.upload_and_wait({"cluster/Red Sunset.jpg": imagegen.jpeg_bytes(800, 600, seed=1),
                               "cluster/diagram.png": imagegen.png_bytes(640, 480, seed=2, screenshot=True)},
                              where="the cluster")
        assert not (tmp_path / "data" / "index.db").exists()  # nothing went to the embedded index
        status, body = stack.get("/search?q=sunset&mode=keyword")
        assert status == 200 and [h["key"] for h in body["hits"]] == ["cluster/Red Sunset.jpg"]
        status, body = stack.get("/search?q=sunset&facets=format")
        assert body["hits"][0]["key"] == "cluster/Red Sunset.jpg"
        assert {b["value"] for b in body["facets"]["format"]} <= {"jpeg", "png"}
        similar = stack.get(f"/images/{document_id(stack.originals_bucket, 'cluster/diagram.png')}/similar")
        assert similar[0] == 200 and [h["key"] for h in similar[1]["hits"]] == ["cluster/Red Sunset.jpg"]
    finally:
        stop_stack(stack)


def test_settings_in_the_environment_reach_the_functions(osmem: Emulator, tmp_path: Path) -> None:
    """The OpenSearch emulator refuses scripted upserts: with PIXDEX_INDEX_UPDATE_MODE=merge in the
    environment of `pixdex up`, the functions send plain partial updates and the upload is indexed."""
    stack = start_stack(tmp_path / "data", "--index-url", osmem.url,
                        env_extra={"PIXDEX_INDEX_UPDATE_MODE": "merge", "PIXDEX_KNN_HAMMING": "false"})
    try:
        stack.upload_and_wait({"merge/Blue Lake.jpg": imagegen.jpeg_bytes(640, 480, seed=3)}, where="the emulator")
        status, stats = stack.get("/stats")
        assert status == 200 and stats["index"]["update_mode"] == "merge", stats
    finally:
        stop_stack(stack)
