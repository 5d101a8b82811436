"""`pixdex up --opensearch`: the whole local chain on a real OpenSearch node (started by the command from
tools/opensearch-node), upload to keyword, semantic and similar-image search, then delete."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pixdex.document import document_id
from tests import imagegen
from tests.e2e.conftest import start_stack, stop_stack

pytestmark = pytest.mark.e2e


def test_upload_to_search_on_a_real_opensearch_node(tmp_path: Path) -> None:
    from pixdex.local.opensearch_node import NodeError, build, project_dir

    try:
        build(project_dir())
    except (NodeError, OSError) as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"the OpenSearch node must build in CI: {exc}", pytrace=False)
        pytest.skip(f"tools/opensearch-node does not build here (Java 17 and Maven needed): {exc}")
    stack = start_stack(tmp_path / "data", "--opensearch", "--opensearch-port", "0", startup_s=240.0)
    try:
        stack.upload_and_wait({"os/Red Sunset.jpg": imagegen.jpeg_bytes(800, 600, seed=1),
                               "os/diagram.png": imagegen.png_bytes(640, 480, seed=2, screenshot=True)},
                              timeout=180.0, where="the OpenSearch node")
        assert not (tmp_path / "data" / "index.db").exists()  # nothing went to the embedded index
        status, stats = stack.get("/stats")
        assert status == 200 and stats["index"]["backend"] == "opensearch", stats
        assert stats["index"]["knn_engine"] == "lucene" and stats["index"]["update_mode"] == "script"
        status, body = stack.get("/search?q=sunset&mode=keyword")
        assert status == 200 and [h["key"] for h in body["hits"]] == ["os/Red Sunset.jpg"]
        status, body = stack.get("/search?q=sunset&mode=semantic&facets=format")
        assert status == 200 and body["hits"] and all(h["source"] == "vector" for h in body["hits"])
        assert {b["value"] for b in body["facets"]["format"]} <= {"jpeg", "png"}
        diagram = document_id(stack.originals_bucket, "os/diagram.png")
        similar = stack.get(f"/images/{diagram}/similar")
        assert similar[0] == 200 and [h["key"] for h in similar[1]["hits"]] == ["os/Red Sunset.jpg"]
        stack.client("s3").delete_object(Bucket=stack.originals_bucket, Key="os/diagram.png")
        stack.wait_for(lambda: stack.get(f"/images/{diagram}")[0] == 404, what="the deleted image gone")
    finally:
        stop_stack(stack)
