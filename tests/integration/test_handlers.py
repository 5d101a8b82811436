"""The Lambda handlers with their sample events, against moto's S3 and the real embedded index."""

from __future__ import annotations

import copy
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws
from PIL import Image

from pixdex.document import document_id
from pixdex.index.sqlite import SqliteIndex
from pixdex.local.functions import LocalContext
from tests import imagegen
from tests.conftest import REPO, load_function

KEY = "demo/chelsea.png"
CTX = LocalContext(function_name="test")


def sample(name: str) -> dict[str, Any]:
    return json.loads((REPO / "events" / name).read_text())  # type: ignore[no-any-return]


@pytest.fixture
def aws(aws_env: dict[str, str]) -> Iterator[Any]:
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=aws_env["PIXDEX_ORIGINALS_BUCKET"])
        s3.create_bucket(Bucket=aws_env["PIXDEX_DERIVATIVES_BUCKET"])
        yield s3


def _index(env: dict[str, str]) -> SqliteIndex:
    return SqliteIndex(Path(env["PIXDEX_DATA_DIR"]) / "index.db")


def _put(s3: Any, env: dict[str, str], body: bytes) -> dict[str, Any]:
    """Upload the object the sample events name, and return the events with its real ETag."""
    etag = s3.put_object(Bucket=env["PIXDEX_ORIGINALS_BUCKET"], Key=KEY, Body=body)["ETag"].strip('"')
    events = {}
    for name in ("compress.json", "analyze.json"):
        ev = sample(name)
        body_json = json.loads(ev["Records"][0]["body"])
        body_json["detail"]["object"]["etag"] = etag
        ev["Records"][0]["body"] = json.dumps(body_json)
        events[name] = ev
    return events


def test_compress_and_analyze_sample_events(aws: Any, aws_env: dict[str, str]) -> None:
    events = _put(aws, aws_env, imagegen.png_bytes(1600, 1200, seed=7))
    compress, analyze = load_function("compress"), load_function("analyze")
    assert compress(events["compress.json"], CTX) == {"batchItemFailures": []}
    assert analyze(events["analyze.json"], CTX) == {"batchItemFailures": []}
    doc = _index(aws_env).get(document_id(aws_env["PIXDEX_ORIGINALS_BUCKET"], KEY))
    assert doc is not None
    assert doc["width"] == 1600 and doc["format"] == "png"
    assert doc["derivatives"]["preview"]["width"] == 1280
    assert doc["compression"]["source_bytes"] > doc["derivatives"]["preview"]["bytes"]
    keys = [o["Key"] for o in aws.list_objects_v2(Bucket=aws_env["PIXDEX_DERIVATIVES_BUCKET"])["Contents"]]
    assert sorted(k.split("/")[1] for k in keys) == ["preview.webp", "thumbnail.webp"]


def test_duplicate_event_changes_nothing(aws: Any, aws_env: dict[str, str]) -> None:
    events = _put(aws, aws_env, imagegen.jpeg_bytes(800, 600, seed=3))
    compress = load_function("compress")
    compress(events["compress.json"], CTX)
    doc_id = document_id(aws_env["PIXDEX_ORIGINALS_BUCKET"], KEY)
    first = _index(aws_env).get(doc_id)
    compress(copy.deepcopy(events["compress.json"]), CTX)
    assert _index(aws_env).get(doc_id) == first  # not even the state timestamp moved


def test_older_event_never_overwrites_newer_state(aws: Any, aws_env: dict[str, str]) -> None:
    old_events = _put(aws, aws_env, imagegen.jpeg_bytes(800, 600, seed=3))
    _put(aws, aws_env, imagegen.jpeg_bytes(1024, 768, seed=4))   # overwritten before the old event ran
    analyze = load_function("analyze")
    assert analyze(old_events["analyze.json"], CTX) == {"batchItemFailures": []}
    doc_id = document_id(aws_env["PIXDEX_ORIGINALS_BUCKET"], KEY)
    assert _index(aws_env).get(doc_id) is None  # stale: the newer object's own event will index it


