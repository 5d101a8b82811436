"""Opaque cursors: round trip, binding to the query that made them, refusal of anything else."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from pixdex.errors import InvalidRequestError
from pixdex.index.base import Filters, SearchQuery, VectorQuery
from pixdex.index.cursor import MAX_CURSOR_CHARS, Cursor, decode_cursor, encode_cursor, query_shape


def test_round_trip_is_url_safe() -> None:
    cursor = Cursor(shape="abc", after=(0.1 + 0.2, "id/with+chars?"), pin=12)
    token = encode_cursor(cursor)
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert decode_cursor(token, "abc") == cursor


def test_float_sort_keys_survive_exactly() -> None:
    score = float(np.float32(0.7312345))
    assert decode_cursor(encode_cursor(Cursor("s", (score, "x"))), "s").after[0] == score


def test_cursor_of_another_shape_is_refused() -> None:
    token = encode_cursor(Cursor(shape="one", after=(1, "x")))
    with pytest.raises(InvalidRequestError, match="different query"):
        decode_cursor(token, "two")


def _token(payload: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "token",
    [
        "",
        "%%%",
        "a" * (MAX_CURSOR_CHARS + 1),
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
        _token([1, 2]),
        _token({"v": 2, "s": "s", "a": [], "p": None}),
        _token({"v": 1, "s": 5, "a": [], "p": None}),
        _token({"v": 1, "s": "s", "a": "x", "p": None}),
        _token({"v": 1, "s": "s", "a": [{"x": 1}], "p": None}),
        _token({"v": 1, "s": "s", "a": [True], "p": None}),
        _token({"v": 1, "s": "s", "a": [1], "p": 1.5}),
        _token({"v": 1, "s": "s", "a": [1], "p": [1]}),
    ],
)
def test_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(InvalidRequestError):
        decode_cursor(token, "s")


def test_shape_ignores_page_size_facets_and_cursor() -> None:
    base = SearchQuery(text="cat", filters=Filters(tenant="t"))
    assert query_shape(base) == query_shape(
        SearchQuery(text="cat", filters=Filters(tenant="t"), size=3, facets=("labels",), cursor="x")
    )


@pytest.mark.parametrize(
    "other",
    [
        SearchQuery(text="dog", filters=Filters(tenant="t")),
        SearchQuery(text="cat", filters=Filters(tenant="u")),
        SearchQuery(text="cat", filters=Filters(tenant="t", labels=("a",))),
        SearchQuery(text="cat", filters=Filters(tenant="t"), sort="newest"),
        SearchQuery(filters=Filters(tenant="t")),
        SearchQuery(vector=VectorQuery("image_vector", np.ones(3, dtype=np.float32)), filters=Filters(tenant="t")),
    ],
)
def test_shape_changes_with_what_decides_the_hits(other: SearchQuery) -> None:
    assert query_shape(SearchQuery(text="cat", filters=Filters(tenant="t"))) != query_shape(other)


def test_vector_shape_depends_on_vector_k_and_threshold() -> None:
    v = np.arange(4, dtype=np.float32)
    shape = query_shape(SearchQuery(vector=VectorQuery("image_vector", v)))
    assert shape == query_shape(SearchQuery(vector=VectorQuery("image_vector", v.copy())))
    assert shape != query_shape(SearchQuery(vector=VectorQuery("image_vector", v + 1)))
    assert shape != query_shape(SearchQuery(vector=VectorQuery("image_vector", v, k=11)))
    assert shape != query_shape(SearchQuery(vector=VectorQuery("image_vector", v, min_similarity=0.5)))
    assert shape != query_shape(SearchQuery(vector=VectorQuery("caption_vector", v)))
