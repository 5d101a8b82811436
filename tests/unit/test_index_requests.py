"""The search-cluster request builders: every body checked against the OpenSearch API specification,
and the pure logic behind them (query words, filters, dates, hashes, scores, document checks)."""

from __future__ import annotations

import itertools
import json
from typing import Any

import numpy as np
import pytest

from pixdex.errors import IndexMappingError, InvalidRequestError
from pixdex.index import requests as rq
from pixdex.index import sqlite as sqlite_backend
from pixdex.index.base import FACET_NAMES, Filters, SearchQuery, VectorQuery, validate_query
from pixdex.index.elasticsearch import ElasticsearchDialect
from pixdex.index.mapping import (
    CREATED_FIELD,
    ID_FIELD,
    PHASH_BITS_FIELD,
    PHASH_PARTS_FIELD,
    KnnSettings,
    hamming,
    initial_dims,
    phash_bytes,
    phash_parts,
    prepare_fields,
    read_shape,
    strip_internal,
)
from pixdex.index.opensearch import (
    RetryPolicy,
    _Pin,
    aws_endpoint,
    error_of,
    facets_from_docs,
    parse_facets,
    parse_target,
)
from tests.opensearch_spec import SKIP_REASON, SPEC_ROOT, SpecError, load_spec

needs_spec = pytest.mark.skipif(not SPEC_ROOT.is_dir(), reason=SKIP_REASON)
OS = rq.OpenSearchDialect()
KNN = KnnSettings()
V217 = rq.ClusterVersion("opensearch", (2, 17, 0))
V211 = rq.ClusterVersion("opensearch", (2, 11, 0))
ALIAS = "pixdex-images"

EVERY_FILTER = Filters(
    tenant="t1", formats=("jpeg", "png"), labels=("cat", "animal"), cameras=("Canon EOS R5",),
    min_width=10, max_width=5000, min_height=10, max_height=5000, min_bytes=1, max_bytes=10**12,
    taken_after="2020-01-01", taken_before="2021-06-01T11:00:00+01:00", uploaded_after="2024-01-01T00:15:00Z",
    uploaded_before="2024-01-02", has_text=True, min_faces=0, max_faces=3, max_nsfw=0.2, sha256="B" * 64,
    exclude_ids=("a", "e"),
)
FILTERS = [Filters(), Filters(tenant="t1"), Filters(exclude_ids=("x",)), Filters(labels=("a",)), EVERY_FILTER]


