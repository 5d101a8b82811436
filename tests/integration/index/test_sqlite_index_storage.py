"""What only the embedded SQLite backend promises: WAL, processes sharing one file, schema, validation."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from pixdex.errors import BackendUnavailableError, IndexMappingError, InvalidRequestError
from pixdex.index import sqlite as sqlite_backend
from pixdex.index.base import Filters, SearchQuery, VectorQuery, iter_ids
from pixdex.index.sqlite import SCHEMA_VERSION, SqliteIndex

DIM = 16


def vec(*hot: int, dim: int = DIM) -> npt.NDArray[np.float32]:
    v = np.full(dim, 0.01, dtype=np.float32)
    for i in hot:
        v[i] = 1.0
    return v


def knn_ids(index: SqliteIndex, query: npt.NDArray[np.float32], k: int = 10, **kw: Any) -> list[str]:
    return iter_ids(index.search(SearchQuery(vector=VectorQuery("clip_vector", query, k=k), size=k, **kw)).hits)


# -- file, schema, lifecycle ------------------------------------------------------------------------


def test_file_uses_wal_and_records_the_schema_version(ix: SqliteIndex, path: Path) -> None:
    ix.upsert("x", {"name_text": "x"})
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("SELECT max(version) FROM schema_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        raw.close()
    assert ix.stats()["schema_version"] == SCHEMA_VERSION


def test_ensure_is_idempotent_and_data_survives_reopening(ix: SqliteIndex, path: Path) -> None:
    ix.upsert("x", {"name_text": "hello", "clip_vector": vec(1)})
    ix.ensure()
    ix.close()
    again = SqliteIndex(path)
    again.ensure()
    assert again.get("x") == {"name_text": "hello"}
    assert knn_ids(again, vec(1)) == ["x"]
    again.close()


def test_using_an_index_before_ensure_is_backend_unavailable(path: Path) -> None:
    index = SqliteIndex(path)
    with pytest.raises(BackendUnavailableError, match="ensure"):
        index.upsert("x", {"name_text": "x"})
    with pytest.raises(BackendUnavailableError):
        index.search(SearchQuery())
    index.close()


def test_a_newer_schema_is_refused(ix: SqliteIndex, path: Path) -> None:
    ix.close()
    raw = sqlite3.connect(path)
    raw.execute("INSERT INTO schema_version (version, applied_at) VALUES (?, 'later')", (SCHEMA_VERSION + 1,))
    raw.commit()
    raw.close()
    with pytest.raises(IndexMappingError, match="newer"):
        SqliteIndex(path).ensure()


def test_closed_index_refuses_work(ix: SqliteIndex) -> None:
    ix.close()
    with pytest.raises(BackendUnavailableError):
        ix.get("x")


def test_stats_report_vectors_and_size(ix: SqliteIndex) -> None:
    ix.upsert("x", {"clip_vector": vec(1), "caption_vector": np.ones(384, dtype=np.float32)})
    ix.upsert("y", {"clip_vector": vec(2)})
    stats = ix.stats()
    assert stats["documents"] == 2
    assert stats["vectors"] == {"clip_vector": {"count": 2, "dim": DIM}, "caption_vector": {"count": 1, "dim": 384}}
    assert stats["file_bytes"] > 0


def test_statistics_are_gathered_as_the_collection_grows(ix: SqliteIndex, path: Path) -> None:
    ix.upsert_many([(f"d{i}", {"tenant": "t", "format": "jpeg"}) for i in range(sqlite_backend.ANALYZE_MIN_DOCS)])
    raw = sqlite3.connect(path)
    try:
        tables = {r[0] for r in raw.execute("SELECT tbl FROM sqlite_stat1")}
    finally:
        raw.close()
    assert "docs" in tables


# -- processes and handles sharing one file ---------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    from pathlib import Path
    from pixdex.index.sqlite import SqliteIndex

    index = SqliteIndex(Path(sys.argv[1]))
    index.ensure()
    hot = np.full(16, 0.01, dtype=np.float32)
    hot[5] = 1.0
    index.upsert("new", {"tenant": "t", "labels": ["fresh"], "caption": "written elsewhere",
                         "clip_vector": hot, "phash": "00000000000000ff"})
    index.upsert("moved", {"clip_vector": hot * 2})
    assert index.delete("gone")
    index.close()
    """
)


