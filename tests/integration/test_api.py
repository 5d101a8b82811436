"""The query API through the real resolver, moto's S3 and the embedded index: validation, tenancy, routes."""

from __future__ import annotations

import base64
import io
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
from moto import mock_aws

from pixdex.api import create_app
from pixdex.document import document_id
from pixdex.packages import package_dir
from pixdex.runtime import Runtime
from pixdex.settings import Settings
from tests.integration.index.conftest import BACKENDS, _backend_params, make_index

ORIGINALS, DERIVATIVES = "originals", "derivatives"


def event(method: str, path: str, query: dict[str, str] | None = None, body: Any = None,
          claims: dict[str, str] | None = None, raw: bytes | None = None,
          content_type: str = "image/jpeg") -> dict[str, Any]:
    ev: dict[str, Any] = {
        "version": "2.0", "routeKey": "$default", "rawPath": path,
        "rawQueryString": "&".join(f"{k}={v}" for k, v in (query or {}).items()),
        "headers": {"content-type": "application/json"},
        "requestContext": {"http": {"method": method, "path": path, "sourceIp": "192.0.2.1"},
                           "requestId": "r", "stage": "$default"},
        "isBase64Encoded": False,
    }
    if query:
        ev["queryStringParameters"] = query
    if body is not None:
        ev["body"] = json.dumps(body)
    if raw is not None:
        # API Gateway hands binary bodies to Lambda base64-encoded.
        ev["body"] = base64.b64encode(raw).decode()
        ev["isBase64Encoded"] = True
        ev["headers"]["content-type"] = content_type
    if claims is not None:
        ev["requestContext"]["authorizer"] = {"jwt": {"claims": claims, "scopes": None}}
    return ev


class Api:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.app = create_app(runtime)

    def __call__(self, *args: Any, **kwargs: Any) -> tuple[int, Any]:
        resp = self.app.resolve(event(*args, **kwargs), None)
        return resp["statusCode"], json.loads(resp["body"]) if resp.get("body") else None


def _doc(key: str, tenant: str = "default", **fields: Any) -> tuple[str, dict[str, Any]]:
    base = {"bucket": ORIGINALS, "key": key, "name": key.rsplit("/", 1)[-1], "tenant": tenant,
            "name_text": key.replace("/", " ").rsplit(".", 1)[0], "uploaded_at": "2026-01-01T00:00:00+00:00",
            "format": "jpeg", "width": 100, "height": 100, "bytes": 1000}
    return document_id(ORIGINALS, key), {**base, **fields}


@pytest.fixture(params=_backend_params())
def api(request: pytest.FixtureRequest, tmp_path: Path, aws_env: dict[str, str]) -> Iterator[Api]:
    """The API over each index backend of the behaviour suite (clusters when their URL is set)."""
    backend = BACKENDS[request.param]
    index = make_index(request, backend, tmp_path, f"pixdex-api-{uuid.uuid4().hex[:12]}")
    try:
        with mock_aws():
            s3 = boto3.client("s3", region_name="us-east-1")
            s3.create_bucket(Bucket=ORIGINALS)
            s3.create_bucket(Bucket=DERIVATIVES)
            settings = Settings(originals_bucket=ORIGINALS, derivatives_bucket=DERIVATIVES,
                                index_url=f"sqlite:///{tmp_path / 'index.db'}", multi_tenant=True)
            yield Api(Runtime(settings, index=index))
    finally:
        if backend.drop is not None:
            backend.drop(index)
        index.close()


ALICE = {"custom:tenant": "alice"}