def built_requests() -> list[tuple[str, rq.Request]]:
    """One of every request the backend sends, in every shape it takes."""
    out: list[tuple[str, rq.Request]] = [
        ("info", rq.info()),
        ("get alias", rq.get_alias(ALIAS)),
        ("index exists", rq.index_exists(ALIAS)),
        ("get mapping", rq.get_mapping(f"{ALIAS}-v1")),
        ("delete index", rq.delete_index(f"{ALIAS}-v1")),
        ("refresh", rq.refresh_index(f"{ALIAS}-v2")),
        ("swap alias", rq.swap_alias(ALIAS, [f"{ALIAS}-v1"], f"{ALIAS}-v2")),
        ("add vector field", OS.add_vector_field(ALIAS, "clip_vector", 512, KNN)),
        ("get doc", rq.get_doc(ALIAS, "id/with spaces", excludes=rq.SOURCE_EXCLUDES)),
        ("get vectors", rq.get_doc(ALIAS, "x", includes=("image_vector", "caption_vector"))),
        ("get vectors of many", rq.mget(ALIAS, ["a", "id/with spaces"], includes=("image_vector", "crop_vector"))),
        ("delete doc", rq.delete_doc(ALIAS, "x", "wait_for")),
        ("delete doc no refresh", rq.delete_doc(ALIAS, "x", None)),
        ("create pit", OS.create_pit(ALIAS, "2m")),
        ("delete pit", OS.delete_pit("c29tZSBwaXQ=")),
    ]
    for bits, serverless in itertools.product((True, False), (True, False)):
        out.append((f"create index bits={bits} serverless={serverless}",
                    OS.create_index(f"{ALIAS}-v1", alias=ALIAS, dims=initial_dims(), knn=KNN, phash_bits=bits,
                                    serverless=serverless)))
    out.append(("create version", OS.create_index(f"{ALIAS}-v2", alias=None, dims=initial_dims({"clip_vector": 512}),
                                                  knn=KnnSettings(space_type="cosinesimil"), phash_bits=True)))
    out.append(("create index lucene", OS.create_index(f"{ALIAS}-v1", alias=ALIAS, dims=initial_dims(),
                                                       knn=KnnSettings(engine="lucene"), phash_bits=True)))
    doc = prepare_fields("a", {"name_text": "x", "phash": "0f0f0f0f0f0f0f0f", "gps": {"lat": 1.0, "lon": 2.0},
                               "caption_vector": np.ones(384, dtype=np.float32), "derivatives": {"t": {"w": 1}}},
                         initial_dims(), phash_bits=True)
    for mode in ("script", "merge"):
        out.append((f"bulk {mode}", rq.bulk(rq.update_lines(ALIAS, "a", doc, created_ms=5, mode=mode), "wait_for")))
    copy_lines = [*rq.index_lines(f"{ALIAS}-v2", "a", doc), {"create": {"_index": f"{ALIAS}-v2", "_id": "b"}}, doc]
    out.append(("bulk copy", rq.bulk(copy_lines, None)))
    for i, f in enumerate(FILTERS):
        out.append((f"count {i}", rq.count(ALIAS, rq.bool_query(f))))
        for sort, text in itertools.product(("relevance", "newest", "oldest"), (None, "sunset over the BAY caf")):
            text_q = rq.text_query(text) if text else None
            body = rq.search_body(
                query=rq.bool_query(
                    f, must=[text_q] if text_q else (), extra_filters=[rq.pin_clause(1_700_000_000_000)]
                ),
                sort=rq.sort_clause(sort, by_score=text_q is not None),  # type: ignore[arg-type]
                size=21,
                search_after=[1.5, "x"] if text_q and sort == "relevance" else [-(2**63), "x"],
                aggs=rq.facet_aggs(FACET_NAMES, 10),
                with_highlight=text_q is not None,
                track_scores=text_q is not None,
                pit=("cGl0", "2m") if i % 2 else None,
            )
            out.append((f"search {i} {sort} text={bool(text)}", rq.search(ALIAS, body)))
        for version in (V217, V211, None):
            out.append((f"knn {i} {version}", OS.knn_search(
                ALIAS, field_name="caption_vector", vector=[0.5] * 384, k=15,
                filter_query=rq.bool_query(f, extra_filters=[rq.pin_clause(1)]), knn=KNN, version=version)))
        out.append((f"knn ranked on doc values {i}", OS.knn_search(
            ALIAS, field_name="image_vector", vector=[0.5] * 1280, k=1000,
            filter_query=rq.bool_query(f, extra_filters=[rq.pin_clause(1)]), knn=KNN, version=V217,
            source=False, docvalue_fields=rq.RANKING_FIELDS)))
        out.append((f"hamming {i}", OS.hamming_search(
            ALIAS, phash="0f0f0f0f0f0f0f0f", k=40,
            filter_query=rq.bool_query(f, extra_filters=[rq.exists_query("phash")]), version=V217)))
        for d in (0, 3, 7):
            candidates = rq.phash_candidates_query("00ff00ff00ff00ff", d)
            body = rq.search_body(query=rq.bool_query(f, extra_filters=[candidates]),
                                  sort=[{ID_FIELD: {"order": "asc"}}], size=1000, search_after=["x"], source=["phash"])
            out.append((f"hash candidates {i} d={d}", rq.search(ALIAS, body)))
    fresh = rq.search_body(query={"bool": {"must": [rq.text_query("kitten")], "filter": [rq.ids_query(["p1"])]}},
                           sort=None, size=1, source=False, pit=("cGl0", "2m"))
    out.append(("boundary score", rq.search(ALIAS, fresh)))
    any_word = rq.text_query("a chinese temple on the hil", "any")
    assert any_word is not None
    out.append(("any word", rq.search(ALIAS, rq.search_body(
        query=rq.bool_query(FILTERS[-1], must=[any_word]), sort=rq.sort_clause("relevance", by_score=True),
        size=20, with_highlight=True, track_scores=True, aggs=rq.facet_aggs(FACET_NAMES, 10)))))
    out.append(("fetch by ids", rq.search(ALIAS, rq.search_body(query=rq.ids_query(["a", "b"]), sort=None, size=2))))
    return out


BUILT = built_requests()


