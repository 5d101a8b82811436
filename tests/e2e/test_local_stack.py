"""The main job end to end: `pixdex up`, upload with any S3 client, search over HTTP, delete, restart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pixdex.document import document_id
from tests import imagegen
from tests.e2e.conftest import RunningStack, start_stack, stop_stack

pytestmark = pytest.mark.e2e


def _processed(stack: RunningStack, doc_id: str) -> dict[str, Any] | None:
    status, doc = stack.get(f"/images/{doc_id}")
    if status == 200 and doc.get("compress_state") and doc.get("analyze_state"):
        return doc  # type: ignore[no-any-return]
    return None


def test_upload_search_delete(stack: RunningStack) -> None:
    s3 = stack.client("s3")
    uploads = {
        "trips/2024/Beach Sunset+1.jpg": imagegen.jpeg_bytes(2000, 1500, seed=1),
        "screens/Settings Dialog.png": imagegen.png_bytes(800, 600, seed=2),
        "misc/blue%20whale.webp": imagegen.webp_bytes(640, 480, seed=3),
    }
    for key, body in uploads.items():
        s3.put_object(Bucket=stack.originals_bucket, Key=key, Body=body)
    ids = {key: document_id(stack.originals_bucket, key) for key in uploads}
    docs = {key: stack.wait_for(lambda i=i: _processed(stack, i), what=f"{key} processed")  # type: ignore[misc]
            for key, i in ids.items()}

    jpeg = docs["trips/2024/Beach Sunset+1.jpg"]
    assert (jpeg["width"], jpeg["height"], jpeg["format"]) == (2000, 1500, "jpeg")
    assert jpeg["compress_state"]["error"] is None
    assert jpeg["derivatives"]["thumbnail"]["width"] == 256
    assert jpeg["derivatives"]["preview"]["width"] == 1280
    assert len(jpeg["sha256"]) == 64 and len(jpeg["phash"]) == 16
    for url_field in ("original_url", "thumbnail_url", "preview_url"):
        assert jpeg[url_field].startswith(stack.aws_endpoint)

    # The derivative behind the presigned URL is a real, smaller image.
    import urllib.request

    with urllib.request.urlopen(jpeg["thumbnail_url"], timeout=10) as resp:  # noqa: S310
        thumb = resp.read()
    assert 0 < len(thumb) < len(uploads["trips/2024/Beach Sunset+1.jpg"])

    status, result = stack.get("/search?q=sunset&mode=keyword&facets=format")
    assert status == 200
    assert [h["key"] for h in result["hits"]] == ["trips/2024/Beach Sunset+1.jpg"]
    assert result["hits"][0]["thumbnail_url"]
    # Hybrid (the default) also ranks by meaning; the document that says "sunset" comes first.
    status, hybrid = stack.get("/search?q=sunset")
    assert hybrid["mode"] == "hybrid"
    assert hybrid["hits"][0]["key"] == "trips/2024/Beach Sunset+1.jpg"
    assert hybrid["hits"][0]["source"] == "keyword+vector"
    status, everything = stack.get("/search?facets=format,year&size=2")
    assert everything["total"] == 3
    assert len(everything["hits"]) == 2 and everything["next_cursor"]
    formats = {b["value"]: b["count"] for b in everything["facets"]["format"]}
    assert formats == {"jpeg": 1, "png": 1, "webp": 1}
    status, page2 = stack.get(f"/search?facets=format&size=2&cursor={everything['next_cursor']}")
    assert len(page2["hits"]) == 1
    assert {h["id"] for h in everything["hits"] + page2["hits"]} == set(ids.values())
    status, pngs = stack.get("/search?format=png")
    assert [h["key"] for h in pngs["hits"]] == ["screens/Settings Dialog.png"]

    # Deleting the original removes the document and its derivatives.
    s3.delete_object(Bucket=stack.originals_bucket, Key="screens/Settings Dialog.png")
    gone = ids["screens/Settings Dialog.png"]
    stack.wait_for(lambda: stack.get(f"/images/{gone}")[0] == 404, what="document removed")
    left = s3.list_objects_v2(Bucket=stack.derivatives_bucket, Prefix=f"{gone}/").get("KeyCount", 0)
    assert left == 0
    assert stack.get("/search")[1]["total"] == 2


def test_bad_input_is_dead_lettered_and_loses_nothing(stack: RunningStack) -> None:
    s3, sqs = stack.client("s3"), stack.client("sqs")
    good = {f"good/{i}.jpg": imagegen.jpeg_bytes(640, 480, seed=10 + i) for i in range(3)}
    bad = {
        "bad/truncated.jpg": imagegen.truncated_jpeg(),
        "bad/empty.jpg": b"",
        "bad/notes.jpg": b"these are my notes, not a picture\n" * 20,
        "bad/bomb.png": imagegen.png_bomb(),
    }
    for key, body in {**good, **bad}.items():
        s3.put_object(Bucket=stack.originals_bucket, Key=key, Body=body)
    for key in good:
        stack.wait_for(lambda k=key: _processed(stack, document_id(stack.originals_bucket, k)),  # type: ignore[misc]
                       what=f"{key} processed")

    dlqs = [u for u in sqs.list_queues()["QueueUrls"] if u.endswith("-dlq")]
    assert len(dlqs) == 3

    def dead_lettered() -> int:
        total = 0
        for url in dlqs:
            attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
            total += int(attrs["Attributes"]["ApproximateNumberOfMessages"])
        return total

    # Each bad object fails in compress and in analyze: two dead letters per object after the retries.
    stack.wait_for(lambda: dead_lettered() == 2 * len(bad), timeout=120, what="bad objects dead-lettered")
    expected = {
        "bad/truncated.jpg": "bad_image",
        "bad/empty.jpg": "bad_image",
        "bad/notes.jpg": "bad_image",          # "not an image: the file contains text"
        "bad/bomb.png": "image_too_large",
    }
    for key, code in expected.items():
        status, doc = stack.get(f"/images/{document_id(stack.originals_bucket, key)}")
        assert status == 200, key
        assert doc["compress_state"]["error"]["code"] == code, key
        assert doc["analyze_state"]["error"]["code"] == code, key
    # The good images are complete and nothing else was lost.
    for key in good:
        doc = _processed(stack, document_id(stack.originals_bucket, key))
        assert doc is not None and doc["compress_state"]["error"] is None and doc["width"] == 640
    assert stack.get("/search?q=good")[1]["total"] == 3


def test_state_survives_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = start_stack(data)
    try:
        key = "keep/me.png"
        first.client("s3").put_object(Bucket=first.originals_bucket, Key=key, Body=imagegen.png_bytes(300, 200, seed=5))
        doc_id = document_id(first.originals_bucket, key)
        first.wait_for(lambda: _processed(first, doc_id), what="processed before restart")
        # The mirror writes asynchronously; wait until the object is on disk before stopping.
        first.wait_for(lambda: any((data / "s3").rglob("*me.png")), what="object persisted")
    finally:
        stop_stack(first)
    second = start_stack(data)
    try:
        status, doc = second.get(f"/images/{doc_id}")
        assert status == 200 and doc["width"] == 300
        body = second.client("s3").get_object(Bucket=second.originals_bucket, Key=key)["Body"].read()
        assert body[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        stop_stack(second)