def test_validation_errors_name_the_field(api: Api) -> None:
    for query, field in (({"size": "0"}, "size"), ({"size": "abc"}, "size"), ({"sort": "random"}, "sort"),
                         ({"q": "x" * 600}, "q"), ({"min_width": "-5"}, "min_width"),
                         ({"facets": "colour"}, "facets"), ({"taken_after": "yesterday"}, "taken_after"),
                         ({"has_text": "perhaps"}, "has_text")):
        status, body = api("GET", "/search", query, claims=ALICE)
        assert status == 422, query
        assert body["error"] == "invalid_request"
        assert field in json.dumps(body), (query, body)
    assert api("GET", "/images/not%20an%20id!", claims=ALICE)[0] == 422
    assert api("GET", "/images/AAAAAAAAAAAAAAAAAAAAAAAA/duplicates", {"max_distance": "64"}, claims=ALICE)[0] == 422
    assert api("POST", "/uploads", body={"filename": "../x.exe", "content_type": "image/png"}, claims=ALICE)[0] == 422
    assert api("POST", "/uploads", body={"filename": "x.pdf", "content_type": "application/pdf"},
               claims=ALICE)[0] == 422


def test_tenants_are_isolated(api: Api) -> None:
    index = api.runtime.index
    a_id, a = _doc("alice/cat.jpg", tenant="alice")
    b_id, b = _doc("bob/cat.jpg", tenant="bob")
    index.upsert(a_id, a)
    index.upsert(b_id, b)
    status, body = api("GET", "/search", {"q": "cat"}, claims=ALICE)
    assert status == 200 and [h["id"] for h in body["hits"]] == [a_id]
    assert api("GET", f"/images/{a_id}", claims=ALICE)[0] == 200
    assert api("GET", f"/images/{b_id}", claims=ALICE)[0] == 404     # another tenant's id looks absent
    assert api("DELETE", f"/images/{b_id}", claims=ALICE)[0] == 404
    assert api("GET", "/search", {"q": "cat"})[0] == 403             # no authorizer context
    assert api("GET", "/search", {"q": "cat"}, claims={"sub": "u1"})[0] == 403
    assert api("GET", "/stats", claims={"custom:tenant": "bob"})[1]["images"] == 1


def test_keyword_search_falls_back_to_any_word_only_when_no_image_has_them_all(api: Api) -> None:
    index = api.runtime.index
    docs = [_doc("trips/red-car.jpg", tenant="alice"), _doc("trips/red-boat.jpg", tenant="alice"),
            _doc("trips/blue-car-park.jpg", tenant="alice"), _doc("trips/the-car.jpg", tenant="bob")]
    for doc_id, fields in docs:
        index.upsert(doc_id, fields)
    ids = {fields["key"]: doc_id for doc_id, fields in docs}

    def search(q: str, **extra: str) -> dict[str, Any]:
        status, body = api("GET", "/search", {"q": q, "mode": "keyword", **extra}, claims=ALICE)
        assert status == 200, body
        return body

    exact = search("red car ")  # both words in one image: only that image, as before
    assert [h["id"] for h in exact["hits"]] == [ids["trips/red-car.jpg"]] and exact["match"] == "all"
    loose = search("a red car in the car park ")
    assert loose["match"] == "any" and loose["total"] == 3  # bob's image never appears
    assert loose["hits"][0]["id"] == ids["trips/blue-car-park.jpg"]  # car twice + park
    assert search("the of a ")["hits"] == []  # stop words alone match nothing
    # Pages of a fallback search stay fallback pages.
    first = search("a red car in the car park ", size="2")
    assert first["match"] == "any" and first["next_cursor"]
    rest = search("a red car in the car park ", size="2", cursor=first["next_cursor"])
    assert rest["match"] == "any"
    assert [h["id"] for h in first["hits"] + rest["hits"]] == [h["id"] for h in loose["hits"]]


def test_duplicates_exact_and_near(api: Api) -> None:
    index = api.runtime.index
    docs = {
        "alice/a.jpg": {"sha256": "aa" * 32, "phash": "f0f0f0f0f0f0f0f0"},
        "alice/a-copy.jpg": {"sha256": "aa" * 32, "phash": "f0f0f0f0f0f0f0f0"},
        "alice/a-small.jpg": {"sha256": "bb" * 32, "phash": "f0f0f0f0f0f0f0f3"},   # 2 bits away
        "alice/other.jpg": {"sha256": "cc" * 32, "phash": "0f0f0f0f0f0f0f0f"},     # 64 bits away
        "bob/a.jpg": {"sha256": "aa" * 32, "phash": "f0f0f0f0f0f0f0f0"},           # other tenant
    }
    for key, fields in docs.items():
        doc_id, doc = _doc(key, tenant=key.split("/")[0], **fields)
        index.upsert(doc_id, doc)
    status, body = api("GET", f"/images/{document_id(ORIGINALS, 'alice/a.jpg')}/duplicates", claims=ALICE)
    assert status == 200
    assert [h["key"] for h in body["exact"]] == ["alice/a-copy.jpg"]
    assert [(h["key"], h["distance"]) for h in body["near"]] == [("alice/a-small.jpg", 2)]