@needs_spec
@pytest.mark.parametrize(("name", "request_"), BUILT, ids=[name for name, _ in BUILT])
def test_every_request_fits_the_opensearch_specification(name: str, request_: rq.Request) -> None:
    load_spec().validate(request_)


@needs_spec
def test_bulk_update_payloads_are_valid_update_bodies() -> None:
    spec = load_spec()
    for mode in ("script", "merge"):
        _, payload = rq.update_lines(ALIAS, "a", {"x": {"y": 1}}, created_ms=1, mode=mode)
        spec.validate(rq.Request("POST", "/{index}/_update/{id}", {"index": ALIAS, "id": "a"}, body=payload))


@needs_spec
@pytest.mark.parametrize("bad", [
    rq.search(ALIAS, {"query": {"mtach": {"caption": "x"}}}),
    rq.search(ALIAS, {"query": {"knn": {"caption_vector": {"vector": [1.0], "k": 1, "filtr": {}}}}}),
    rq.search(ALIAS, {"size": 0, "aggs": {"f": {"terms": {"field": "format", "ordr": {"_count": "desc"}}}}}),
    rq.search(ALIAS, {"query": {"range": {"taken_at": {"gte": 5, "format": "epoch_millis"}}}}),
    rq.Request("PUT", "/{index}", {"index": "x"}, body={"mappings": {"properties": {
        "v": {"type": "knn_vector", "dimension": 3, "methd": {"name": "hnsw"}}}}}),
    rq.Request("POST", "/_bulk", body=[{"update": {"_index": "x", "_id": "1"}}, {"doc": {}, "doc_as_upsrt": True}],
               ndjson=True),
    rq.Request("GET", "/{index}/_doc/{id}", {"index": "x", "id": "y"}, params={"_source_exclude": "a"}),
    rq.Request("POST", "/{index}/_pit", {"index": "x"}, params={"keep_alive": "1m"}),  # Elasticsearch only
    rq.Request("DELETE", "/{index}/_doc/{id}", {"index": "x", "id": "y"}, params={"refresh": "sometimes"}),
], ids=["query typo", "knn typo", "terms typo", "numeric date bound", "mapping typo", "bulk typo",
        "param typo", "es endpoint", "refresh value"])
def test_the_specification_check_can_fail(bad: rq.Request) -> None:
    with pytest.raises(SpecError):
        load_spec().validate(bad)


@needs_spec
def test_elasticsearch_shares_the_validated_bodies() -> None:
    """Only the vector mapping, the knn option and the point in time differ; the rest is the same."""
    es = ElasticsearchDialect()
    spec = load_spec()
    body = es.create_index("x-v1", alias="x", dims=initial_dims(), knn=KNN, phash_bits=False).body
    assert "knn" not in body["settings"]
    assert body["mappings"]["properties"]["caption_vector"] == {
        "type": "dense_vector", "dims": 384, "index": True, "similarity": "dot_product",
        "index_options": {"type": "hnsw", "m": 16, "ef_construction": 128}}
    shared = {k: v for k, v in body["mappings"]["properties"].items() if "vector" not in k}
    mappings = {**body["mappings"], "properties": shared}
    shared_body = {"settings": body["settings"], "mappings": mappings}
    spec.validate(rq.Request("PUT", "/{index}", {"index": "x-v1"}, body=shared_body))
    knn = es.knn_search("x", field_name="caption_vector", vector=[0.1] * 384, k=20, filter_query={"match_all": {}},
                        knn=KNN, version=None).body
    assert knn["knn"]["num_candidates"] == 128 and knn["knn"]["k"] == 20 and knn["size"] == 20
    assert es.create_pit("x", "1m").endpoint == "/{index}/_pit" and es.pit_id({"id": "abc"}) == "abc"
    assert es.delete_pit("abc").body == {"id": "abc"}


# -- words -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "tokens", "prefix"), [
    ("sunset bay", ["sunset", "bay"], True),
    ("sunset bay ", ["sunset", "bay"], False),
    ("ba", ["ba"], False),
    ('name_text:sunset "NEAR(" -x*', ["name", "text", "sunset", "NEAR", "x"], False),
    ("caf\u0065\u0301", ["café"], True),
    ("🙂 \x00 -:()", [], False),
    ("a " * 50, ["a"] * 32, False),
])
def test_query_words(text: str, tokens: list[str], prefix: bool) -> None:
    assert rq.query_tokens(text) == (tokens, prefix)


