"""Behaviour every index backend must show, written only against the ImageIndex protocol."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from pixdex.errors import IndexMappingError, InvalidRequestError
from pixdex.index.base import FacetName, Filters, ImageIndex, SearchQuery, SearchResult, VectorQuery, iter_ids

CAPTION_DIM = 384

# A small collection with every filterable field, including edge cases: offsets in dates, a document
# uploaded on 2023-12-31 local time that is 2024 in UTC, and a document missing nearly every field.
CORPUS: dict[str, dict[str, Any]] = {
    "a": {
        "tenant": "t1",
        "format": "jpeg",
        "labels": ["cat", "animal"],
        "camera": "Canon EOS R5",
        "width": 4000,
        "height": 3000,
        "bytes": 2_000_000,
        "face_count": 0,
        "has_text": False,
        "nsfw_score": 0.01,
        "taken_at": "2021-06-01T12:00:00+02:00",
        "uploaded_at": "2024-01-01T00:00:00Z",
        "sha256": "a" * 64,
        "phash": "0000000000000000",
        "name_text": "holiday cat",
        "caption": "a cat sleeping on a sofa",
    },
    "b": {
        "tenant": "t1",
        "format": "png",
        "labels": ["dog", "animal"],
        "camera": "Google Pixel 7",
        "width": 800,
        "height": 600,
        "bytes": 300_000,
        "face_count": 2,
        "has_text": True,
        "nsfw_score": 0.2,
        "taken_at": "2022-03-01T10:00:00Z",
        "uploaded_at": "2024-01-02T00:00:00Z",
        "sha256": "b" * 64,
        "phash": "000000000000000f",
        "name_text": "menu board",
        "ocr_text": "coffee menu three euro",
    },
    "c": {
        "tenant": "t2",
        "format": "webp",
        "labels": ["beach"],
        "camera": "Canon EOS R5",
        "width": 1920,
        "height": 1280,
        "bytes": 900_000,
        "face_count": 5,
        "has_text": True,
        "nsfw_score": 0.7,
        "uploaded_at": "2024-01-03T00:00:00Z",
        "sha256": "c" * 64,
        "phash": "ffffffffffffffff",
        "name_text": "beach day",
        "ocr_text": "lifeguard on duty",
    },
    "d": {
        "tenant": "t1",
        "format": "jpeg",
        "labels": ["cat"],
        "width": 1920,
        "height": 1080,
        "bytes": 1_000_000,
        "face_count": 1,
        "has_text": False,
        "nsfw_score": 0.05,
        "uploaded_at": "2023-12-31T23:30:00-01:00",
        "sha256": "d" * 64,
        "phash": "00000000000000ff",
        "name_text": "kitchen",
        "caption": "a cat in the kitchen",
    },
    "e": {"tenant": "t1", "name_text": "scan"},
}


def load(index: ImageIndex, docs: dict[str, dict[str, Any]] = CORPUS) -> None:
    results = index.upsert_many(list(docs.items()))
    assert results == [None] * len(docs)


def unit(rng: np.random.Generator, dim: int = CAPTION_DIM) -> npt.NDArray[np.float32]:
    v = rng.standard_normal(dim).astype(np.float32)
    out: npt.NDArray[np.float32] = v / np.linalg.norm(v)
    return out


def all_pages(index: ImageIndex, query: SearchQuery, between: Callable[[int], None] | None = None) -> list[str]:
    """Every hit id across pages; ``between(n)`` runs after page n (to write while paging)."""
    ids: list[str] = []
    page = index.search(query)
    n = 1
    while True:
        ids += iter_ids(page.hits)
        if page.next_cursor is None:
            return ids
        if between is not None:
            between(n)
        page = index.search(dataclasses.replace(query, cursor=page.next_cursor))
        n += 1
        assert n < 1000, "paging does not end"


# -- documents --------------------------------------------------------------------------------------


def test_upsert_creates_and_get_returns_fields(index: ImageIndex) -> None:
    index.upsert("x", {"key": "a/b.jpg", "width": 10, "labels": ["cat"], "gps": {"lat": 1.5, "lon": 2.0}})
    assert index.get("x") == {"key": "a/b.jpg", "width": 10, "labels": ["cat"], "gps": {"lat": 1.5, "lon": 2.0}}
    assert index.get("missing") is None


def test_partial_upsert_replaces_given_fields_and_keeps_others(index: ImageIndex) -> None:
    index.upsert("x", {"key": "k.jpg", "format": "jpeg", "labels": ["cat"], "name_text": "k"})
    index.upsert("x", {"labels": ["dog"], "width": 640})
    assert index.get("x") == {"key": "k.jpg", "format": "jpeg", "labels": ["dog"], "name_text": "k", "width": 640}
    # The replaced values are what filters and text search see.
    assert index.count(Filters(labels=("cat",))) == 0
    assert index.count(Filters(labels=("dog",))) == 1
    assert iter_ids(index.search(SearchQuery(text="dog")).hits) == ["x"]
    assert index.search(SearchQuery(text="cat")).total == 0


def test_vectors_are_kept_apart_from_the_document(index: ImageIndex) -> None:
    rng = np.random.default_rng(1)
    raw = rng.standard_normal(CAPTION_DIM).astype(np.float32) * 7
    index.upsert("x", {"key": "k", "caption_vector": raw})
    index.upsert("x", {"format": "png"})  # a later partial upsert keeps the vector
    assert index.get("x") == {"key": "k", "format": "png"}
    vectors = index.get_vectors("x")
    assert set(vectors) == {"caption_vector"}
    np.testing.assert_allclose(vectors["caption_vector"], raw / np.linalg.norm(raw), atol=2e-3)
    assert index.get_vectors("missing") == {}


def test_vectors_of_many_documents_in_one_read(index: ImageIndex) -> None:
    rng = np.random.default_rng(3)
    index.upsert("a", {"key": "a", "caption_vector": unit(rng)})
    index.upsert("b", {"key": "b"})
    many = index.get_vectors_many(["a", "b", "missing"], ("caption_vector", "image_vector"))
    assert set(many) == {"a", "b", "missing"}
    assert set(many["a"]) == {"caption_vector"}
    np.testing.assert_array_equal(many["a"]["caption_vector"], index.get_vectors("a")["caption_vector"])
    assert many["b"] == {} and many["missing"] == {}
    # Only the named fields are read.
    assert index.get_vectors_many(["a"], ("image_vector",)) == {"a": {}}


def test_vector_given_as_list_is_accepted(index: ImageIndex) -> None:
    index.upsert("x", {"caption_vector": [1.0] + [0.0] * (CAPTION_DIM - 1)})
    hits = index.search(SearchQuery(vector=VectorQuery("caption_vector", unit_axis(0)))).hits
    assert iter_ids(hits) == ["x"]
    assert hits[0].score == pytest.approx(1.0, abs=1e-3)


def unit_axis(i: int, dim: int = CAPTION_DIM) -> npt.NDArray[np.float32]:
    v = np.zeros(dim, dtype=np.float32)
    v[i] = 1.0
    return v


def test_delete_removes_document_everywhere(index: ImageIndex) -> None:
    load(index)
    rng = np.random.default_rng(2)
    index.upsert("a", {"caption_vector": unit(rng)})
    index.upsert("b", {"caption_vector": unit(rng)})
    assert index.delete("a") is True
    assert index.delete("a") is False
    assert index.get("a") is None
    assert index.get_vectors("a") == {}
    assert index.count() == len(CORPUS) - 1
    assert "a" not in iter_ids(index.search(SearchQuery(text="cat")).hits)
    assert "a" not in iter_ids(index.search(SearchQuery(size=100)).hits)
    vector_hits = index.search(SearchQuery(vector=VectorQuery("caption_vector", unit(rng), k=10))).hits
    assert iter_ids(vector_hits) == ["b"]
    assert "a" not in iter_ids(index.near_duplicates("0000000000000000", 64))
    assert index.count(Filters(labels=("cat",))) == 1
    # Deleted and recreated: a fresh document, none of the old fields.
    index.upsert("a", {"name_text": "again"})
    assert index.get("a") == {"name_text": "again"}


def test_count(index: ImageIndex) -> None:
    assert index.count() == 0
    load(index)
    assert index.count() == 5
    assert index.count(Filters(tenant="t1")) == 4
    assert index.count(Filters(tenant="nobody")) == 0


def test_upsert_many_reports_each_item(index: ImageIndex) -> None:
    rng = np.random.default_rng(3)
    index.upsert("seed", {"caption_vector": unit(rng)})
    results = index.upsert_many(
        [
            ("ok1", {"name_text": "one"}),
            ("bad", {"name_text": "two", "caption_vector": unit(rng, CAPTION_DIM + 1)}),
            ("ok2", {"name_text": "three"}),
        ]
    )
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], IndexMappingError)
    assert index.get("ok1") == {"name_text": "one"}
    assert index.get("ok2") == {"name_text": "three"}
    assert index.get("bad") is None


def test_dimension_mismatch_is_refused_and_changes_nothing(index: ImageIndex) -> None:
    rng = np.random.default_rng(4)
    index.upsert("x", {"format": "jpeg", "caption_vector": unit(rng)})
    before = index.get_vectors("x")["caption_vector"]
    with pytest.raises(IndexMappingError):
        index.upsert("x", {"format": "png", "caption_vector": unit(rng, CAPTION_DIM - 1)})
    with pytest.raises(IndexMappingError):
        index.upsert("y", {"format": "png", "caption_vector": unit(rng, CAPTION_DIM * 2)})
    assert index.get("x") == {"format": "jpeg"}
    np.testing.assert_array_equal(index.get_vectors("x")["caption_vector"], before)
    assert index.get("y") is None
    with pytest.raises(InvalidRequestError):
        index.search(SearchQuery(vector=VectorQuery("caption_vector", unit(rng, CAPTION_DIM - 1))))


def test_stats_counts_documents(index: ImageIndex) -> None:
    load(index)
    assert index.stats()["documents"] == len(CORPUS)


# -- filters and facets -----------------------------------------------------------------------------

FILTER_CASES: list[tuple[Filters, set[str]]] = [
    (Filters(), {"a", "b", "c", "d", "e"}),
    (Filters(tenant="t1"), {"a", "b", "d", "e"}),
    (Filters(formats=("jpeg",)), {"a", "d"}),
    (Filters(formats=("png", "webp")), {"b", "c"}),
    (Filters(labels=("cat",)), {"a", "d"}),
    (Filters(labels=("cat", "animal")), {"a"}),  # all of
    (Filters(labels=("cat", "dog")), set()),
    (Filters(cameras=("Canon EOS R5",)), {"a", "c"}),
    (Filters(cameras=("Canon EOS R5", "Google Pixel 7")), {"a", "b", "c"}),
    (Filters(min_width=1920), {"a", "c", "d"}),
    (Filters(max_width=1920), {"b", "c", "d"}),
    (Filters(min_width=1000, max_width=1920), {"c", "d"}),
    (Filters(min_height=1080, max_height=1280), {"c", "d"}),
    (Filters(min_bytes=900_000, max_bytes=1_000_000), {"c", "d"}),
    # 2021-06-01T12:00:00+02:00 is 10:00 UTC: inclusive bounds compare instants, not strings.
    (Filters(taken_after="2021-06-01T10:00:00Z"), {"a", "b"}),
    (Filters(taken_after="2021-06-01T10:00:01Z"), {"b"}),
    (Filters(taken_before="2021-06-01T11:00:00+01:00"), {"a"}),
    (Filters(taken_before="2021-06-01T10:59:59+01:00"), set()),
    (Filters(taken_after="2020-01-01", taken_before="2030-01-01"), {"a", "b"}),
    # 2023-12-31T23:30-01:00 is 2024-01-01T00:30Z: after "a", before "b".
    (Filters(uploaded_after="2024-01-01T00:15:00Z", uploaded_before="2024-01-02T00:00:00Z"), {"b", "d"}),
    (Filters(uploaded_before="2024-01-01T00:29:59Z"), {"a"}),
    (Filters(has_text=True), {"b", "c"}),
    (Filters(has_text=False), {"a", "d"}),
    (Filters(min_faces=1), {"b", "c", "d"}),
    (Filters(max_faces=1), {"a", "d"}),
    (Filters(min_faces=2, max_faces=4), {"b"}),
    (Filters(max_nsfw=0.2), {"a", "b", "d"}),
    (Filters(max_nsfw=0.05), {"a", "d"}),
    (Filters(sha256="b" * 64), {"b"}),
    (Filters(sha256="B" * 64), {"b"}),
    (Filters(sha256="0" * 64), set()),
    (Filters(exclude_ids=("a", "e")), {"b", "c", "d"}),
    (Filters(tenant="t1", formats=("jpeg",), has_text=False, min_width=2000), {"a"}),
]


@pytest.mark.parametrize(("filters", "expected"), FILTER_CASES, ids=[repr(f) for f, _ in FILTER_CASES])
def test_filter(index: ImageIndex, filters: Filters, expected: set[str]) -> None:
    load(index)
    assert set(iter_ids(index.search(SearchQuery(filters=filters, size=100)).hits)) == expected
    assert index.search(SearchQuery(filters=filters, size=100)).total == len(expected)
    assert index.count(filters) == len(expected)


def test_filters_apply_to_keyword_search(index: ImageIndex) -> None:
    load(index)
    assert set(iter_ids(index.search(SearchQuery(text="cat")).hits)) == {"a", "d"}
    result = index.search(SearchQuery(text="cat", filters=Filters(min_width=2000)))
    assert iter_ids(result.hits) == ["a"]
    assert result.total == 1


@pytest.mark.parametrize(
    "bad",
    [
        Filters(taken_after="yesterday"),
        Filters(uploaded_before="2024-13-01"),
        Filters(min_width="wide"),  # type: ignore[arg-type]
    ],
)
def test_invalid_filter_values_are_request_errors(index: ImageIndex, bad: Filters) -> None:
    load(index)
    with pytest.raises(InvalidRequestError):
        index.search(SearchQuery(filters=bad))


def buckets(result: SearchResult, name: str) -> list[tuple[str, int]]:
    return [(b.value, b.count) for b in result.facets[name]]


def test_facets_over_a_filtered_listing(index: ImageIndex) -> None:
    load(index)
    result = index.search(SearchQuery(filters=Filters(tenant="t1"), facets=("format", "labels", "camera", "year")))
    # Count desc, then value asc; documents without the field are not counted.
    assert buckets(result, "format") == [("jpeg", 2), ("png", 1)]
    assert buckets(result, "labels") == [("animal", 2), ("cat", 2), ("dog", 1)]
    assert buckets(result, "camera") == [("Canon EOS R5", 1), ("Google Pixel 7", 1)]
    # year: taken_at's year, else uploaded_at's, in UTC ("d" was uploaded 2023-12-31 at -01:00).
    assert buckets(result, "year") == [("2021", 1), ("2022", 1), ("2024", 1)]


def test_facet_size_limits_buckets(index: ImageIndex) -> None:
    load(index)
    result = index.search(SearchQuery(facets=("labels",), facet_size=2))
    assert buckets(result, "labels") == [("animal", 2), ("cat", 2)]
    assert set(result.facets) == {"labels"}


def test_facets_of_keyword_search_count_matches_only(index: ImageIndex) -> None:
    load(index)
    result = index.search(SearchQuery(text="cat", facets=("labels", "format")))
    assert buckets(result, "labels") == [("cat", 2), ("animal", 1)]
    assert buckets(result, "format") == [("jpeg", 2)]


def test_facets_follow_updates_and_deletes(index: ImageIndex) -> None:
    load(index)
    facets: tuple[FacetName, ...] = ("labels", "format", "year")
    index.search(SearchQuery(facets=facets))  # whatever a backend keeps from this must not go stale
    index.upsert("a", {"labels": ["cat", "sofa"], "format": "png", "taken_at": "2019-05-05T00:00:00Z"})
    index.delete("b")
    index.upsert("f", {"labels": ["sofa"], "format": "png", "uploaded_at": "2024-02-02T00:00:00Z"})
    result = index.search(SearchQuery(facets=facets))
    assert buckets(result, "labels") == [("cat", 2), ("sofa", 2), ("beach", 1)]
    assert buckets(result, "format") == [("png", 2), ("jpeg", 1), ("webp", 1)]
    assert buckets(result, "year") == [("2024", 3), ("2019", 1)]
    assert result.total == 5


# -- keyword search ---------------------------------------------------------------------------------

TEXT_DOCS: dict[str, dict[str, Any]] = {
    "named": {"name_text": "sunset over the bay"},
    "labelled": {"labels": ["sunset", "sea"]},
    "ocr": {"ocr_text": "the sunset cafe menu: espresso two euro, pastries, sandwiches and more"},
    "exif": {"exif_text": "Canon sunset mode"},
    "other": {"name_text": "mountain hike", "caption": "hikers on a ridge"},
}


def test_bm25_ranks_names_and_labels_above_ocr_and_exif(index: ImageIndex) -> None:
    load(index, TEXT_DOCS)
    result = index.search(SearchQuery(text="sunset"))
    ids = iter_ids(result.hits)
    assert set(ids) == {"named", "labelled", "ocr", "exif"}
    assert result.total == 4
    assert set(ids[:2]) == {"named", "labelled"}
    assert [h.source for h in result.hits] == ["keyword"] * 4
    scores = [h.score for h in result.hits]
    assert scores == sorted(scores, reverse=True)


def test_all_words_must_match(index: ImageIndex) -> None:
    load(index, TEXT_DOCS)
    assert iter_ids(index.search(SearchQuery(text="sunset bay")).hits) == ["named"]
    assert index.search(SearchQuery(text="sunset volcano")).total == 0


def test_any_word_match_ranks_documents_with_more_words_first(index: ImageIndex) -> None:
    load(index, TEXT_DOCS)
    result = index.search(SearchQuery(text="sunset over a bay with a volcano", match="any", size=10))
    ids = iter_ids(result.hits)
    # "over" is no stop word: "named" holds three of the words, the others one; "other" holds none.
    assert ids[0] == "named" and set(ids) == {"named", "labelled", "ocr", "exif"}
    assert result.total == 4
    scores = [h.score for h in result.hits]
    assert scores == sorted(scores, reverse=True)
    assert iter_ids(index.search(SearchQuery(text="volcano crater", match="any")).hits) == []


def test_stop_words_match_nothing_with_any_word(index: ImageIndex) -> None:
    load(index, TEXT_DOCS)
    # "the" occurs in two documents and "on a" in one; none of them is a meaningful word.
    assert index.search(SearchQuery(text="The of a on ", match="any")).total == 0
    assert iter_ids(index.search(SearchQuery(text="the hikers", match="any")).hits) == ["other"]
    # Matching all words keeps them: every word, stop word or not, must occur.
    assert iter_ids(index.search(SearchQuery(text="the bay", match="all")).hits) == ["named"]


def test_any_word_paging_covers_every_match_once(index: ImageIndex) -> None:
    load(index, TEXT_DOCS)
    everything = iter_ids(index.search(SearchQuery(text="sunset hikers bay ", match="any", size=100)).hits)
    assert len(everything) == 5
    paged: list[str] = []
    cursor = None
    while True:
        page = index.search(SearchQuery(text="sunset hikers bay ", match="any", size=2, cursor=cursor))
        paged += iter_ids(page.hits)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert paged == everything
    # A cursor belongs to its way of matching too.
    first = index.search(SearchQuery(text="sunset hikers bay ", match="any", size=2))
    assert first.next_cursor is not None
    with pytest.raises(InvalidRequestError):
        index.search(SearchQuery(text="sunset hikers bay ", size=2, cursor=first.next_cursor))


def test_keyword_search_is_case_insensitive(index: ImageIndex) -> None:
    load(index, TEXT_DOCS)
    assert iter_ids(index.search(SearchQuery(text="MOUNTAIN")).hits) == ["other"]


def test_last_word_matches_as_prefix(index: ImageIndex) -> None:
    load(index, TEXT_DOCS)
    assert iter_ids(index.search(SearchQuery(text="mount")).hits) == ["other"]
    assert iter_ids(index.search(SearchQuery(text="cafe espres")).hits) == ["ocr"]


def test_highlights_mark_ocr_matches_and_escape_html(index: ImageIndex) -> None:
    load(index, TEXT_DOCS)
    index.upsert("html", {"ocr_text": "<b>espresso</b> & cake"})
    hits = {h.id: h for h in index.search(SearchQuery(text="espresso")).hits}
    assert "<mark>espresso</mark>" in hits["ocr"].highlights["ocr_text"][0]
    assert hits["html"].highlights["ocr_text"][0].startswith("&lt;b&gt;<mark>espresso</mark>&lt;/b&gt; &amp; cake")


HOSTILE = [
    '"',
    '""',
    "*",
    "NEAR(",
    "NEAR(a b, 2)",
    "AND",
    "OR NOT",
    "-",
    ":",
    "name_text:",
    "name_text:sunset",
    "sunset*",
    "^sunset",
    "'; DROP TABLE docs; --",
    "\x00",
    "(((",
    ")",
    "{labels}: x",
    "a" * 5000,
    "🙂",
    "sunset " * 200,
    "caf\u0065\u0301",
    "+sunset -bay",
    "sunset AND",
    "\\",
    "%_",
    "NOT sunset",
]


@pytest.mark.parametrize("text", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_query_text_never_errors(index: ImageIndex, text: str) -> None:
    load(index, TEXT_DOCS)
    result = index.search(SearchQuery(text=text, facets=("labels",)))
    assert result.total == len(result.hits) <= len(TEXT_DOCS)
    assert index.count() == len(TEXT_DOCS)


@pytest.mark.parametrize("text", ["", "   ", '"*"', "-:()", "\x00"])
def test_text_without_words_finds_nothing(index: ImageIndex, text: str) -> None:
    load(index, TEXT_DOCS)
    result = index.search(SearchQuery(text=text, facets=("labels",)))
    assert result.hits == [] and result.total == 0 and result.next_cursor is None


def test_operators_in_text_are_plain_words(index: ImageIndex) -> None:
    load(index, TEXT_DOCS)
    index.upsert("near", {"caption": "near the sunset, not far"})
    # Quoted as words: "NEAR" and "NOT" must occur, they are not FTS operators.
    assert iter_ids(index.search(SearchQuery(text="NEAR sunset NOT")).hits) == ["near"]


# -- sorting and paging -----------------------------------------------------------------------------


def dated_docs(n: int, start_minute: int = 0) -> dict[str, dict[str, Any]]:
    # Pairs of documents share a timestamp, so the id tie-break is exercised.
    return {
        f"p{start_minute + i:03d}": {
            "tenant": "t1",
            "uploaded_at": f"2024-05-01T10:{(start_minute + i) // 2:02d}:00Z",
            "caption": "kitten " * (1 + i % 3) + "filler " * (5 - i % 3),
            "caption_vector": unit_axis(0) + 0.01 * (i + 1) * unit_axis(1 + i % 5),
        }
        for i in range(n)
    }


@pytest.mark.parametrize("sort", ["newest", "oldest", "relevance"])
def test_listing_pages_cover_everything_once(index: ImageIndex, sort: str) -> None:
    load(index, dated_docs(23))
    query = SearchQuery(filters=Filters(tenant="t1"), sort=sort, size=4)  # type: ignore[arg-type]
    whole = iter_ids(index.search(dataclasses.replace(query, size=100)).hits)
    assert len(whole) == 23
    assert all_pages(index, query) == whole
    timestamps = [uploaded_at(index, i) for i in whole]
    if sort == "oldest":
        assert timestamps == sorted(timestamps)
    else:  # relevance has no meaning without text or vector: newest first
        assert timestamps == sorted(timestamps, reverse=True)


def uploaded_at(index: ImageIndex, doc_id: str) -> str:
    doc = index.get(doc_id)
    assert doc is not None
    return str(doc["uploaded_at"])


def test_documents_without_upload_time_list_last_when_newest_first(index: ImageIndex) -> None:
    load(index)
    assert iter_ids(index.search(SearchQuery(sort="newest")).hits) == ["c", "b", "d", "a", "e"]
    assert iter_ids(index.search(SearchQuery(sort="oldest")).hits) == ["e", "a", "d", "b", "c"]


def writer(index: ImageIndex) -> Callable[[int], None]:
    """Adds matching documents between pages: newer, older and equal to the ones being paged."""

    def add(page: int) -> None:
        docs = dated_docs(3, start_minute=100 + page * 3)
        docs[f"old{page}"] = {**docs.popitem()[1], "uploaded_at": "2020-01-01T00:00:00Z"}
        docs[f"tie{page}"] = {**docs.popitem()[1], "uploaded_at": "2024-05-01T10:05:00Z"}
        assert index.upsert_many(list(docs.items())) == [None] * len(docs)

    return add


@pytest.mark.parametrize("sort", ["newest", "oldest"])
def test_paging_is_stable_while_documents_are_added(index: ImageIndex, sort: str) -> None:
    load(index, dated_docs(23))
    query = SearchQuery(filters=Filters(tenant="t1"), sort=sort, size=4)  # type: ignore[arg-type]
    whole = iter_ids(index.search(dataclasses.replace(query, size=100)).hits)
    assert all_pages(index, query, between=writer(index)) == whole


@pytest.mark.parametrize("sort", ["relevance", "newest", "oldest"])
def test_keyword_paging_is_stable_while_documents_are_added(index: ImageIndex, sort: str) -> None:
    # Every caption has six words and one to three "kitten"s: bm25 orders by that count, then by id.
    # New matching documents change corpus statistics (and so every score) between pages; the other
    # documents keep "kitten" rare enough for its idf to move.
    load(index, dated_docs(23))
    load(index, {f"other{i}": {"caption": "puppy " * 6} for i in range(60)})
    query = SearchQuery(text="kitten", sort=sort, size=4)  # type: ignore[arg-type]
    whole = iter_ids(index.search(dataclasses.replace(query, size=100)).hits)
    assert len(whole) == 23
    assert all_pages(index, query, between=writer(index)) == whole
    if sort == "relevance":
        counts = [str(index.get(i)).count("kitten") for i in whole]
        assert counts == sorted(counts, reverse=True)
    # Hits carry their relevance score whatever the order.
    by_relevance = {h.id: h.score for h in index.search(dataclasses.replace(query, sort="relevance", size=100)).hits}
    for hit in index.search(dataclasses.replace(query, size=100)).hits:
        assert hit.score > 0
        if hit.id in whole:
            assert hit.score == pytest.approx(by_relevance[hit.id])


@pytest.mark.parametrize("sort", ["relevance", "newest", "oldest"])
def test_vector_paging_is_stable_while_documents_are_added(index: ImageIndex, sort: str) -> None:
    load(index, dated_docs(23))
    query = SearchQuery(vector=VectorQuery("caption_vector", unit_axis(0), k=17), sort=sort, size=5)  # type: ignore[arg-type]
    whole = index.search(dataclasses.replace(query, size=100))
    assert whole.total == 17 and len(whole.hits) == 17
    assert all_pages(index, query, between=writer(index)) == iter_ids(whole.hits)


def test_cursor_of_another_query_is_refused(index: ImageIndex) -> None:
    load(index, dated_docs(10))
    first = index.search(SearchQuery(text="kitten", size=2))
    assert first.next_cursor is not None
    for other in (
        SearchQuery(text="filler", size=2, cursor=first.next_cursor),
        SearchQuery(text="kitten", size=2, sort="newest", cursor=first.next_cursor),
        SearchQuery(text="kitten", size=2, filters=Filters(tenant="t2"), cursor=first.next_cursor),
        SearchQuery(size=2, cursor=first.next_cursor),
    ):
        with pytest.raises(InvalidRequestError):
            index.search(other)
    # Page size and facets may change between pages.
    index.search(SearchQuery(text="kitten", size=5, facets=("labels",), cursor=first.next_cursor))


@pytest.mark.parametrize("cursor", ["", "garbage", "eyJ2IjoxfQ", "!!!", "a" * 10_000, "bnVsbA"])
def test_malformed_cursor_is_refused(index: ImageIndex, cursor: str) -> None:
    load(index, dated_docs(3))
    with pytest.raises(InvalidRequestError):
        index.search(SearchQuery(size=1, cursor=cursor or "="))


# -- vector search ----------------------------------------------------------------------------------


def vector_corpus(index: ImageIndex, n: int, seed: int) -> tuple[list[str], dict[str, dict[str, Any]]]:
    rng = np.random.default_rng(seed)
    docs: dict[str, dict[str, Any]] = {}
    for i in range(n):
        docs[f"v{i:04d}"] = {
            "tenant": "t1" if rng.random() < 0.8 else "t2",
            "format": str(rng.choice(["jpeg", "png", "webp"], p=[0.7, 0.2, 0.1])),
            "labels": [
                str(x) for x in rng.choice(["cat", "dog", "car", "tree"], size=int(rng.integers(1, 3)), replace=False)
            ],
            "width": int(rng.integers(100, 5000)),
            "caption_vector": rng.standard_normal(CAPTION_DIM).astype(np.float32),
        }
    load(index, docs)
    return list(docs), docs


def brute_force(
    stored: dict[str, npt.NDArray[np.float32]],
    docs: dict[str, dict[str, Any]],
    query: npt.NDArray[np.float32],
    keep: Callable[[dict[str, Any]], bool],
    k: int,
) -> list[str]:
    """The exact filtered top k over the vectors as the index stored them."""
    q = query.astype(np.float64) / np.linalg.norm(query)
    scored = sorted((-float(stored[i].astype(np.float64) @ q), i) for i, doc in docs.items() if keep(doc))
    return [doc_id for _, doc_id in scored[:k]]


RECALL_FILTERS: list[tuple[Filters, Callable[[dict[str, Any]], bool]]] = [
    (Filters(), lambda d: True),
    (Filters(tenant="t1"), lambda d: d["tenant"] == "t1"),
    (Filters(tenant="t2", formats=("webp",)), lambda d: d["tenant"] == "t2" and d["format"] == "webp"),
    (Filters(labels=("cat", "tree")), lambda d: {"cat", "tree"} <= set(d["labels"])),
    (Filters(formats=("png",), min_width=4000), lambda d: d["format"] == "png" and d["width"] >= 4000),
    (Filters(exclude_ids=("v0001", "v0002")), lambda d: True),
]


@pytest.mark.parametrize(("filters", "keep"), RECALL_FILTERS, ids=[repr(f) for f, _ in RECALL_FILTERS])
def test_filtered_knn_matches_brute_force(
    index: ImageIndex, filters: Filters, keep: Callable[[dict[str, Any]], bool]
) -> None:
    _, docs = vector_corpus(index, 400, seed=5)
    if filters.exclude_ids:
        docs = {k: v for k, v in docs.items() if k not in filters.exclude_ids}
    stored = {doc_id: index.get_vectors(doc_id)["caption_vector"] for doc_id in docs}
    rng = np.random.default_rng(6)
    for _ in range(3):
        q = unit(rng)
        result = index.search(SearchQuery(vector=VectorQuery("caption_vector", q, k=15), filters=filters, size=15))
        expected = brute_force(stored, docs, q, keep, 15)
        assert iter_ids(result.hits) == expected  # recall 1.0, same order
        assert result.total == len(expected)
        assert all(h.source == "vector" for h in result.hits)
        assert all("caption_vector" not in h.doc for h in result.hits)


def test_min_similarity_drops_weaker_hits(index: ImageIndex) -> None:
    ids, docs = vector_corpus(index, 200, seed=7)
    q = np.asarray(docs[ids[0]]["caption_vector"], dtype=np.float32)
    everything = index.search(SearchQuery(vector=VectorQuery("caption_vector", q, k=200), size=200)).hits
    threshold = everything[9].score
    kept = index.search(
        SearchQuery(vector=VectorQuery("caption_vector", q, k=200, min_similarity=threshold), size=200)
    ).hits
    assert iter_ids(kept) == iter_ids(everything)[: len(kept)]
    assert len(kept) >= 10 and all(h.score >= threshold for h in kept)
    assert everything[len(kept)].score < threshold
    assert kept[0].id == ids[0] and kept[0].score == pytest.approx(1.0, abs=2e-3)


def test_knn_k_bounds_the_result_set(index: ImageIndex) -> None:
    vector_corpus(index, 50, seed=8)
    result = index.search(
        SearchQuery(
            vector=VectorQuery("caption_vector", unit(np.random.default_rng(9)), k=7), size=3, facets=("format",)
        )
    )
    assert result.total == 7 and len(result.hits) == 3
    assert sum(b.count for b in result.facets["format"]) == 7


@pytest.mark.parametrize("sort", ["relevance", "newest", "oldest"])
def test_deep_knn_pages_hold_whole_documents_and_facet_like_one_page(index: ImageIndex, sort: str) -> None:
    """k far above the page size (semantic and similar ask for 1000 hits to show 20): paging through the
    hits gives the documents, order, total and facets of asking for every hit at once (a cluster ranks such
    searches on doc values and reads only each page's documents)."""
    ids, docs = vector_corpus(index, 60, seed=12)
    for i, doc_id in enumerate(ids):
        docs[doc_id]["uploaded_at"] = f"{2019 + i % 4}-03-0{1 + i % 7}T08:{i % 60:02d}:00Z"
        if i % 3 == 0:
            docs[doc_id]["taken_at"] = f"{2010 + i % 5}-07-01T12:00:00+02:00"
        docs[doc_id]["key"] = f"photos/{doc_id}.jpg"
    load(index, docs)
    probe = unit(np.random.default_rng(13))
    facets = ("labels", "format", "year")
    deep = SearchQuery(vector=VectorQuery("caption_vector", probe, k=40), size=4, sort=sort, facets=facets)  # type: ignore[arg-type]
    whole = index.search(dataclasses.replace(deep, size=40))
    first = index.search(deep)
    assert first.total == whole.total == 40
    assert first.facets == whole.facets
    assert sum(b.count for b in first.facets["format"]) == 40
    assert all_pages(index, deep) == iter_ids(whole.hits)
    for hit in first.hits:
        assert hit.doc["key"] == f"photos/{hit.id}.jpg" and hit.doc["labels"] == docs[hit.id]["labels"]
        assert "caption_vector" not in hit.doc


def test_knn_on_an_empty_field_finds_nothing(index: ImageIndex) -> None:
    load(index)
    result = index.search(SearchQuery(vector=VectorQuery("caption_vector", unit(np.random.default_rng(1)))))
    assert result.hits == [] and result.total == 0


# -- near duplicates --------------------------------------------------------------------------------


def flip(phash: str, bits: list[int]) -> str:
    value = int(phash, 16)
    for b in bits:
        value ^= 1 << b
    return f"{value:016x}"


def test_near_duplicates_by_hamming_distance(index: ImageIndex) -> None:
    base = "0f0f0f0f0f0f0f0f"
    docs = {
        "same": {"phash": base, "tenant": "t1"},
        "one": {"phash": flip(base, [0]), "tenant": "t1"},
        "one-b": {"phash": flip(base, [63]), "tenant": "t2"},
        "three": {"phash": flip(base, [1, 20, 40]), "tenant": "t1"},
        "far": {"phash": flip(base, list(range(0, 64, 2))), "tenant": "t1"},
        "nohash": {"tenant": "t1"},
    }
    load(index, docs)
    hits = index.near_duplicates(base, 3)
    assert [(h.id, h.distance) for h in hits] == [("same", 0), ("one", 1), ("one-b", 1), ("three", 3)]
    assert all(h.source == "hash" for h in hits)
    assert hits[0].doc["phash"] == base
    assert [h.id for h in index.near_duplicates(base, 0)] == ["same"]
    assert [h.id for h in index.near_duplicates(base, 3, Filters(tenant="t1"))] == ["same", "one", "three"]
    assert [h.id for h in index.near_duplicates(base, 3, size=2)] == ["same", "one"]
    assert [h.id for h in index.near_duplicates(base, 64, Filters(exclude_ids=("same",)))] == [
        "one",
        "one-b",
        "three",
        "far",
    ]
    assert [h.id for h in index.near_duplicates(base.upper(), 1)] == ["same", "one", "one-b"]


def test_near_duplicates_see_updates(index: ImageIndex) -> None:
    index.upsert("x", {"phash": "0000000000000000"})
    assert [h.id for h in index.near_duplicates("0000000000000000", 0)] == ["x"]
    index.upsert("x", {"phash": "ffffffffffffffff"})
    assert index.near_duplicates("0000000000000000", 10) == []
    assert [h.distance for h in index.near_duplicates("fffffffffffffff0", 10)] == [4]


@pytest.mark.parametrize(
    ("phash", "distance"), [("xyz", 3), ("0" * 15, 3), ("0" * 17, 3), ("0" * 16, -1), ("0" * 16, 65)]
)
def test_near_duplicates_validate_input(index: ImageIndex, phash: str, distance: int) -> None:
    with pytest.raises(InvalidRequestError):
        index.near_duplicates(phash, distance)


# -- request validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        SearchQuery(size=0),
        SearchQuery(size=100_000),
        SearchQuery(facets=("colour",)),  # type: ignore[arg-type]
        SearchQuery(facet_size=0),
        SearchQuery(sort="random"),  # type: ignore[arg-type]
        SearchQuery(text="cat", vector=VectorQuery("caption_vector", unit_axis(0))),
        SearchQuery(vector=VectorQuery("caption_vector", unit_axis(0), k=0)),
        SearchQuery(vector=VectorQuery("no_such_vector", unit_axis(0))),
        SearchQuery(vector=VectorQuery("caption_vector", np.zeros(CAPTION_DIM, dtype=np.float32))),
        SearchQuery(vector=VectorQuery("caption_vector", unit_axis(0), min_similarity=2.0)),
    ],
    ids=lambda q: repr(q)[:60],
)
def test_invalid_queries_are_request_errors(index: ImageIndex, query: SearchQuery) -> None:
    index.upsert("x", {"caption_vector": unit_axis(1)})
    with pytest.raises(InvalidRequestError):
        index.search(query)