def test_similar_uses_the_image_vector(api: Api) -> None:
    index = api.runtime.index
    rng = np.random.default_rng(0)
    base = rng.normal(size=1280).astype(np.float32)
    for i, noise in enumerate((0.0, 0.1, 5.0)):
        doc_id, doc = _doc(f"alice/{i}.jpg", tenant="alice")
        index.upsert(doc_id, {**doc, "image_vector": base + noise * rng.normal(size=1280).astype(np.float32)})
    status, body = api("GET", f"/images/{document_id(ORIGINALS, 'alice/0.jpg')}/similar", {"size": "5"},
                       claims=ALICE)
    assert status == 200
    assert [h["key"] for h in body["hits"]] == ["alice/1.jpg", "alice/2.jpg"]
    assert body["hits"][0]["score"] > body["hits"][1]["score"]
    no_vec_id, no_vec = _doc("alice/new.jpg", tenant="alice")
    index.upsert(no_vec_id, no_vec)
    assert api("GET", f"/images/{no_vec_id}/similar", claims=ALICE)[0] == 404


def test_uploads_and_delete(api: Api) -> None:
    status, body = api("POST", "/uploads", body={"filename": "Beach Day.jpg", "content_type": "image/jpeg"},
                       claims=ALICE)
    assert status == 201
    assert body["key"].startswith("alice/uploads/") and body["key"].endswith("/Beach Day.jpg")
    assert body["fields"]["key"] == body["key"] and body["fields"]["Content-Type"] == "image/jpeg"
    assert "policy" in {k.lower() for k in body["fields"]}
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.put_object(Bucket=ORIGINALS, Key=body["key"], Body=b"x")
    doc_id, doc = _doc(body["key"], tenant="alice")
    api.runtime.index.upsert(doc_id, doc)
    assert api("DELETE", f"/images/{doc_id}", claims=ALICE) == (202, {"id": doc_id, "status": "deleting"})
    assert s3.list_objects_v2(Bucket=ORIGINALS).get("KeyCount") == 0


def test_openapi_documents_every_route(api: Api) -> None:
    status, spec = api("GET", "/openapi.json")
    assert status == 200 and spec["openapi"].startswith("3.")
    for path in ("/search", "/images/{image_id}", "/images/{image_id}/similar", "/images/{image_id}/duplicates",
                 "/uploads", "/stats", "/health"):
        assert path in spec["paths"], path
    names = {p["name"] for p in spec["paths"]["/search"]["get"]["parameters"]}
    assert {"q", "format", "labels", "size", "cursor", "facets", "sort", "taken_after"} <= names


def _sample_photo(name: str) -> bytes:
    skimage = package_dir("skimage")
    if skimage is None:
        pytest.skip("scikit-image (sample photos) is not installed")
    return (skimage / "data" / name).read_bytes()


def test_classify_and_recognize_without_indexing(api: Api) -> None:
    status, body = api("POST", "/classify", raw=_sample_photo("chelsea.png"), content_type="image/png",
                       claims=ALICE)
    assert status == 200, body
    assert "cat" in body["labels"] and body["label_scores"][0]["score"] > 0.1
    assert "image_vector" not in body
    from PIL import Image, ImageDraw, ImageFont

    sign = Image.new("RGB", (900, 300), "white")
    ImageDraw.Draw(sign).text((40, 100), "PIXDEX 2026", fill="black", font=ImageFont.load_default(size=90))
    buf = io.BytesIO()
    sign.save(buf, "PNG")
    status, body = api("POST", "/recognize", body={"image": base64.b64encode(buf.getvalue()).decode()},
                       claims=ALICE)
    assert status == 200, body
    assert "PIXDEX" in body["ocr_text"].upper() and body["has_text"] is True
    assert not {"image_vector", "caption_vector", "face_vectors"} & set(body)
    assert api.runtime.index.count() == 0