def test_every_word_must_match_in_some_field() -> None:
    query = rq.text_query("not sunset")
    assert query is not None
    first, last = query["bool"]["must"]
    assert first["multi_match"]["query"] == "not" and first["multi_match"]["operator"] == "and"
    # Stop words still match through the plain sub-fields.
    assert "caption.std^2" in first["multi_match"]["fields"] and "name_text^4" in first["multi_match"]["fields"]
    started = last["bool"]["should"][1]["multi_match"]
    assert started["type"] == "phrase_prefix" and all(f.split("^")[0].endswith(".std") for f in started["fields"])
    assert rq.text_query("'\"") is None


def test_any_word_ors_the_words_that_are_not_stop_words() -> None:
    query = rq.text_query("A temple on the hil", "any")
    assert query is not None
    clauses = query["bool"]["should"]
    assert query["bool"]["minimum_should_match"] == 1 and "must" not in query["bool"]
    assert clauses[0]["multi_match"]["query"] == "temple"
    # The last word is still being typed: it matches as a prefix too.
    assert clauses[1]["bool"]["should"][0]["multi_match"]["query"] == "hil"
    assert clauses[1]["bool"]["should"][1]["multi_match"]["type"] == "phrase_prefix"
    assert len(clauses) == 2
    assert rq.text_query("the of a", "any") is None
    assert rq.text_query("the of a", "all") is not None


# -- filters -----------------------------------------------------------------------------------------


def test_date_bounds_are_inclusive_instants_in_milliseconds() -> None:
    must, _ = rq.filter_clauses(Filters(taken_after="2021-06-01T12:00:00.0005+02:00", taken_before="2030-01-01"))
    bounds = must[0]["range"]["taken_at"]
    assert bounds == {"gte": "1622541600001", "lte": "1893456000000", "format": "epoch_millis"}


def test_integer_bounds_are_clamped_to_the_field_type() -> None:
    must, _ = rq.filter_clauses(Filters(min_width=-(10**12), max_width=10**12, max_bytes=10**30))
    assert must[0]["range"]["width"] == {"gte": -(2**31), "lte": 2**31 - 1}
    assert must[1]["range"]["bytes"] == {"lte": 2**63 - 1}


@pytest.mark.parametrize("bad", [
    Filters(taken_after="yesterday"), Filters(uploaded_before="2024-13-01"),
    Filters(min_width="wide"),  # type: ignore[arg-type]
    Filters(max_nsfw=float("nan")), Filters(labels="cat"),  # type: ignore[arg-type]
    Filters(min_faces=True),
])
def test_bad_filter_values_are_request_errors(bad: Filters) -> None:
    with pytest.raises(InvalidRequestError):
        rq.filter_clauses(bad)


def test_all_labels_must_be_present_and_sha256_ignores_case() -> None:
    must, must_not = rq.filter_clauses(EVERY_FILTER)
    assert {"term": {"labels.keyword": "cat"}} in must and {"term": {"labels.keyword": "animal"}} in must
    assert {"term": {"sha256": "b" * 64}} in must
    assert must_not == [{"ids": {"values": ["a", "e"]}}]


def test_queries_are_validated_like_the_embedded_backend() -> None:
    assert (rq.MAX_QUERY_TOKENS, rq.MIN_PREFIX_CHARS) == (
        sqlite_backend.MAX_QUERY_TOKENS, sqlite_backend.MIN_PREFIX_CHARS)
    v = np.ones(4, dtype=np.float32)
    for bad in (SearchQuery(size=0), SearchQuery(text="a", vector=VectorQuery("caption_vector", v)),
                SearchQuery(vector=VectorQuery("x", v)), SearchQuery(facets=("colour",)),  # type: ignore[arg-type]
                SearchQuery(vector=VectorQuery("caption_vector", v, min_similarity=True))):
        with pytest.raises(InvalidRequestError):
            validate_query(bad)


# -- documents ---------------------------------------------------------------------------------------


