"""Keyword search of the embedded backend from its in-memory postings matches FTS5's own MATCH and bm25.

The postings are a copy of what FTS5 holds, kept in step by generation; these tests compare every result
(ids, order, scores) with FTS5 queried directly on the same file, while other handles write.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pixdex.index import postings as postings_module
from pixdex.index.base import Filters, SearchQuery, TextMatch, iter_ids
from pixdex.index.sqlite import _SCORE, SqliteIndex, fts_match_expression

WORDS = (
    "cat cats catalog category caterpillar dog dogs running runner runs beach sunset café cafe naïve naive "
    "Ölfass über coffee menu receipt ticket whale 2024 42 IMG DSC rocks rocky tree trees"
).split()
FIELDS = ("name_text", "labels", "caption", "ocr_text", "tags", "exif_text")


def _text(rng: np.random.Generator, words: int) -> str:
    return " ".join(str(w) for w in rng.choice(WORDS, size=words))


def _doc(rng: np.random.Generator, i: int) -> dict[str, Any]:
    doc: dict[str, Any] = {"tenant": "t" if i % 5 else "u", "uploaded_at": f"2024-01-{1 + i % 28:02d}T00:00:00Z"}
    for field in FIELDS:
        if rng.random() < 0.6:
            words = int(rng.integers(1, 9))
            doc[field] = [_text(rng, 1) for _ in range(words)] if field == "labels" else _text(rng, words)
    return doc


QUERIES = [
    "cat",
    "cat ",
    "cats",
    "cafe",
    "CAFÉ ",
    "run",
    "runn",
    "naive beach",
    "dog cat",
    "cat dog ",
    "2024 menu",
    "ca",
    "über",
    "img 42",
    "rock",
    "zebra",
    "cat zebra",
    "tree trees",
]
# Descriptions as people type them: stop words among the words, a word no document has, a prefix.
ANY_QUERIES = [
    "a cat on the beach",
    "the whale",
    "zebra dog",
    "cat dog runn",
    "coffee menu receipt ",
    "of the",
    "2024 sunset naive",
]


def fts5_ranking(
    path: Path, text: str, filters: Filters | None = None, match_words: TextMatch = "all"
) -> list[tuple[str, float]]:
    """What FTS5 itself returns for the query: (id, -bm25) by score desc, id asc."""
    match = fts_match_expression(text, match=match_words)
    if match is None:
        return []
    tenant = "" if filters is None or filters.tenant is None else " AND d.tenant = ?"
    params: list[Any] = [match] + ([] if not tenant else [filters.tenant if filters else None])
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            f"SELECT d.id, {_SCORE} AS score FROM fts CROSS JOIN docs AS d ON d.seq = fts.rowid "
            f"WHERE fts MATCH ?{tenant} ORDER BY score DESC, d.id ASC",
            params,
        ).fetchall()
    finally:
        conn.close()
    return [(str(i), float(s)) for i, s in rows]


def assert_same_as_fts5(
    ix: SqliteIndex, path: Path, text: str, filters: Filters | None = None, match: TextMatch = "all"
) -> None:
    expected = fts5_ranking(path, text, filters, match)
    result = ix.search(SearchQuery(text=text, size=1000, filters=filters or Filters(), match=match))
    got = [(h.id, h.score) for h in result.hits]
    assert [i for i, _ in got] == [i for i, _ in expected], text
    np.testing.assert_allclose([s for _, s in got], [s for _, s in expected], rtol=1e-12, atol=1e-15)
    assert result.total == len(expected)


def test_results_and_scores_are_fts5s(ix: SqliteIndex, path: Path) -> None:
    rng = np.random.default_rng(21)
    assert ix.upsert_many([(f"d{i:03d}", _doc(rng, i)) for i in range(400)]) == [None] * 400
    for text in QUERIES:
        assert_same_as_fts5(ix, path, text)
        assert_same_as_fts5(ix, path, text, Filters(tenant="u"))
    for text in ANY_QUERIES:
        assert_same_as_fts5(ix, path, text, match="any")
        assert_same_as_fts5(ix, path, text, Filters(tenant="u"), match="any")


def test_any_word_scores_add_up_per_word(ix: SqliteIndex, path: Path) -> None:
    """OR over the postings: a document's score is the sum of its words' bm25 parts, as FTS5 sums them."""
    rng = np.random.default_rng(26)
    ix.upsert_many([(f"d{i:03d}", _doc(rng, i)) for i in range(300)])
    both = {h.id: h.score for h in ix.search(SearchQuery(text="whale menu ", size=1000, match="any")).hits}
    whale = {h.id: h.score for h in ix.search(SearchQuery(text="whale ", size=1000)).hits}
    menu = {h.id: h.score for h in ix.search(SearchQuery(text="menu ", size=1000)).hits}
    assert set(both) == set(whale) | set(menu) and set(whale) & set(menu)
    for doc_id, score in both.items():
        assert score == pytest.approx(whale.get(doc_id, 0.0) + menu.get(doc_id, 0.0), rel=1e-9)


def test_writes_of_other_handles_are_followed(ix: SqliteIndex, path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(postings_module, "TAIL_ENTRIES", 50)  # fold the tail into the base often
    rng = np.random.default_rng(22)
    ix.upsert_many([(f"d{i:03d}", _doc(rng, i)) for i in range(300)])
    assert_same_as_fts5(ix, path, "cat")  # loads the postings
    writer = SqliteIndex(path)
    try:
        for round_ in range(4):
            writer.upsert_many([(f"d{i:03d}", _doc(rng, i)) for i in rng.choice(300, 40, replace=False)])
            writer.upsert_many([(f"n{round_}-{i}", _doc(rng, i)) for i in range(25)])
            for i in rng.choice(300, 10, replace=False):
                writer.delete(f"d{i:03d}")
            writer.upsert(f"d{round_:03d}", {"caption": None, "labels": None, "name_text": "whale"})
            for text in QUERIES:
                assert_same_as_fts5(ix, path, text)
            for text in ANY_QUERIES:
                assert_same_as_fts5(ix, path, text, match="any")
    finally:
        writer.close()


def test_a_fresh_reader_and_a_following_reader_agree(ix: SqliteIndex, path: Path) -> None:
    rng = np.random.default_rng(23)
    ix.upsert_many([(f"d{i:03d}", _doc(rng, i)) for i in range(200)])
    ix.search(SearchQuery(text="cat"))
    ix.upsert_many([(f"d{i:03d}", _doc(rng, i)) for i in range(100, 260)])
    fresh = SqliteIndex(path)
    try:
        for text in QUERIES:
            a = ix.search(SearchQuery(text=text, size=1000))
            b = fresh.search(SearchQuery(text=text, size=1000))
            assert [(h.id, h.score) for h in a.hits] == [(h.id, h.score) for h in b.hits]
    finally:
        fresh.close()


def test_words_the_tokenizer_splits_are_phrases_as_in_fts5(ix: SqliteIndex, path: Path) -> None:
    # U+19B0 is a letter to Python's regular expressions but a separator to FTS5's unicode61:
    # "cat\u19b0dog" is the phrase "cat dog" to FTS5, and FTS5 answers such queries itself.
    ix.upsert_many(
        [
            ("a", {"caption": "a cat dog sleeping"}),
            ("b", {"caption": "dog cat"}),
            ("c", {"caption": "cat and dog"}),
        ]
    )
    for text in ("cat\u19b0dog", "cat\u19b0dog ", "\u19b0", "sleeping cat\u19b0dog"):
        assert_same_as_fts5(ix, path, text)
    assert iter_ids(ix.search(SearchQuery(text="cat\u19b0dog ")).hits) == ["a"]


def test_paging_by_relevance_covers_every_match_once(ix: SqliteIndex) -> None:
    rng = np.random.default_rng(24)
    ix.upsert_many([(f"d{i:03d}", _doc(rng, i)) for i in range(300)])
    everything = iter_ids(ix.search(SearchQuery(text="cat", size=1000)).hits)
    assert len(everything) > 50
    paged: list[str] = []
    cursor = None
    while True:
        page = ix.search(SearchQuery(text="cat", size=7, cursor=cursor))
        paged += iter_ids(page.hits)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert paged == everything


def test_occurrences_are_read_one_by_one_when_the_vocabulary_does_not_line_up(
    ix: SqliteIndex, path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disagree(*args: Any) -> None:
        raise postings_module.VocabularyMismatchError("simulated")

    monkeypatch.setattr(postings_module.Postings, "load", disagree)
    rng = np.random.default_rng(25)
    ix.upsert_many([(f"d{i:03d}", _doc(rng, i)) for i in range(150)])
    for text in QUERIES:
        assert_same_as_fts5(ix, path, text)
    for text in ANY_QUERIES:
        assert_same_as_fts5(ix, path, text, match="any")


def test_vocabulary_counts_must_add_up() -> None:
    postings = postings_module.Postings([1.0, 2.0])
    with pytest.raises(postings_module.VocabularyMismatchError):
        postings.load([("a", 2)], np.array([8], dtype=np.int64), np.array([1], dtype=np.int64))
    with pytest.raises(postings_module.VocabularyMismatchError):  # documents out of order within a term
        postings.load([("a", 2)], np.array([16, 8], dtype=np.int64), np.array([1, 2], dtype=np.int64))
    postings.load([("a", 2), ("b", 1)], np.array([8, 17, 16], dtype=np.int64), np.array([1, 2], dtype=np.int64))
    phrase = postings.phrase(["a"])
    assert phrase.seqs.tolist() == [1, 2] and phrase.freq.tolist() == [1.0, 2.0]
    assert postings.phrase(["a", "b"]).freq.tolist() == [1.0, 3.0]
    assert postings.phrase(["zzz"]).seqs.tolist() == []