def test_search_by_image(api: Api) -> None:
    photos = {"alice/cat.png": "chelsea.png", "alice/coffee.png": "coffee.png", "alice/rocket.jpg": "rocket.jpg",
              "alice/astronaut.png": "astronaut.png"}
    analyzer = api.runtime.analyzer
    assert analyzer is not None
    from PIL import Image

    for key, name in photos.items():
        image = Image.open(io.BytesIO(_sample_photo(name))).convert("RGB")
        doc_id, doc = _doc(key, tenant="alice")
        api.runtime.index.upsert(doc_id, {**doc, "image_vector": analyzer.image_vectors(image)["image_vector"]})
    # A recompressed, smaller copy of the cat finds the cat first.
    cat = Image.open(io.BytesIO(_sample_photo("chelsea.png"))).convert("RGB").resize((225, 150))
    buf = io.BytesIO()
    cat.save(buf, "JPEG", quality=60)
    status, body = api("POST", "/search/image", {"size": "2"}, raw=buf.getvalue(), claims=ALICE)
    assert status == 200, body
    assert body["hits"][0]["key"] == "alice/cat.png" and body["next_cursor"]
    # By id: the image itself is left out of its own results.
    cat_id = document_id(ORIGINALS, "alice/cat.png")
    status, body = api("POST", "/search/image", body={"image_id": cat_id}, claims=ALICE)
    assert status == 200 and cat_id not in [h["id"] for h in body["hits"]] and len(body["hits"]) == 3
    # Another tenant's id is absent; bad bodies are 4xx with a reason.
    assert api("POST", "/search/image", body={"image_id": cat_id}, claims={"custom:tenant": "bob"})[0] == 404
    assert api("POST", "/search/image", body={"image_id": cat_id, "s3_key": "alice/x"}, claims=ALICE)[0] == 422
    assert api("POST", "/search/image", body={"image": "%%%"}, claims=ALICE)[0] == 422
    assert api("POST", "/search/image", body={"unknown": 1}, claims=ALICE)[0] == 422
    assert api("POST", "/search/image", raw=b"not an image at all", claims=ALICE)[0] == 422
    assert api("POST", "/search/image", raw=b"\xff" * (5 * 1024 * 1024), claims=ALICE)[0] == 413


def test_faces_same_person(api: Api) -> None:
    rng = np.random.default_rng(3)
    person, stranger = rng.normal(size=128), rng.normal(size=128)
    docs = {"alice/a.jpg": [person, stranger], "alice/b.jpg": [person + 0.05 * rng.normal(size=128)],
            "alice/c.jpg": [stranger], "alice/d.jpg": []}
    for key, faces in docs.items():
        doc_id, doc = _doc(key, tenant="alice", face_count=len(faces),
                           faces=[{"box": [0, 0, 10, 10]} for _ in faces],
                           face_vectors=[f.tolist() for f in faces])
        api.runtime.index.upsert(doc_id, doc)
    a_id = document_id(ORIGINALS, "alice/a.jpg")
    status, body = api("GET", "/faces/search", {"image_id": a_id, "face": "0"}, claims=ALICE)
    assert status == 200, body
    assert [h["key"] for h in body["hits"]] == ["alice/b.jpg"]
    status, body = api("GET", "/faces/search", {"image_id": a_id, "face": "1"}, claims=ALICE)
    assert [h["key"] for h in body["hits"]] == ["alice/c.jpg"]
    assert api("GET", "/faces/search", {"image_id": a_id, "face": "5"}, claims=ALICE)[0] == 404
    status, body = api("GET", f"/images/{a_id}/faces", claims=ALICE)
    assert body["face_count"] == 2 and len(body["faces"]) == 2
    assert "face_vectors" not in api("GET", f"/images/{a_id}", claims=ALICE)[1]