def test_prepared_documents_carry_unit_vectors_and_hash_encodings() -> None:
    doc = prepare_fields("id1", {"caption_vector": [3.0, 4.0], "phash": "80000000000000FF", "format": "png"},
                         {"caption_vector": 2}, phash_bits=True)
    assert doc["caption_vector"] == pytest.approx([0.6, 0.8])
    assert doc[PHASH_PARTS_FIELD] == ["0:80", "1:00", "2:00", "3:00", "4:00", "5:00", "6:00", "7:ff"]
    assert doc[PHASH_BITS_FIELD] == [-128, 0, 0, 0, 0, 0, 0, -1]
    assert doc[ID_FIELD] == "id1"
    assert strip_internal({**doc, CREATED_FIELD: 1}) == {"phash": "80000000000000FF", "format": "png"}
    cleared = prepare_fields("id1", {"phash": None, "caption_vector": None}, {}, phash_bits=True)
    assert cleared[PHASH_PARTS_FIELD] is None and cleared[PHASH_BITS_FIELD] is None
    assert cleared["caption_vector"] is None


@pytest.mark.parametrize("fields", [
    {"caption_vector": [1.0, 0.0, 0.0]},  # dimension 3, index has 2
    {"caption_vector": [0.0, 0.0]},
    {"width": 2**31}, {"width": "10"}, {"has_text": 1}, {"nsfw_score": float("inf")},
    {"sha256": "xyz"}, {"phash": "0" * 15}, {"labels": "cat"}, {"labels": ["cat", 1]},
    {"taken_at": "2024-01-01 10:00:00"}, {"taken_at": "2024-13-01"}, {"gps": {"lat": 91, "lon": 0}},
    {"gps": [1.0, 2.0]}, {"caption": {"text": "x"}}, {"_id": "x"}, {"pixdex_id": "x"}, {"": 1},
    {"extra": float("nan")},
])
def test_documents_the_cluster_would_refuse_fail_before_sending(fields: dict[str, Any]) -> None:
    with pytest.raises(IndexMappingError):
        prepare_fields("id", fields, {"caption_vector": 2}, phash_bits=False)


@pytest.mark.parametrize("doc_id", ["", "x" * 513, "é" * 257])
def test_document_ids_fit_the_cluster_limit(doc_id: str) -> None:
    with pytest.raises(IndexMappingError):
        prepare_fields(doc_id, {}, {}, phash_bits=False)


def test_byte_pigeonhole_never_misses_a_hash_within_the_distance() -> None:
    rng = np.random.default_rng(3)
    for _ in range(2000):
        a = int(rng.integers(0, 2**63)) * 2 + int(rng.integers(0, 2))
        d = int(rng.integers(0, 8))
        bits = rng.choice(64, size=d, replace=False)
        b = a
        for bit in bits:
            b ^= 1 << int(bit)
        ha, hb = f"{a:016x}", f"{b:016x}"
        assert hamming(ha, hb) == d
        shared = len(set(phash_parts(ha)) & set(phash_parts(hb)))
        assert shared >= 8 - d
        query = rq.phash_candidates_query(ha, d)["bool"]
        assert query["minimum_should_match"] == 8 - d
    assert phash_bytes("ffffffffffffffff") == [-1] * 8


# -- scores, facets, cursors, connections ------------------------------------------------------------


@pytest.mark.parametrize("cos", [1.0, 0.6, 0.0, -0.3, -1.0 + 1e-6])
def test_engine_scores_map_back_to_cosine(cos: float) -> None:
    inner = 1.0 + cos if cos >= 0 else 1.0 / (1.0 - cos)
    assert OS.cosine(inner, KNN) == pytest.approx(cos)
    assert OS.cosine((1 + cos) / 2, KnnSettings(space_type="cosinesimil")) == pytest.approx(cos)
    assert ElasticsearchDialect().cosine((1 + cos) / 2, KNN) == pytest.approx(cos)


def test_year_facet_merges_taken_and_uploaded_years() -> None:
    aggs = {
        "year_taken": {"buckets": [
            {"key_as_string": "2021", "doc_count": 1}, {"key_as_string": "2024", "doc_count": 1}]},
        "year_uploaded": {"doc_count": 3, "years": {"buckets": [{"key_as_string": "2024", "doc_count": 2},
                                                               {"key_as_string": "2023", "doc_count": 1}]}},
        "labels": {"buckets": [{"key": "cat", "doc_count": 2}]},
    }
    facets = parse_facets(aggs, ["year", "labels", "format"], 2)
    assert [(b.value, b.count) for b in facets["year"]] == [("2024", 3), ("2021", 1)]
    assert [(b.value, b.count) for b in facets["labels"]] == [("cat", 2)] and facets["format"] == []
    docs: list[dict[str, Any]] = [
        {"taken_at": "2021-01-01T00:30:00+01:00", "labels": ["cat", "cat"]}, {"uploaded_at": "2024-05-01"},
        {"format": "png"}]
    from_docs = facets_from_docs(docs, ["year", "labels", "format"], 10)
    assert [(b.value, b.count) for b in from_docs["year"]] == [("2020", 1), ("2024", 1)]
    assert [(b.value, b.count) for b in from_docs["labels"]] == [("cat", 1)]


