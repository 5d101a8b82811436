"""Near duplicates and query by image through the API, over every index backend, with real photos, hashes
and image vectors: a crop and a rotated copy are found by the signal that can see them, a different photo
is not, and a copy given as the query image finds its original first."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pixdex import hashing
from pixdex.bench.variants import crop, rotate
from pixdex.document import document_id
from pixdex.duplicates import JOINT
from tests.integration.test_api import ALICE, ORIGINALS, Api, _doc, _sample_photo
from tests.integration.test_api import api as api  # the fixture, over every backend

PHOTOS = {"alice/cat.png": "chelsea.png", "alice/coffee.png": "coffee.png", "alice/rocket.jpg": "rocket.jpg",
          "alice/astronaut.png": "astronaut.png", "alice/china.png": "motorcycle_left.png"}


def _jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _index(api: Api, key: str, image: Image.Image, data: bytes) -> str:
    """What analyze stores for the duplicate signals: SHA-256 of the bytes, pHash, the full and crop vectors."""
    analyzer = api.runtime.analyzer
    assert analyzer is not None
    vectors = analyzer.image_vectors(image)
    doc_id, doc = _doc(key, tenant="alice", sha256=hashing.sha256_hex(data), phash=hashing.phash(image),
                       image_vector=vectors["image_vector"], crop_vector=vectors["crop_vector"])
    api.runtime.index.upsert(doc_id, doc)
    return doc_id


@pytest.fixture
def library(api: Api) -> dict[str, Any]:
    images = {key: Image.open(io.BytesIO(_sample_photo(name))).convert("RGB") for key, name in PHOTOS.items()}
    for key, image in images.items():
        _index(api, key, image, _jpeg(image))
    cat = images["alice/cat.png"]
    cropped, rotated = crop(0.9)(cat), rotate(4)(cat)
    return {
        "cat": document_id(ORIGINALS, "alice/cat.png"),
        "crop": _index(api, "alice/cat-crop.jpg", cropped, _jpeg(cropped)),
        "rotated": _index(api, "alice/cat-rotated.jpg", rotated, _jpeg(rotated)),
        "crop_bytes": _jpeg(crop(0.8)(cat), quality=40),
    }


def _consistent(hit: dict[str, Any], body: dict[str, Any]) -> None:
    """The signals a hit names follow from the numbers it reports and the thresholds in force."""
    alone = []
    if hit["distance"] is not None and hit["distance"] <= body["max_distance"]:
        alone.append("phash")
    if hit["similarity"] is not None and hit["similarity"] >= body["min_similarity"]:
        alone.append("image_vector")
    assert hit["signals"] == (alone or [JOINT]), hit


def test_crop_and_rotation_are_duplicates_and_a_different_photo_is_not(api: Api,
                                                                       library: dict[str, Any]) -> None:
    status, body = api("GET", f"/images/{library['cat']}/duplicates", claims=ALICE)
    assert status == 200, body
    near = {h["id"]: h for h in body["near"]}
    assert set(near) == {library["crop"], library["rotated"]}, [h["key"] for h in body["near"]]
    for hit in near.values():
        assert isinstance(hit["distance"], int) and 0.6 <= hit["similarity"] <= 1.0
        _consistent(hit, body)
    # The crop moves the pHash by many bits; the image vector is what sees it.
    assert "image_vector" in near[library["crop"]]["signals"]
    assert near[library["crop"]]["distance"] > 4
    assert body["signals"] == ["sha256", "phash", "image_vector"] and body["exact"] == []
    # From the copy's side the original is a duplicate too.
    status, back = api("GET", f"/images/{library['crop']}/duplicates", claims=ALICE)
    assert library["cat"] in {h["id"] for h in back["near"]}


def test_signals_and_thresholds_are_request_parameters(api: Api, library: dict[str, Any]) -> None:
    status, body = api("GET", f"/images/{library['cat']}/duplicates",
                       {"signals": "phash", "max_distance": "0"}, claims=ALICE)
    assert status == 200 and body["near"] == [] and body["joint"] is None
    status, body = api("GET", f"/images/{library['cat']}/duplicates", {"min_similarity": "1.0", "size": "5"},
                       claims=ALICE)
    assert status == 200 and body["min_similarity"] == 1.0
    assert all(h["signals"] != ["image_vector"] for h in body["near"])
    for query, field in (({"signals": "colour"}, "signals"), ({"min_similarity": "2"}, "min_similarity"),
                         ({"max_distance": "25"}, "max_distance")):
        status, err = api("GET", f"/images/{library['cat']}/duplicates", query, claims=ALICE)
        assert status == 422 and field in str(err), (query, err)


def test_a_copy_as_query_image_finds_its_original_first(api: Api, library: dict[str, Any]) -> None:
    status, body = api("POST", "/search/image", {"size": "3"}, raw=library["crop_bytes"], claims=ALICE)
    assert status == 200, body
    first = body["hits"][0]
    assert first["id"] in {library["cat"], library["crop"], library["rotated"]}
    assert first["signals"] and first["similarity"] >= 0.6
    ids = [h["id"] for h in body["hits"]]
    assert library["cat"] in ids
    # Paging goes on through the ranking without repeating the copies shown first.
    seen = list(ids)
    cursor = body["next_cursor"]
    while cursor:
        status, page = api("POST", "/search/image", {"size": "3", "cursor": cursor}, raw=library["crop_bytes"],
                           claims=ALICE)
        assert status == 200, page
        seen += [h["id"] for h in page["hits"]]
        cursor = page["next_cursor"]
    assert len(seen) == len(set(seen)) == 7


def test_paging_survives_a_copy_arriving_between_pages(api: Api, library: dict[str, Any]) -> None:
    """The cursor of page 1 stays valid when the set of copies changes before page 2 is asked for (a copy
    uploaded meanwhile): no 400, no hit twice."""
    status, first = api("POST", "/search/image", {"size": "3"}, body={"image_id": library["cat"]}, claims=ALICE)
    assert status == 200 and first["next_cursor"], first
    seen = [h["id"] for h in first["hits"]]
    cat = Image.open(io.BytesIO(_sample_photo(PHOTOS["alice/cat.png"]))).convert("RGB")
    late = _index(api, "alice/cat-again.jpg", cat, _jpeg(cat))  # the same photo, indexed after page 1
    cursor = first["next_cursor"]
    while cursor:
        status, page = api("POST", "/search/image", {"size": "3", "cursor": cursor}, body={"image_id": library["cat"]},
                           claims=ALICE)
        assert status == 200, page
        seen += [h["id"] for h in page["hits"]]
        cursor = page["next_cursor"]
    assert len(seen) == len(set(seen)) and library["cat"] not in seen
    assert {library["crop"], library["rotated"]} <= set(seen[:3])
    # A new search shows the late copy first among the copies.
    status, again = api("POST", "/search/image", {"size": "3"}, body={"image_id": library["cat"]}, claims=ALICE)
    assert status == 200 and again["hits"][0]["id"] == late
    status, err = api("POST", "/search/image", {"size": "3", "cursor": "bm90IGEgY3Vyc29y"},
                      body={"image_id": library["cat"]}, claims=ALICE)
    assert status == 422 and err["field"] == "cursor", err


def test_query_by_id_lists_its_copies_first(api: Api, library: dict[str, Any]) -> None:
    status, body = api("POST", "/search/image", body={"image_id": library["cat"]}, claims=ALICE)
    assert status == 200, body
    ids = [h["id"] for h in body["hits"]]
    assert library["cat"] not in ids
    assert set(ids[:2]) == {library["crop"], library["rotated"]}
    assert all(h.get("signals") for h in body["hits"][:2])
    assert not any(h.get("signals") for h in body["hits"][2:])
    sims = [h["score"] for h in body["hits"][2:]]
    assert sims == sorted(sims, reverse=True)
    assert np.all(np.array(sims) < api.runtime.settings.duplicate_min_similarity)


def test_a_tight_crop_meets_the_original_through_the_crop_vectors(api: Api, library: dict[str, Any]) -> None:
    """A 70 % crop is a magnified centre: its full vector is closer to the original's crop vector than to
    the original's full vector, and the listing's similarity is that best cosine, both ways."""
    analyzer = api.runtime.analyzer
    assert analyzer is not None
    cat = Image.open(io.BytesIO(_sample_photo("chelsea.png"))).convert("RGB")
    tight = crop(0.7)(cat)
    tight_id = _index(api, "alice/cat-tight.jpg", tight, _jpeg(tight))
    full = analyzer.image_vectors(cat)
    mine = analyzer.image_vectors(tight)
    full_full = float(np.dot(full["image_vector"], mine["image_vector"]))
    crossed = float(np.dot(full["crop_vector"], mine["image_vector"]))
    assert crossed > full_full
    for probe, other in ((library["cat"], tight_id), (tight_id, library["cat"])):
        status, body = api("GET", f"/images/{probe}/duplicates", claims=ALICE)
        assert status == 200, body
        hit = next(h for h in body["near"] if h["id"] == other)
        assert hit["similarity"] >= crossed - 1e-3 and hit["similarity"] > full_full + 1e-3
        _consistent(hit, body)
    status, body = api("POST", "/search/image", {"size": "5"}, raw=_jpeg(tight), claims=ALICE)
    assert status == 200, body
    assert body["hits"][0]["id"] in {tight_id, library["cat"], library["crop"]}
    assert library["cat"] in {h["id"] for h in body["hits"] if h.get("signals")}
