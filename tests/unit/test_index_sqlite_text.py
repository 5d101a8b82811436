"""Pure parts of the SQLite backend: the FTS5 query it builds from user text, and date handling."""

from __future__ import annotations

import sqlite3

import pytest

from pixdex.errors import IndexMappingError, InvalidRequestError
from pixdex.index.sqlite import fts_match_expression


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cat", '("cat" OR "cat"*)'),
        ("cat ", '"cat"'),
        ("ca", '"ca"'),  # too short to expand
        ("beach sunset", '"beach" AND ("sunset" OR "sunset"*)'),
        ('"NEAR(a b)" AND', '"NEAR" AND "a" AND "b" AND ("AND" OR "AND"*)'),
        ("name_text:cat*", '"name" AND "text" AND "cat"'),
        ("l'été", '"l" AND ("été" OR "été"*)'),
        ("ﬁsh", '("fish" OR "fish"*)'),  # NFKC: the ligature is two letters
        ("", None),
        ('"*-:()^', None),
    ],
)
def test_match_expression(text: str, expected: str | None) -> None:
    assert fts_match_expression(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a chinese temple", '"chinese" OR ("temple" OR "temple"*)'),
        ("The cat of the ", '"cat"'),
        ("NOT sunset AND", '"sunset"'),  # stop words in any case; FTS5's operators are words here anyway
        ("the of a", None),
    ],
)
def test_any_word_expression(text: str, expected: str | None) -> None:
    assert fts_match_expression(text, match="any") == expected


def test_token_count_is_bounded() -> None:
    expression = fts_match_expression(" ".join(f"w{i}" for i in range(100)))
    assert expression is not None
    assert expression.count(" AND ") == 31


@pytest.mark.parametrize("text", ['"', "*", "NEAR(", "AND", "-", ":", "a:b", "x OR", "NOT y", "(z", "^", "'", "\x00a"])
def test_every_expression_is_valid_fts5(text: str) -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE VIRTUAL TABLE t USING fts5(a, b, tokenize = 'porter unicode61 remove_diacritics 2')")
    conn.execute("INSERT INTO t VALUES ('a b', 'x y z near and not or')")
    expression = fts_match_expression(text)
    if expression is not None:
        conn.execute("SELECT rowid FROM t WHERE t MATCH ?", (expression,)).fetchall()


def test_dates_compare_as_utc_instants() -> None:
    from pixdex.index.sqlite import _instant_us

    assert _instant_us("2024-01-01T01:00:00+01:00", "d", InvalidRequestError) == _instant_us(
        "2024-01-01T00:00:00Z", "d", InvalidRequestError
    )
    assert _instant_us("2024-01-01", "d", InvalidRequestError) == _instant_us(
        "2024-01-01T00:00:00", "d", InvalidRequestError
    )
    assert _instant_us("1969-12-31T23:59:59.999999Z", "d", InvalidRequestError) == -1
    with pytest.raises(IndexMappingError):
        _instant_us("31/12/2024", "d", IndexMappingError)