def test_pins_round_trip_and_reject_garbage() -> None:
    assert _Pin.decode(_Pin(5).encode()) == _Pin(5)
    assert _Pin.decode(_Pin(5, "a.b=").encode()) == _Pin(5, "a.b=")
    for bad in (-1, 1.5, "x.y", "5.", True, None):
        with pytest.raises(InvalidRequestError):
            _Pin.decode(bad)


def test_urls_and_endpoints() -> None:
    target = parse_target("https://user:p%40ss@example.com/search/")
    assert (target.host, target.port, target.prefix, target.username, target.password) == (
        "example.com", 443, "/search", "user", "p@ss")
    assert parse_target("http://localhost").port == 9200
    assert aws_endpoint("vpc-pix-x1.ap-south-1.es.amazonaws.com") == ("es", "ap-south-1")
    assert rq.Request("GET", "/{index}/_doc/{id}", {"index": "a", "id": "b/c d"}).path == "/a/_doc/b%2Fc%20d"
    lines = rq.bulk([{"delete": {"_index": "a", "_id": "1"}}], None).encoded_body()
    assert lines == b'{"delete":{"_index":"a","_id":"1"}}\n'


def test_backoff_is_bounded_and_honours_retry_after() -> None:
    policy = RetryPolicy(max_retries=5, base_s=0.1, cap_s=1.0)
    for attempt in range(8):
        assert 0 <= policy.delay(attempt) <= min(1.0, 0.1 * 2**attempt)
    assert policy.delay(0, retry_after=0.7) >= 0.7
    assert policy.delay(0, retry_after=60) <= 1.0


def test_error_bodies_are_read_whatever_their_shape() -> None:
    assert error_of({"error": {"type": "x", "reason": "y", "caused_by": {"type": "z", "reason": "w"}}}) == (
        "x", "y (z: w)")
    assert error_of({"error": "plain"}) == ("error", "plain")
    assert error_of("<html>bad gateway</html>")[1].startswith("<html>")


def test_the_live_mapping_is_read_back() -> None:
    body = OS.create_index("x", alias=None, dims={"caption_vector": 384}, knn=KNN, phash_bits=True).body
    shape = read_shape({"mappings": json.loads(json.dumps(body["mappings"]))}, OS.vector_type, OS.dim_key)
    assert shape.dims == {"caption_vector": 384} and shape.phash_bits
    with pytest.raises(IndexMappingError):
        read_shape({"mappings": {"properties": {}}}, OS.vector_type, OS.dim_key)


def test_the_knn_engine_is_a_setting_of_every_vector_field() -> None:
    body = OS.create_index("x", alias=None, dims={"caption_vector": 384}, knn=KnnSettings(engine="lucene"),
                           phash_bits=True).body
    assert body is not None
    props = body["mappings"]["properties"]
    assert props["caption_vector"]["method"]["engine"] == "lucene"
    assert props["pixdex_phash_bits"]["method"]["engine"] == "lucene"
    assert KnnSettings().engine == "faiss"  # AWS domains keep faiss
    with pytest.raises(ValueError, match="engine"):
        KnnSettings(engine="nmslib-typo")


def test_ranking_docs_read_doc_values_back_as_document_fields() -> None:
    doc = rq.ranking_doc({"labels.keyword": ["animal", "cat"], "format": ["jpeg"],
                          "uploaded_at": ["1700000000123"], "taken_at": ["-86400000"]})
    assert doc == {"labels": ["animal", "cat"], "format": "jpeg", "uploaded_at": "2023-11-14T22:13:20.123000Z",
                   "taken_at": "1969-12-31T00:00:00Z"}
    assert rq.ranking_doc({}) == {}
    assert rq.docvalue_request(("format", "uploaded_at")) == [
        {"field": "format"}, {"field": "uploaded_at", "format": "epoch_millis"}]