def seed(index: SqliteIndex) -> None:
    index.upsert_many(
        [
            ("moved", {"tenant": "t", "labels": ["old"], "clip_vector": vec(1), "phash": "0000000000000000"}),
            ("gone", {"tenant": "t", "labels": ["old"], "clip_vector": vec(5, 6), "phash": "0000000000000001"}),
            ("stays", {"tenant": "t", "labels": ["old"], "clip_vector": vec(2), "phash": "000000000000000f"}),
        ]
    )


def warm(index: SqliteIndex) -> None:
    """Fill every in-memory copy and remembered count, so stale copies would show."""
    knn_ids(index, vec(5))
    index.near_duplicates("0000000000000000", 64)
    index.search(SearchQuery(filters=Filters(tenant="t"), facets=("labels",)))


def assert_sees_other_writer(index: SqliteIndex) -> None:
    assert index.get("new") is not None and index.get("gone") is None
    assert knn_ids(index, vec(5), k=2) == ["moved", "new"]  # same vector: id order
    assert "gone" not in knn_ids(index, vec(5, 6))
    dups = {h.id: h.distance for h in index.near_duplicates("0000000000000000", 64)}
    assert dups == {"moved": 0, "stays": 4, "new": 8}
    listing = index.search(SearchQuery(filters=Filters(tenant="t"), facets=("labels",)))
    assert listing.total == 3
    assert [(b.value, b.count) for b in listing.facets["labels"]] == [("old", 2), ("fresh", 1)]
    assert iter_ids(index.search(SearchQuery(text="elsewhere")).hits) == ["new"]


def test_reader_process_sees_writes_of_another_process(ix: SqliteIndex, path: Path) -> None:
    seed(ix)
    warm(ix)
    subprocess.run([sys.executable, "-c", CHILD, str(path)], check=True, timeout=120)
    assert_sees_other_writer(ix)


def test_second_handle_in_one_process_sees_writes(ix: SqliteIndex, path: Path) -> None:
    seed(ix)
    warm(ix)
    other = SqliteIndex(path)
    other.upsert(
        "new",
        {
            "tenant": "t",
            "labels": ["fresh"],
            "caption": "written elsewhere",
            "clip_vector": vec(5),
            "phash": "00000000000000ff",
        },
    )
    other.upsert("moved", {"clip_vector": vec(5) * 2})
    assert other.delete("gone")
    other.close()
    assert_sees_other_writer(ix)


WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from pixdex.index.sqlite import SqliteIndex

    index = SqliteIndex(Path(sys.argv[1]), busy_timeout_ms=30000)
    index.ensure()
    for i in range(40):
        index.upsert(f"{sys.argv[2]}-{i}", {"tenant": sys.argv[2], "caption": f"doc {i}"})
    index.close()
    """
)


def test_concurrent_writer_processes_lose_nothing(ix: SqliteIndex, path: Path) -> None:
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), f"w{n}"]) for n in range(3)]
    # This process reads while they write: WAL readers never wait for the writer.
    while any(p.poll() is None for p in procs):
        ix.search(SearchQuery(text="doc", facets=("format",)))
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    assert ix.count() == 120
    assert all(ix.count(Filters(tenant=f"w{n}")) == 40 for n in range(3))


def test_a_held_write_lock_reads_fine_and_times_writes_out(ix: SqliteIndex, path: Path) -> None:
    ix.upsert("x", {"name_text": "x"})
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        quick = SqliteIndex(path, busy_timeout_ms=50)
        assert quick.get("x") == {"name_text": "x"}
        with pytest.raises(BackendUnavailableError) as err:
            quick.upsert("y", {"name_text": "y"})
        assert err.value.retryable
        quick.close()
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    ix.upsert("y", {"name_text": "y"})
    assert ix.count() == 2


def test_purging_the_deletion_log_reloads_other_readers(
    ix: SqliteIndex, path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_backend, "PURGE_AFTER_DELETES", 3)
    ix.upsert_many([(f"d{i}", {"clip_vector": vec(i % DIM), "phash": f"{i:016x}"}) for i in range(10)])
    warm(ix)
    writer = SqliteIndex(path)
    for i in range(4):
        assert writer.delete(f"d{i}")
    writer.upsert("d9", {"clip_vector": vec(0), "phash": "0000000000000000"})
    writer.close()
    assert knn_ids(ix, vec(0), k=1) == ["d9"]
    assert not {"d0", "d1", "d2", "d3"} & set(knn_ids(ix, vec(0), k=10))
    assert len(knn_ids(ix, vec(0), k=10)) == 6
    dups = [h.id for h in ix.near_duplicates("0000000000000000", 64)]
    assert dups[0] == "d9" and sorted(dups) == [f"d{i}" for i in range(4, 10)]


# -- k-NN in both tiers -----------------------------------------------------------------------------


@pytest.mark.parametrize("exact_vector_values", [10**9, 1], ids=["exact", "two-stage"])
def test_knn_is_exact_when_the_best_rows_fail_the_filter(path: Path, exact_vector_values: int) -> None:
    # The rows nearest the query all belong to tenant "near"; the filters keep the far ones. In the
    # two-stage tier the half-size filter is scored exactly, the unfiltered query through the int8 scan.
    ix = SqliteIndex(path, exact_vector_values=exact_vector_values)
    ix.ensure()
    rng = np.random.default_rng(11)
    query = vec(0)
    docs: dict[str, dict[str, Any]] = {}
    for i in range(600):
        near = i < 300
        v = query * (3.0 if near else 0.0) + rng.standard_normal(DIM).astype(np.float32)
        docs[f"d{i:03d}"] = {"tenant": "near" if near else "far", "width": int(rng.integers(0, 100)), "clip_vector": v}
    assert ix.upsert_many(list(docs.items())) == [None] * len(docs)
    stored = {k: ix.get_vectors(k)["clip_vector"].astype(np.float64) for k in docs}
    q = query.astype(np.float64) / np.linalg.norm(query)
    cases: list[tuple[Filters, Callable[[dict[str, Any]], bool]]] = [
        (Filters(tenant="far"), lambda d: d["tenant"] == "far"),
        (Filters(tenant="far", min_width=90), lambda d: d["tenant"] == "far" and d["width"] >= 90),
        (Filters(), lambda d: True),
    ]
    for filters, keep in cases:
        expected = sorted((-float(stored[k] @ q), k) for k, d in docs.items() if keep(d))[:25]
        assert knn_ids(ix, query, k=25, filters=filters) == [k for _, k in expected]
    assert ix.stats()["vector_search"]["clip_vector"] == (
        "exact" if exact_vector_values > 1 else "int8 scan + exact rerank"
    )
    ix.close()


def test_vector_paging_and_scores_agree_across_tiers(path: Path) -> None:
    rng = np.random.default_rng(12)
    items = [(f"d{i:04d}", {"tenant": "t", "clip_vector": rng.standard_normal(DIM)}) for i in range(2000)]
    exact = SqliteIndex(path)
    exact.ensure()
    exact.upsert_many(items)
    two_stage = SqliteIndex(path, exact_vector_values=1)
    query = SearchQuery(vector=VectorQuery("clip_vector", vec(3), k=300), size=40, filters=Filters(tenant="t"))
    pages = []
    for index in (exact, two_stage):
        ids: list[str] = []
        scores: list[float] = []
        cursor = None
        while True:
            page = index.search(SearchQuery(vector=query.vector, size=40, filters=query.filters, cursor=cursor))
            ids += iter_ids(page.hits)
            scores += [h.score for h in page.hits]
            cursor = page.next_cursor
            if cursor is None:
                break
        pages.append((ids, scores))
    assert len(pages[0][0]) == 300 == len(set(pages[0][0]))
    assert pages[0][0] == pages[1][0]
    np.testing.assert_allclose(pages[0][1], pages[1][1], atol=1e-6)
    exact.close()
    two_stage.close()


def test_stats_count_vectors_without_reading_every_blob(ix: SqliteIndex) -> None:
    ix.upsert_many([(f"d{i}", {"clip_vector": vec(i % DIM)}) for i in range(30)])
    ix.delete("d3")
    ix.upsert("d4", {"clip_vector": None})
    assert ix.stats()["vectors"]["clip_vector"]["count"] == 28  # from the table
    knn_ids(ix, vec(1))
    ix.delete("d5")
    assert ix.stats()["vectors"]["clip_vector"]["count"] == 27  # from the in-memory copy, followed


# -- validation -------------------------------------------------------------------------------------

BAD_FIELDS: list[dict[str, Any]] = [
    {"width": "10"},
    {"width": 10.5},
    {"face_count": True},
    {"has_text": "yes"},
    {"nsfw_score": "high"},
    {"taken_at": "yesterday"},
    {"uploaded_at": 1700000000},
    {"phash": "xyz"},
    {"phash": "0" * 15},
    {"sha256": "abc"},
    {"labels": "cat"},
    {"labels": ["cat", 1]},
    {"caption": {"text": "x"}},
    {"tenant": 7},
    {"score": float("nan")},
    {"blob": b"bytes"},
    {"clip_vector": [1.0, float("nan")]},
    {"clip_vector": [0.0, 0.0]},
    {"clip_vector": [[1.0, 2.0]]},
    {"clip_vector": "not a vector"},
    {"clip_vector": []},
]


@pytest.mark.parametrize("fields", BAD_FIELDS, ids=[repr(f)[:40] for f in BAD_FIELDS])
def test_malformed_fields_are_mapping_errors_and_store_nothing(ix: SqliteIndex, fields: dict[str, Any]) -> None:
    ix.upsert("x", {"name_text": "before"})
    with pytest.raises(IndexMappingError):
        ix.upsert("x", {"name_text": "after", **fields})
    with pytest.raises(IndexMappingError):
        ix.upsert("y", fields)
    assert ix.get("x") == {"name_text": "before"}
    assert ix.get("y") is None
    assert ix.search(SearchQuery(text="after")).total == 0


@pytest.mark.parametrize("doc_id", ["", "x" * 513])
def test_document_ids_are_bounded(ix: SqliteIndex, doc_id: str) -> None:
    with pytest.raises(IndexMappingError):
        ix.upsert(doc_id, {"name_text": "x"})


def test_null_clears_a_field_and_a_vector(ix: SqliteIndex) -> None:
    ix.upsert("x", {"format": "png", "clip_vector": vec(1)})
    ix.upsert("x", {"format": None, "clip_vector": None})
    assert ix.get("x") == {"format": None}
    assert ix.get_vectors("x") == {}
    assert ix.count(Filters(formats=("png",))) == 0
    assert knn_ids(ix, vec(1)) == []


# -- text analysis of this backend ------------------------------------------------------------------


def test_text_folds_diacritics_and_stems(ix: SqliteIndex) -> None:
    ix.upsert("x", {"caption": "Café with two cats"})
    assert iter_ids(ix.search(SearchQuery(text="cafe cat")).hits) == ["x"]
    assert iter_ids(ix.search(SearchQuery(text="CAFÉ")).hits) == ["x"]


def test_stored_text_cannot_forge_highlights(ix: SqliteIndex) -> None:
    ix.upsert("x", {"ocr_text": "menu \x02fake\x03 of the day"})
    [hit] = ix.search(SearchQuery(text="menu")).hits
    assert hit.highlights["ocr_text"] == ["<mark>menu</mark>  fake  of the day"]


def test_one_handle_serves_many_threads(ix: SqliteIndex) -> None:
    ix.upsert_many([(f"d{i}", {"tenant": "t", "caption": f"cat {i}", "clip_vector": vec(i % DIM)}) for i in range(50)])
    errors: list[BaseException] = []

    def read() -> None:
        try:
            for i in range(30):
                assert ix.search(SearchQuery(text="cat", size=5, facets=("labels",))).total >= 50
                assert len(knn_ids(ix, vec(i % DIM), k=3)) == 3
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    def write() -> None:
        try:
            for i in range(50, 80):
                ix.upsert(f"d{i}", {"tenant": "t", "caption": f"cat {i}", "clip_vector": vec(i % DIM)})
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=read) for _ in range(4)] + [threading.Thread(target=write)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert ix.count() == 80


def test_knn_after_every_vector_is_gone_finds_nothing_and_still_checks_dimensions(ix: SqliteIndex) -> None:
    ix.upsert_many([("a", {"clip_vector": vec(1)}), ("b", {"clip_vector": vec(2)})])
    assert knn_ids(ix, vec(1)) == ["a", "b"]
    ix.delete("a")
    ix.delete("b")
    assert knn_ids(ix, vec(1)) == []
    with pytest.raises(InvalidRequestError):
        knn_ids(ix, np.ones(DIM + 1, dtype=np.float32))