def test_bad_item_fails_alone(aws: Any, aws_env: dict[str, str]) -> None:
    events = _put(aws, aws_env, imagegen.truncated_jpeg())
    good_key = "demo/good.jpg"
    etag = aws.put_object(Bucket=aws_env["PIXDEX_ORIGINALS_BUCKET"], Key=good_key,
                          Body=imagegen.jpeg_bytes(320, 240, seed=1))["ETag"].strip('"')
    batch = events["compress.json"]
    good = copy.deepcopy(batch["Records"][0])
    body = json.loads(good["body"])
    body["detail"]["object"].update(key=good_key, etag=etag)
    good["body"], good["messageId"] = json.dumps(body), "good-message"
    garbage = {**copy.deepcopy(good), "messageId": "garbage-message", "body": "{not json"}
    batch["Records"] += [good, garbage]
    result = load_function("compress")(batch, CTX)
    failed = {f["itemIdentifier"] for f in result["batchItemFailures"]}
    assert failed == {batch["Records"][0]["messageId"], "garbage-message"}
    index = _index(aws_env)
    bad_doc = index.get(document_id(aws_env["PIXDEX_ORIGINALS_BUCKET"], KEY))
    assert bad_doc is not None and bad_doc["compress_state"]["error"]["code"] == "bad_image"
    good_doc = index.get(document_id(aws_env["PIXDEX_ORIGINALS_BUCKET"], good_key))
    assert good_doc is not None and good_doc["compress_state"]["error"] is None


def test_remove_sample_event(aws: Any, aws_env: dict[str, str]) -> None:
    events = _put(aws, aws_env, imagegen.jpeg_bytes(640, 480, seed=2))
    load_function("compress")(events["compress.json"], CTX)
    aws.delete_object(Bucket=aws_env["PIXDEX_ORIGINALS_BUCKET"], Key=KEY)
    remove = load_function("remove")
    assert remove(sample("remove.json"), CTX) == {"batchItemFailures": []}
    assert _index(aws_env).get(document_id(aws_env["PIXDEX_ORIGINALS_BUCKET"], KEY)) is None
    assert aws.list_objects_v2(Bucket=aws_env["PIXDEX_DERIVATIVES_BUCKET"]).get("KeyCount") == 0
    assert remove(sample("remove.json"), CTX) == {"batchItemFailures": []}  # idempotent


def test_query_sample_events(aws: Any, aws_env: dict[str, str]) -> None:
    events = _put(aws, aws_env, imagegen.png_bytes(400, 300, seed=9))
    load_function("compress")(events["compress.json"], CTX)
    load_function("analyze")(events["analyze.json"], CTX)
    query = load_function("query")
    health = query(sample("query-health.json"), CTX)
    assert health["statusCode"] == 200
    image = query(sample("query-image.json"), CTX)
    assert image["statusCode"] == 200, image
    doc = json.loads(image["body"])
    assert doc["key"] == KEY and "X-Amz-Signature" in doc["thumbnail_url"]
    search = query(sample("query-search.json"), CTX)
    assert search["statusCode"] == 200
    body = json.loads(search["body"])
    assert set(body) == {"hits", "total", "facets", "next_cursor", "mode"}
    assert body["mode"] == "hybrid"
    # Semantic search ranks every document by similarity, so the only document comes back from the
    # vector side even though no word of it says "cat".
    assert [h["key"] for h in body["hits"]] == [KEY]
    assert "vector" in body["hits"][0]["source"]
    doc = json.loads(query(sample("query-image.json"), CTX)["body"])
    assert len(doc["labels"]) >= 1 and doc["caption"]
    openapi = json.loads(query(sample("query-openapi.json"), CTX)["body"])
    assert "/search" in openapi["paths"] and "/images/{image_id}" in openapi["paths"]


def test_analyze_with_faces_stores_boxes_in_a_recorded_frame(aws: Any, aws_env: dict[str, str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from pixdex.packages import package_dir

    skimage = package_dir("skimage")
    if skimage is None:
        pytest.skip("scikit-image (its sample photos) is not installed")
    monkeypatch.setenv("PIXDEX_CAPABILITIES", "classify,embed,caption,ocr,safety,faces")
    # A 2048-px JPEG decodes at a fraction of its size (JPEG draft) for the models: the boxes are in that
    # frame, not the original's, and the document says which frame it is.
    photo = Image.open(skimage / "data" / "astronaut.png").convert("RGB").resize((2048, 2048))
    out = io.BytesIO()
    photo.save(out, "JPEG", quality=90)
    events = _put(aws, aws_env, out.getvalue())
    assert load_function("analyze")(events["analyze.json"], CTX) == {"batchItemFailures": []}
    doc = _index(aws_env).get(document_id(aws_env["PIXDEX_ORIGINALS_BUCKET"], KEY))
    assert doc is not None and doc["width"] == 2048
    fw, fh = doc["box_frame"]
    assert 0 < fw <= 2048 and fw == fh
    (face,) = doc["faces"]
    x0, y0, x1, y1 = face["box"]
    assert 0 <= x0 < x1 <= fw and 0 <= y0 < y1 <= fh
    # Eileen Collins' face sits around x 170-270 of the 512-px photo: the same place in the recorded frame.
    assert 0.3 < x0 / fw < 0.55 and 0.1 < y0 / fh < 0.35
    (vector,) = doc["face_vectors"]
    assert len(vector) == 128 and all(isinstance(v, float) for v in vector)
