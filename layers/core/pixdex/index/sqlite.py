"""The embedded index: SQLite (stdlib sqlite3, WAL) for storage, searched through in-memory numpy copies.

Layout of the database file:
- ``docs``: one narrow row per document: the filter and facet fields, extracted into typed, indexed
  columns. ``seq`` (INTEGER PRIMARY KEY AUTOINCREMENT) is the insertion sequence: never reused, so a cursor
  pins "documents that existed at page 1" as ``seq <= pin``. Dates are UTC microseconds; a date without an
  offset is taken as UTC.
- ``bodies``: the JSON document (vector fields excluded) per ``seq``. Kept out of ``docs`` so that scans
  and joins over the filter columns read 10x fewer pages.
- ``doc_labels``: one row per (document, label), for all-of label filters and the labels facet.
- ``fts``: FTS5 over :data:`pixdex.document.TEXT_FIELDS` (rowid = ``seq``), ranked by bm25 with the column
  weights in :data:`BM25_WEIGHTS`.
- ``vectors``: unit-normalised float16 blobs per (field, document). A NULL blob is a tombstone.
- ``deleted_docs``: sequences of deleted documents, so other processes can drop them from memory.
- ``meta``: the generation counter (bumped by every write transaction), the fixed dimension per vector
  field, the generation of the last tombstone purge.

Concurrency: WAL lets one writer and many readers (threads or processes) work at once. Every write is one
short ``BEGIN IMMEDIATE`` transaction; every search runs in one read transaction, so all its statements
see one snapshot. Searches run on in-memory copies: the filter, sort and facet columns and perceptual
hashes (:class:`pixdex.index.columns.DocColumns`), the keyword postings
(:class:`pixdex.index.postings.Postings`) and the vectors (:class:`pixdex.index.vectors.VectorStore`).
Each query compares the stored generation with the one a copy reflects and, when any process wrote,
loads only the rows stamped with a newer generation (everything after a purge of the deletion log).
SQL then only fetches the page's documents. At 100k documents the index's share of a query is 1-12 ms
(duplicates to filtered similar with k = 1000); the copies take ~5 s to load on the first query and
540 MB of memory (5.4 GB and ~55 s at 1M). See docs/benchmarks.md, "## index internals".

Ordering and paging: relevance is (score desc, id asc); newest is (uploaded_at desc, id desc), oldest
(uploaded_at asc, id asc), documents without uploaded_at last when newest first. A plain listing has no
relevance and lists newest first. Cursors are keysets pinned to the highest ``seq`` of page 1, so
documents added later never shift, repeat or enter the pages; bm25 scores still drift with corpus
statistics, so a keyword cursor resumes after the boundary document's current score.

Facets count the whole result: every match of a keyword search or listing, the k hits of a vector
search. Keyword search ANDs the query's words over all text fields, or ORs its meaningful ones (``match="any"``);
see :func:`fts_match_expression`.
Its scores are FTS5's bm25, computed from the in-memory postings; queries whose words FTS5 would split
into phrases go to FTS5 itself.

Vector k-NN is exact while a field holds at most :data:`pixdex.index.vectors.EXACT_MAX_VALUES` values
(20k image vectors, 66k caption vectors); above that it scans an int8 copy and reranks a shortlist of
k + max(k/4, 256) rows exactly, recall@10 and recall@1000 1.000 measured at 100k and 1M (see
pixdex.index.vectors). Filters are applied before ranking, never after, so a filter can not drop hits; a
filter that leaves few candidates is always searched exactly.
"""

from __future__ import annotations

import html
import json
import re
import sqlite3
import threading
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from pixdex.document import HIGHLIGHT_FIELDS, TEXT_FIELDS, TEXT_WEIGHTS, VECTOR_FIELDS
from pixdex.errors import BackendUnavailableError, IndexMappingError, InvalidRequestError, PixdexError
from pixdex.index.base import (
    MAX_PAGE_SIZE,
    FacetBucket,
    Filters,
    Hit,
    SearchQuery,
    SearchResult,
    TextMatch,
    check_range,
    instant_us,
    meaningful_words,
    validate_query,
)
from pixdex.index.columns import NULL_INT, BoolArray, DocColumns, IdFetcher, IntpArray
from pixdex.index.cursor import Cursor, CursorValue, decode_cursor, encode_cursor, query_shape
from pixdex.index.postings import Phrase, Postings, Tokenizer, VocabularyMismatchError
from pixdex.index.vectors import (
    EXACT_MAX_VALUES,
    Int64Array,
    VectorStore,
    decode_half,
    encode_vector,
    phash_to_int,
    popcount64,
    unit_vector,
)

SCHEMA_VERSION: Final = 1

# bm25 weight per text column: the weights every backend uses (pixdex.document.TEXT_WEIGHTS).
BM25_WEIGHTS: Final[Mapping[str, float]] = TEXT_WEIGHTS
# Highlights are HTML-escaped text with matches wrapped in these tags, safe to render as-is.
HIGHLIGHT_PRE: Final = "<mark>"
HIGHLIGHT_POST: Final = "</mark>"

# Porter stemming ("cats" finds "cat") over Unicode words with accents folded ("cafe" finds "café").
TOKENIZER: Final = "porter unicode61 remove_diacritics 2"
MAX_QUERY_TOKENS: Final = 32
MAX_DOC_ID_CHARS: Final = 512
# Shorter prefixes expand to too many terms to be useful while typing.
MIN_PREFIX_CHARS: Final = 3
# Sort key of documents without uploaded_at: after every dated one when newest first.
UNDATED: Final = -(2**62)
# Deletions are logged so other processes can drop them from memory; past this many the log is
# cleared and readers reload their copies once.
PURGE_AFTER_DELETES: Final = 10_000
ANALYZE_MIN_DOCS: Final = 1000
# When more than this many documents (or a quarter of the collection) changed since a reader's copy of
# the keyword postings, it rereads the whole index instead of re-tokenising each document.
RELOAD_AFTER_CHANGES: Final = 20_000
# Prefix expansions remembered per generation.
PREFIX_CACHE: Final = 4096

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_TOKEN = re.compile(r"[^\W_]+")
_MARK_OPEN, _MARK_CLOSE = "\x02", "\x03"
_SCORE = "-bm25(fts, {})".format(", ".join(repr(BM25_WEIGHTS[f]) for f in TEXT_FIELDS))
_FTS_COLUMNS = ", ".join(TEXT_FIELDS)
_VECTOR_FIELD_LIST = ", ".join("?" * len(VECTOR_FIELDS))
# Document ids bound in one statement (SQLite allows 999 parameters in older builds).
_IDS_PER_STATEMENT = 500
# Occurrences are read as seq * 8 + column index.
assert len(TEXT_FIELDS) <= 8
_COLUMN_INDEX = "CASE col {} END".format(" ".join(f"WHEN '{f}' THEN {i}" for i, f in enumerate(TEXT_FIELDS)))
# The in-memory columns of each document, in DocColumns' terms.
_DOC_COLUMNS = (
    "seq, id, tenant, format, camera, year, "
    + ", ".join(
        f"ifnull({c}, {NULL_INT})" for c in ("width", "height", "bytes", "face_count", "taken_us", "uploaded_us")
    )
    + ", sort_us, ifnull(has_text, -1), nsfw_score, phash"
)
_DOC_COLUMN_NAMES = (
    "tenant",
    "format",
    "camera",
    "year",
    "width",
    "height",
    "bytes",
    "face_count",
    "taken_us",
    "uploaded_us",
    "sort_us",
    "has_text",
    "nsfw",
    "phash",
)

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL, applied_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('gen', 0), ('purged_gen', 0);
CREATE TABLE IF NOT EXISTS docs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    gen INTEGER NOT NULL,
    tenant TEXT, format TEXT, camera TEXT,
    width INTEGER, height INTEGER, bytes INTEGER, face_count INTEGER,
    has_text INTEGER, nsfw_score REAL,
    taken_us INTEGER, uploaded_us INTEGER, sort_us INTEGER NOT NULL, year INTEGER,
    sha256 TEXT, phash INTEGER
);
CREATE INDEX IF NOT EXISTS docs_tenant_sort ON docs (tenant, sort_us, id);
CREATE INDEX IF NOT EXISTS docs_sort ON docs (sort_us, id);
CREATE INDEX IF NOT EXISTS docs_tenant_format ON docs (tenant, format);
CREATE INDEX IF NOT EXISTS docs_tenant_camera ON docs (tenant, camera);
CREATE INDEX IF NOT EXISTS docs_tenant_year ON docs (tenant, year);
CREATE INDEX IF NOT EXISTS docs_taken ON docs (taken_us);
CREATE INDEX IF NOT EXISTS docs_sha256 ON docs (sha256);
CREATE INDEX IF NOT EXISTS docs_gen ON docs (gen);
CREATE TABLE IF NOT EXISTS bodies (seq INTEGER PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS doc_labels (
    doc INTEGER NOT NULL, label TEXT NOT NULL, PRIMARY KEY (doc, label)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS doc_labels_label ON doc_labels (label, doc);
CREATE VIRTUAL TABLE IF NOT EXISTS fts USING fts5(
    {_FTS_COLUMNS}, tokenize = '{TOKENIZER}', prefix = '3'
);
CREATE TABLE IF NOT EXISTS vectors (
    field TEXT NOT NULL, doc INTEGER NOT NULL, gen INTEGER NOT NULL, vec BLOB,
    UNIQUE (field, doc)
);
CREATE INDEX IF NOT EXISTS vectors_gen ON vectors (field, gen);
CREATE TABLE IF NOT EXISTS deleted_docs (seq INTEGER PRIMARY KEY, gen INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS deleted_docs_gen ON deleted_docs (gen);
"""


def _keyword_plan(text: str, match: TextMatch = "all") -> list[tuple[str, bool]]:
    """The words of a keyword query, each with whether it also matches as a prefix (the last word being
    typed: no trailing space and at least :data:`MIN_PREFIX_CHARS` characters). With ``match="any"`` stop
    words are left out (:func:`pixdex.index.base.meaningful_words`)."""
    normalized = unicodedata.normalize("NFKC", text)
    tokens = _TOKEN.findall(normalized)[:MAX_QUERY_TOKENS]
    if not tokens:
        return []
    last = tokens[-1]
    typing = len(last) >= MIN_PREFIX_CHARS and normalized.endswith(last)
    return [(tokens[i], typing and i == len(tokens) - 1) for i in meaningful_words(tokens, match)]


def fts_match_expression(text: str, *, any_word: bool = False, match: TextMatch = "all") -> str | None:
    """The FTS5 MATCH expression for user text, or None when it has no searchable token.

    Every token is quoted as an FTS5 string, so operators, column filters, quotes and stars in user input
    are plain words. With ``match="all"`` all tokens must match (AND); with ``match="any"`` any token that
    is not a stop word (OR). A last token being typed (no trailing space) also matches as a prefix; the
    exact term is OR-ed in so that whole-word matches rank first. ``any_word`` joins the words with OR
    whatever the match (to mark every word that occurs, for highlights).
    """
    plan = _keyword_plan(text, match)
    if not plan:
        return None
    parts = [f'("{t}" OR "{t}"*)' if prefix else f'"{t}"' for t, prefix in plan]
    return (" OR " if any_word or match == "any" else " AND ").join(parts)


@dataclass
class _VectorCache:
    """The in-memory copy of one vector field, and the generation it reflects."""

    store: VectorStore | None = None
    gen: int = -1


def _search_tier(store: VectorStore) -> str:
    if not store.two_stage:
        return "exact"
    codes = {"ready": "; threshold searches: SimHash shortlist + exact rerank",
             "building": "; threshold searches: SimHash codes being built"}.get(store.codes_state, "")
    return "int8 scan + exact rerank" + codes


class SqliteIndex:
    """:class:`pixdex.index.base.ImageIndex` on one SQLite file. Call :meth:`ensure` once before use.

    ``exact_vector_values``: a vector field holding more values (rows x dimensions) than this is searched
    in two stages (see :mod:`pixdex.index.vectors`).
    """

    def __init__(self, path: Path, *, busy_timeout_ms: int = 5000, exact_vector_values: int = EXACT_MAX_VALUES) -> None:
        self.path = Path(path)
        self._busy_timeout_ms = busy_timeout_ms
        self._exact_vector_values = exact_vector_values
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self._reset_copies()
        self._tokenizer: Tokenizer | None = None
        self._hl: sqlite3.Connection | None = None
        self._vocabulary_conn: sqlite3.Connection | None = None
        self._snapshot: tuple[int, int] | None = None

    def _reset_copies(self) -> None:
        self._vectors: dict[str, _VectorCache] = {}
        self._docs = DocColumns()
        self._docs_gen = -1
        self._postings = Postings([BM25_WEIGHTS[f] for f in TEXT_FIELDS])
        self._postings_gen = -1
        self._prefixes: dict[str, list[str]] = {}

    # -- lifecycle -------------------------------------------------------------------------------

    # -- lifecycle -------------------------------------------------------------------------------

    def ensure(self) -> None:
        with self._lock:
            conn = self._connection()
            try:
                version = self._schema_version(conn)
                if version == SCHEMA_VERSION:
                    return
                if version is not None and version > SCHEMA_VERSION:
                    raise IndexMappingError(
                        f"index schema version {version} is newer than this code understands ({SCHEMA_VERSION})",
                        path=str(self.path),
                    )
                # Persistent for the file: every later connection, in any process, uses WAL.
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("BEGIN IMMEDIATE")
                try:
                    if self._schema_version(conn) is None:
                        for statement in _SCHEMA.split(";\n"):
                            if statement.strip():
                                conn.execute(statement)
                        conn.execute(
                            "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                            (SCHEMA_VERSION, datetime.now(UTC).isoformat()),
                        )
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise _backend_error(exc, self.path) from exc

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            self._closed = True
            self._reset_copies()
            if self._tokenizer is not None:
                self._tokenizer.close()
                self._tokenizer = None
            if self._hl is not None:
                self._hl.close()
                self._hl = None

    def __enter__(self) -> SqliteIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writes ----------------------------------------------------------------------------------

    def upsert(self, doc_id: str, fields: Mapping[str, Any]) -> None:
        with self._write() as (conn, gen):
            self._upsert_one(conn, gen, doc_id, fields)

    def upsert_many(self, items: Sequence[tuple[str, Mapping[str, Any]]]) -> list[Exception | None]:
        results: list[Exception | None] = []
        # Bounded transactions keep the write lock short for other writers.
        chunk = 256
        for start in range(0, len(items), chunk):
            part = items[start : start + chunk]
            try:
                with self._write() as (conn, gen):
                    part_results: list[Exception | None] = []
                    for doc_id, fields in part:
                        conn.execute("SAVEPOINT item")
                        try:
                            self._upsert_one(conn, gen, doc_id, fields)
                        except (PixdexError, sqlite3.IntegrityError) as exc:
                            conn.execute("ROLLBACK TO item")
                            part_results.append(exc)
                        else:
                            part_results.append(None)
                        conn.execute("RELEASE item")
            except PixdexError as exc:
                part_results = [exc] * len(part)
            results.extend(part_results)
        return results

    def delete(self, doc_id: str) -> bool:
        with self._write() as (conn, gen):
            row = conn.execute("SELECT seq FROM docs WHERE id = ?", (doc_id,)).fetchone()
            if row is None:
                return False
            seq = int(row[0])
            conn.execute("DELETE FROM docs WHERE seq = ?", (seq,))
            conn.execute("DELETE FROM bodies WHERE seq = ?", (seq,))
            conn.execute("DELETE FROM doc_labels WHERE doc = ?", (seq,))
            conn.execute("DELETE FROM fts WHERE rowid = ?", (seq,))
            conn.execute(
                f"UPDATE vectors SET vec = NULL, gen = ? WHERE field IN ({_VECTOR_FIELD_LIST}) AND doc = ?",
                (gen, *VECTOR_FIELDS, seq),
            )
            conn.execute("INSERT INTO deleted_docs (seq, gen) VALUES (?, ?)", (seq, gen))
            (logged,) = conn.execute("SELECT count(*) FROM deleted_docs").fetchone()
            if logged >= PURGE_AFTER_DELETES:
                conn.execute("DELETE FROM deleted_docs")
                conn.execute("DELETE FROM vectors WHERE vec IS NULL")
                conn.execute("UPDATE meta SET value = ? WHERE key = 'purged_gen'", (gen,))
            return True

    def _upsert_one(self, conn: sqlite3.Connection, gen: int, doc_id: str, fields: Mapping[str, Any]) -> None:
        if not isinstance(doc_id, str) or not doc_id or len(doc_id) > MAX_DOC_ID_CHARS:
            raise IndexMappingError(f"document id must be 1..{MAX_DOC_ID_CHARS} characters", field="id")
        if not isinstance(fields, Mapping) or not all(isinstance(k, str) for k in fields):
            raise IndexMappingError("document fields must be a mapping with string keys", id=doc_id)
        vectors = {k: v for k, v in fields.items() if k in VECTOR_FIELDS}
        scalars = {k: v for k, v in fields.items() if k not in VECTOR_FIELDS}
        encoded = {name: self._encode_vector(conn, name, value) for name, value in vectors.items()}

        row = conn.execute(
            "SELECT d.seq, b.body FROM docs AS d JOIN bodies AS b ON b.seq = d.seq WHERE d.id = ?", (doc_id,)
        ).fetchone()
        body: dict[str, Any] = json.loads(row[1]) if row else {}
        body.update(scalars)
        try:
            body_json = json.dumps(body, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise IndexMappingError(f"document is not JSON: {exc}", id=doc_id) from None
        cols = _columns(body)
        names = list(cols)
        if row is None:
            cur = conn.execute(
                f"INSERT INTO docs (id, gen, {', '.join(names)}) VALUES (?, ?{', ?' * len(names)})",
                (doc_id, gen, *cols.values()),
            )
            seq = int(cur.lastrowid or 0)
            conn.execute("INSERT INTO bodies (seq, body) VALUES (?, ?)", (seq, body_json))
        else:
            seq = int(row[0])
            conn.execute(
                f"UPDATE docs SET gen = ?, {', '.join(f'{n} = ?' for n in names)} WHERE seq = ?",
                (gen, *cols.values(), seq),
            )
            conn.execute("UPDATE bodies SET body = ? WHERE seq = ?", (body_json, seq))
        if row is None or "labels" in scalars:
            conn.execute("DELETE FROM doc_labels WHERE doc = ?", (seq,))
            conn.executemany(
                "INSERT OR IGNORE INTO doc_labels (doc, label) VALUES (?, ?)",
                [(seq, label) for label in _labels(body)],
            )
        if row is None or any(f in scalars for f in TEXT_FIELDS):
            conn.execute("DELETE FROM fts WHERE rowid = ?", (seq,))
            texts = [_text(body.get(f), f) for f in TEXT_FIELDS]
            if any(texts):
                conn.execute(
                    f"INSERT INTO fts (rowid, {_FTS_COLUMNS}) VALUES (?{', ?' * len(TEXT_FIELDS)})",
                    (seq, *texts),
                )
        for name, blob in encoded.items():
            conn.execute(
                "INSERT INTO vectors (field, doc, gen, vec) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (field, doc) DO UPDATE SET gen = excluded.gen, vec = excluded.vec",
                (name, seq, gen, blob),
            )

    def _encode_vector(self, conn: sqlite3.Connection, name: str, value: Any) -> bytes | None:
        if value is None:
            return None
        unit = unit_vector(value, field=name)
        key = f"dim:{name}"
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row is None:
            conn.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (key, unit.size))
        elif int(row[0]) != unit.size:
            raise IndexMappingError(
                f"{name}: dimension {unit.size} does not match the index's {int(row[0])}",
                field=name,
                expected=int(row[0]),
                got=unit.size,
            )
        return encode_vector(unit)

    # -- reads -----------------------------------------------------------------------------------

    def get(self, doc_id: str) -> dict[str, Any] | None:
        with self._read() as conn:
            row = conn.execute(
                "SELECT b.body FROM docs AS d JOIN bodies AS b ON b.seq = d.seq WHERE d.id = ?", (doc_id,)
            ).fetchone()
        return dict(json.loads(row[0])) if row else None

    def get_vectors(self, doc_id: str) -> dict[str, npt.NDArray[np.float32]]:
        with self._read() as conn:
            # Naming the fields lets SQLite seek the (field, doc) index; "doc = ?" alone scanned the table
            # (0.3 s at 100k documents).
            rows = conn.execute(
                f"SELECT field, vec FROM vectors WHERE field IN ({_VECTOR_FIELD_LIST}) "
                "AND doc = (SELECT seq FROM docs WHERE id = ?) AND vec IS NOT NULL",
                (*VECTOR_FIELDS, doc_id),
            ).fetchall()
        return {name: np.frombuffer(blob, dtype="<f2").astype(np.float32) for name, blob in rows}

    def get_vectors_many(self, doc_ids: Sequence[str],
                         fields: Sequence[str]) -> dict[str, dict[str, npt.NDArray[np.float32]]]:
        names = [f for f in dict.fromkeys(fields) if f in VECTOR_FIELDS]
        out: dict[str, dict[str, npt.NDArray[np.float32]]] = {doc_id: {} for doc_id in doc_ids}
        ids = list(out)
        if not ids or not names:
            return out
        fields_sql = ", ".join("?" * len(names))
        # One read for all candidates: a query per document (its BEGIN, lock and seek) cost more than the
        # vectors themselves. Chunks stay under SQLite's bound-parameter limit.
        with self._read() as conn:
            for start in range(0, len(ids), _IDS_PER_STATEMENT):
                chunk = ids[start:start + _IDS_PER_STATEMENT]
                # CROSS JOIN keeps docs (sought by id) the outer loop; SQLite's own order scanned all vectors.
                rows = conn.execute(
                    "SELECT d.id, v.field, v.vec FROM docs AS d CROSS JOIN vectors AS v "
                    f"ON v.field IN ({fields_sql}) AND v.doc = d.seq "
                    f"WHERE d.id IN ({', '.join('?' * len(chunk))}) AND v.vec IS NOT NULL",
                    (*names, *chunk),
                ).fetchall()
                for doc_id, name, blob in rows:
                    out[doc_id][name] = np.frombuffer(blob, dtype="<f2").astype(np.float32)
        return out

    def count(self, filters: Filters | None = None) -> int:
        with self._read() as conn:
            docs = self._sync_docs(conn)
            return int(self._mask(conn, docs, filters or Filters(), docs.capacity).sum())

    def stats(self) -> dict[str, Any]:
        with self._read() as conn:
            (docs,) = conn.execute("SELECT count(*) FROM docs").fetchone()
            dims = dict(conn.execute("SELECT substr(key, 5), value FROM meta WHERE key LIKE 'dim:%'").fetchall())
            counts = {name: self._vector_count(conn, name) for name in dims}
            gen = self._meta(conn, "gen")
            version = self._schema_version(conn)
        file_bytes = sum(
            p.stat().st_size for p in (self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm")) if p.exists()
        )
        stores = {name: c.store for name, c in self._vectors.items() if c.store is not None}
        return {
            "backend": "sqlite",
            "path": str(self.path),
            "schema_version": version,
            "documents": int(docs),
            "vectors": {name: {"count": int(counts.get(name, 0)), "dim": int(dim)} for name, dim in dims.items()},
            "vector_search": {name: _search_tier(s) for name, s in stores.items()},
            "file_bytes": file_bytes,
            "memory_bytes": sum(s.nbytes for s in stores.values()) + self._docs.nbytes + self._postings.nbytes,
            "generation": gen,
        }

    def finish_background_work(self) -> None:
        """Blocks until the SimHash codes that threshold searches started building are ready: benchmarks
        measure the steady state, not the first seconds after a load."""
        with self._lock:
            for cache in self._vectors.values():
                if cache.store is not None and cache.store.codes_state == "building":
                    cache.store.threshold_codes(wait=True)

    def _vector_count(self, conn: sqlite3.Connection, name: str) -> int:
        """Stored vectors of a field: from the in-memory copy when this handle searches the field (counting
        in SQL reads every blob: 0.4 s at 100k documents), else from the table."""
        cache = self._vectors.get(name)
        if cache is not None and cache.store is not None:
            store = self._sync_vectors(conn, name).store
            assert store is not None  # a field's store, once made, stays
            return len(store.rows)
        (n,) = conn.execute("SELECT count(*) FROM vectors WHERE field = ? AND vec IS NOT NULL", (name,)).fetchone()
        return int(n)

    def search(self, query: SearchQuery) -> SearchResult:
        validate_query(query)
        shape = query_shape(query)
        cursor = decode_cursor(query.cursor, shape) if query.cursor else None
        if cursor is not None and not (isinstance(cursor.pin, int) and cursor.pin >= 0):
            raise InvalidRequestError("invalid cursor", field="cursor")
        with self._read() as conn:
            docs = self._sync_docs(conn)
            pin = cursor.pin if cursor is not None and isinstance(cursor.pin, int) else self._max_seq(conn)
            allowed = self._mask(conn, docs, query.filters, pin)
            if query.text is not None:
                return self._keyword(conn, docs, query, allowed, shape, cursor, pin)
            if query.vector is not None:
                return self._knn(conn, docs, query, allowed, shape, cursor, pin)
            return self._listing(conn, docs, query, allowed, shape, cursor, pin)

    def near_duplicates(
        self, phash: str, max_distance: int, filters: Filters | None = None, size: int = 20
    ) -> list[Hit]:
        target = np.uint64(phash_to_int(phash))
        if not isinstance(max_distance, int) or isinstance(max_distance, bool) or not 0 <= max_distance <= 64:
            raise InvalidRequestError("max_distance must be an integer from 0 to 64", field="max_distance")
        check_range("size", size, 1, MAX_PAGE_SIZE)
        with self._read() as conn:
            docs = self._sync_docs(conn)
            allowed = self._mask(conn, docs, filters or Filters(), docs.capacity)
            candidates = np.flatnonzero(allowed & docs.has_phash).astype(np.int64)
            distances = popcount64(docs.phash[candidates] ^ target).astype(np.int64)
            near = distances <= max_distance
            seqs, distances = candidates[near], distances[near]
            order = docs.top(distances, seqs, size, self._id_fetcher(conn))
            page, found_distances = seqs[order].tolist(), distances[order].tolist()
            found = self._documents(conn, page)
        return [
            Hit(id=found[s][0], score=1.0 - d / 64.0, source="hash", doc=found[s][1], distance=int(d))
            for s, d in zip(page, found_distances, strict=True)
            if s in found
        ]

    # -- search modes ----------------------------------------------------------------------------

    def _listing(
        self,
        conn: sqlite3.Connection,
        docs: DocColumns,
        q: SearchQuery,
        allowed: BoolArray,
        shape: str,
        cursor: Cursor | None,
        pin: int,
    ) -> SearchResult:
        seqs = np.flatnonzero(allowed).astype(np.int64)
        facets = self._facet_buckets(docs, q, seqs)
        top = self._by_date(conn, docs, q.sort, seqs, cursor, q.size + 1)
        page = seqs[top[: q.size]].tolist()
        found = self._documents(conn, page)
        hits = [Hit(id=found[s][0], score=1.0, source="filter", doc=found[s][1]) for s in page if s in found]
        next_cursor = None
        if len(top) > q.size and hits:
            last = page[-1]
            after = (int(docs.ints["sort_us"][last]), found[last][0])
            next_cursor = encode_cursor(Cursor(shape, after, pin))
        return SearchResult(hits=hits, total=len(seqs), facets=facets, next_cursor=next_cursor)

    def _keyword(
        self,
        conn: sqlite3.Connection,
        docs: DocColumns,
        q: SearchQuery,
        allowed: BoolArray,
        shape: str,
        cursor: Cursor | None,
        pin: int,
    ) -> SearchResult:
        assert q.text is not None  # checked by the caller
        plan = _keyword_plan(q.text, q.match)
        if not plan:
            return SearchResult(hits=[], total=0, facets={f: [] for f in q.facets})
        matched, scores = self._match(conn, q.text, plan, q.match)
        keep = np.zeros(len(matched), dtype=bool)
        inside = matched < docs.capacity
        keep[inside] = allowed[matched[inside]]
        seqs, seq_scores = matched[keep], scores[keep]
        facets = self._facet_buckets(docs, q, seqs)
        fetch = self._id_fetcher(conn)
        if q.sort == "relevance":
            keys = -seq_scores
            positions: IntpArray = np.arange(len(seqs), dtype=np.intp)
            if cursor is not None:
                after_score, after_id = _after_score(cursor)
                # Documents added since page 1 shift every bm25 score a little (corpus statistics);
                # comparing with the boundary document's current score keeps the order.
                boundary = self._seq_of(conn, after_id)
                if boundary is not None:
                    at = int(np.searchsorted(matched, boundary))
                    if at < len(matched) and int(matched[at]) == boundary:
                        after_score = float(scores[at])
                positions = np.flatnonzero(docs.after(keys, seqs, -after_score, after_id, fetch))
            top = positions[docs.top(keys[positions], seqs[positions], q.size + 1, fetch)]
        else:
            top = self._by_date(conn, docs, q.sort, seqs, cursor, q.size + 1)
        page = top[: q.size].tolist()
        page_seqs = [int(seqs[p]) for p in page]
        found = self._documents(conn, page_seqs)
        highlights = self._highlights(q.text, q.match, page_seqs, {s: body for s, (_, body) in found.items()})
        hits = [
            Hit(
                id=found[s][0],
                score=float(seq_scores[p]),
                source="keyword",
                doc=found[s][1],
                highlights=highlights.get(s, {}),
            )
            for p, s in zip(page, page_seqs, strict=True)
            if s in found
        ]
        next_cursor = None
        if len(top) > q.size and hits:
            last_position, last = page[-1], page_seqs[-1]
            after: tuple[CursorValue, ...] = (
                (float(seq_scores[last_position]), found[last][0])
                if q.sort == "relevance"
                else (int(docs.ints["sort_us"][last]), found[last][0])
            )
            next_cursor = encode_cursor(Cursor(shape, after, pin))
        return SearchResult(hits=hits, total=len(seqs), facets=facets, next_cursor=next_cursor)

    def _match(
        self, conn: sqlite3.Connection, text: str, plan: list[tuple[str, bool]], match: TextMatch
    ) -> tuple[Int64Array, npt.NDArray[np.float64]]:
        """Every document matching the query (ascending seq) with its bm25 score."""
        terms = self._tokens().words([word for word, _ in plan])
        if all(len(t) == 1 for t in terms):
            postings = self._sync_postings(conn)
            groups: list[list[Phrase]] = []
            for (_, prefix), (term,) in zip(plan, terms, strict=True):
                group = [postings.phrase([term])]
                if prefix:
                    group.append(postings.phrase(self._prefixed(conn, term)))
                groups.append(group)
            return postings.search(groups, every=match == "all")
        # A word the tokenizer splits (or drops) is a phrase to FTS5; FTS5 matches and scores those.
        rows = conn.execute(
            f"SELECT rowid, {_SCORE} FROM fts WHERE fts MATCH ? ORDER BY rowid",
            (fts_match_expression(text, match=match),),
        ).fetchall()
        return np.array([r[0] for r in rows], dtype=np.int64), np.array([r[1] for r in rows], dtype=np.float64)

    def _prefixed(self, conn: sqlite3.Connection, stem: str) -> list[str]:
        """The index's terms that start with ``stem`` (remembered until the next write)."""
        known = self._prefixes.get(stem)
        if known is not None:
            return known
        if len(self._prefixes) >= PREFIX_CACHE:
            self._prefixes.clear()
        self._prefixes[stem] = terms = self._vocabulary_prefixed(conn, stem)
        return terms

    def _vocabulary_prefixed(self, conn: sqlite3.Connection, stem: str) -> list[str]:
        self._vocabulary_tables(conn)
        last = ord(stem[-1]) + 1
        if 0xD800 <= last <= 0xDFFF:  # surrogates are not characters; the next one is U+E000
            last = 0xE000
        if last > 0x10FFFF:
            rows = conn.execute("SELECT term FROM temp.pixdex_terms WHERE term >= ?", (stem,))
        else:
            rows = conn.execute(
                "SELECT term FROM temp.pixdex_terms WHERE term >= ? AND term < ?", (stem, stem[:-1] + chr(last))
            )
        return [str(t) for (t,) in rows if str(t).startswith(stem)]

    def _knn(
        self,
        conn: sqlite3.Connection,
        docs: DocColumns,
        q: SearchQuery,
        allowed: BoolArray,
        shape: str,
        cursor: Cursor | None,
        pin: int,
    ) -> SearchResult:
        vq = q.vector
        assert vq is not None  # checked by the caller
        query_vec = unit_vector(vq.vector, field="vector", on_error=InvalidRequestError)
        store = self._sync_vectors(conn, vq.field).store
        if store is None:
            return SearchResult(hits=[], total=0, facets={f: [] for f in q.facets})
        if query_vec.size != store.dim:
            raise InvalidRequestError(
                f"query vector has dimension {query_vec.size}; {vq.field} has {store.dim}",
                field="vector",
                expected=store.dim,
                got=int(query_vec.size),
            )
        if store.rows.size == 0 or docs.capacity == 0:
            return SearchResult(hits=[], total=0, facets={f: [] for f in q.facets})
        row_seqs = store.rows.seqs[: store.rows.size]
        # Free rows hold seq -1; every stored seq has its document's columns (same generation).
        ok = np.take(allowed, row_seqs, mode="clip") & (row_seqs >= 0) & (row_seqs < docs.capacity)
        rows, sims = store.candidates(query_vec, ok, vq.k, vq.min_similarity)
        seqs = row_seqs[rows]
        if vq.min_similarity is not None:
            strong = sims >= np.float32(vq.min_similarity)
            seqs, sims = seqs[strong], sims[strong]
        fetch = self._id_fetcher(conn)
        keys = -sims.astype(np.float64)
        ranked = docs.top(keys, seqs, vq.k, fetch)
        seqs, keys = seqs[ranked], keys[ranked]
        if q.sort != "relevance" and len(seqs):
            by_date = self._by_date(conn, docs, q.sort, seqs, None, len(seqs))
            seqs, keys = seqs[by_date], keys[by_date]
        start = self._resume(conn, docs, q.sort, seqs, keys, cursor, fetch) if cursor is not None else 0
        page = seqs[start : start + q.size].tolist()
        page_keys = keys[start : start + q.size].tolist()
        found = self._documents(conn, page)
        hits = [
            Hit(id=found[s][0], score=-k, source="vector", doc=found[s][1])
            for s, k in zip(page, page_keys, strict=True)
            if s in found
        ]
        next_cursor = None
        if start + q.size < len(seqs) and hits:
            last = page[-1]
            after: tuple[CursorValue, ...] = (
                (-page_keys[-1], found[last][0])
                if q.sort == "relevance"
                else (int(docs.ints["sort_us"][last]), found[last][0])
            )
            next_cursor = encode_cursor(Cursor(shape, after, pin))
        facets = self._facet_buckets(docs, q, seqs)
        return SearchResult(hits=hits, total=len(seqs), facets=facets, next_cursor=next_cursor)

    # -- ordering, filters, documents ------------------------------------------------------------

    def _by_date(
        self,
        conn: sqlite3.Connection,
        docs: DocColumns,
        sort: str,
        seqs: Int64Array,
        cursor: Cursor | None,
        need: int,
    ) -> IntpArray:
        """Positions in ``seqs`` of the first ``need`` by date after the cursor; relevance means newest."""
        newest = sort != "oldest"
        sort_us = docs.ints["sort_us"][seqs]
        keys = -sort_us if newest else sort_us
        fetch = self._id_fetcher(conn)
        positions: IntpArray = np.arange(len(seqs), dtype=np.intp)
        if cursor is not None:
            after_us, after_id = _after_time(cursor)
            boundary = -after_us if newest else after_us
            positions = np.flatnonzero(docs.after(keys, seqs, boundary, after_id, fetch, ids_descending=newest))
        chosen: IntpArray = positions[docs.top(keys[positions], seqs[positions], need, fetch, ids_descending=newest)]
        return chosen

    def _resume(
        self,
        conn: sqlite3.Connection,
        docs: DocColumns,
        sort: str,
        seqs: Int64Array,
        keys: npt.NDArray[np.float64],
        cursor: Cursor,
        fetch: IdFetcher,
    ) -> int:
        """Index of the first hit after the cursor's boundary in an in-memory ranking."""
        ordered: npt.NDArray[Any]
        if sort == "relevance":
            score, after_id = _after_score(cursor)
            boundary: float | int = -score
            ordered, descending = keys, False
        else:
            sort_us, after_id = _after_time(cursor)
            descending = sort == "newest"
            ordered = -docs.ints["sort_us"][seqs] if descending else docs.ints["sort_us"][seqs]
            boundary = -sort_us if descending else sort_us
        seq = self._seq_of(conn, after_id)
        if seq is not None:
            at = np.flatnonzero(seqs == seq)
            if len(at):
                return int(at[0]) + 1
        later = np.flatnonzero(docs.after(ordered, seqs, boundary, after_id, fetch, ids_descending=descending))
        return int(later[0]) if len(later) else len(seqs)

    def _mask(self, conn: sqlite3.Connection, docs: DocColumns, f: Filters, pin: int) -> BoolArray:
        only = exclude = None
        if f.sha256 is not None:
            if not isinstance(f.sha256, str):
                raise InvalidRequestError("sha256 must be a string", field="sha256")
            rows = conn.execute("SELECT seq FROM docs WHERE sha256 = ?", (f.sha256.lower(),)).fetchall()
            only = np.array([r[0] for r in rows], dtype=np.int64)
        if f.exclude_ids:
            rows = conn.execute(
                "SELECT seq FROM docs WHERE id IN (SELECT value FROM json_each(?))",
                (json.dumps([str(i) for i in f.exclude_ids]),),
            ).fetchall()
            exclude = np.array([r[0] for r in rows], dtype=np.int64)
        return docs.mask(f, pin, only=only, exclude=exclude)

    def _facet_buckets(self, docs: DocColumns, q: SearchQuery, seqs: Int64Array) -> dict[str, list[FacetBucket]]:
        return {
            name: [FacetBucket(value=v, count=c) for v, c in docs.counts(name, seqs, q.facet_size)] for name in q.facets
        }

    def _documents(self, conn: sqlite3.Connection, seqs: list[int]) -> dict[int, tuple[str, dict[str, Any]]]:
        """Id and body of each of these documents."""
        if not seqs:
            return {}
        rows = conn.execute(
            "SELECT d.seq, d.id, b.body FROM docs AS d JOIN bodies AS b ON b.seq = d.seq "
            "WHERE d.seq IN (SELECT value FROM json_each(?))",
            (json.dumps(seqs),),
        ).fetchall()
        return {int(s): (str(i), json.loads(b)) for s, i, b in rows}

    def _id_fetcher(self, conn: sqlite3.Connection) -> IdFetcher:
        def fetch(seqs: Int64Array) -> dict[int, str]:
            rows = conn.execute(
                "SELECT seq, id FROM docs WHERE seq IN (SELECT value FROM json_each(?))", (json.dumps(seqs.tolist()),)
            ).fetchall()
            return {int(s): str(i) for s, i in rows}

        return fetch

    @staticmethod
    def _seq_of(conn: sqlite3.Connection, doc_id: str) -> int | None:
        row = conn.execute("SELECT seq FROM docs WHERE id = ?", (doc_id,)).fetchone()
        return int(row[0]) if row else None

    def _highlights(
        self, text: str, match: TextMatch, seqs: list[int], bodies: dict[int, dict[str, Any]]
    ) -> dict[int, dict[str, list[str]]]:
        """Snippets of caption and OCR text with the query's words marked.

        Made by FTS5 itself (same tokenizer, so stems and folded accents are marked too) over a tiny
        in-memory table holding only this page: asking the main table for a few rowids would evaluate
        the whole query once per rowid.
        """
        expression = fts_match_expression(text, any_word=True, match=match)
        if not seqs or expression is None:
            return {}
        hl = self._highlighter()
        hl.execute("BEGIN")
        try:
            hl.execute("DELETE FROM page")
            hl.executemany(
                f"INSERT INTO page (rowid, {', '.join(HIGHLIGHT_FIELDS)}) VALUES (?{', ?' * len(HIGHLIGHT_FIELDS)})",
                [(seq, *(_text(bodies.get(seq, {}).get(f), f) for f in HIGHLIGHT_FIELDS)) for seq in seqs],
            )
            snippets = ", ".join(
                f"snippet(page, {i}, '{_MARK_OPEN}', '{_MARK_CLOSE}', '…', 12)" for i in range(len(HIGHLIGHT_FIELDS))
            )
            rows = hl.execute(f"SELECT rowid, {snippets} FROM page WHERE page MATCH ?", (expression,)).fetchall()
        finally:
            hl.execute("ROLLBACK")
        out: dict[int, dict[str, list[str]]] = {}
        for seq, *texts in rows:
            found = {
                name: [_render_snippet(snippet)]
                for name, snippet in zip(HIGHLIGHT_FIELDS, texts, strict=True)
                if snippet and _MARK_OPEN in snippet
            }
            if found:
                out[int(seq)] = found
        return out

    def _highlighter(self) -> sqlite3.Connection:
        if self._hl is None:
            hl = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
            hl.execute(f"CREATE VIRTUAL TABLE page USING fts5({', '.join(HIGHLIGHT_FIELDS)}, tokenize = '{TOKENIZER}')")
            self._hl = hl
        return self._hl

    def _tokens(self) -> Tokenizer:
        if self._tokenizer is None:
            self._tokenizer = Tokenizer(TEXT_FIELDS, TOKENIZER)
        return self._tokenizer

    # -- in-memory copies ------------------------------------------------------------------------

    def _sync_docs(self, conn: sqlite3.Connection) -> DocColumns:
        gen, purged = self._generations(conn)
        if self._docs_gen == gen:
            return self._docs
        members = None
        if self._docs_gen < 0 or self._docs_gen < purged:
            self._docs = DocColumns()
            rows = conn.execute(f"SELECT {_DOC_COLUMNS} FROM docs").fetchall()
            # Grouped by label through its index: a few hundred rows instead of one per (document, label).
            members = conn.execute("SELECT label, group_concat(doc, ' ') FROM doc_labels GROUP BY label").fetchall()
            labels = []
            gone: list[int] = []
        else:
            since = (self._docs_gen,)
            rows = conn.execute(f"SELECT {_DOC_COLUMNS} FROM docs WHERE gen > ?", since).fetchall()
            labels = conn.execute(
                "SELECT l.doc, l.label FROM docs AS d JOIN doc_labels AS l ON l.doc = d.seq WHERE d.gen > ?", since
            ).fetchall()
            gone = [s for (s,) in conn.execute("SELECT seq FROM deleted_docs WHERE gen > ?", since)]
        docs = self._docs
        docs.remove(np.array(gone, dtype=np.int64))
        if rows:
            columns = list(zip(*rows, strict=True))
            seqs = np.array(columns[0], dtype=np.int64)
            docs.set_docs(seqs, columns[1], dict(zip(_DOC_COLUMN_NAMES, columns[2:], strict=True)))
            if members is not None:
                docs.set_label_members(
                    seqs, [str(m[0]) for m in members], [np.fromstring(m[1], dtype=np.int64, sep=" ") for m in members]
                )
            else:
                docs.set_labels(seqs, np.array([r[0] for r in labels], dtype=np.int64), [r[1] for r in labels])
        self._docs_gen = gen
        return docs

    def _sync_postings(self, conn: sqlite3.Connection) -> Postings:
        gen, purged = self._generations(conn)
        if self._postings_gen == gen:
            return self._postings
        self._prefixes.clear()
        since = (self._postings_gen,)
        full = self._postings_gen < 0 or self._postings_gen < purged
        if not full:
            (changes,) = conn.execute("SELECT count(*) FROM docs WHERE gen > ?", since).fetchone()
            full = changes > max(RELOAD_AFTER_CHANGES, self._postings.rows // 4)
        if full:
            self._load_postings(conn)
        else:
            changed = [s for (s,) in conn.execute("SELECT seq FROM docs WHERE gen > ?", since)]
            changed += [s for (s,) in conn.execute("SELECT seq FROM deleted_docs WHERE gen > ?", since)]
            self._postings.retire(np.array(changed, dtype=np.int64))
            # Only documents with a row in the FTS table: the same ones FTS5 counts.
            rows = conn.execute(
                "SELECT d.seq, b.body FROM docs AS d JOIN fts_docsize AS z ON z.id = d.seq "
                "JOIN bodies AS b ON b.seq = d.seq WHERE d.gen > ?",
                since,
            ).fetchall()
            texts = [(int(seq), [_text(json.loads(body).get(f), f) for f in TEXT_FIELDS]) for seq, body in rows]
            self._postings.add(np.array([seq for seq, _ in texts], dtype=np.int64), self._tokens().documents(texts))
        self._postings_gen = gen
        return self._postings

    def _load_postings(self, conn: sqlite3.Connection) -> None:
        """Read every term and occurrence of the FTS index (0.7 s for 100k documents here)."""
        self._vocabulary_tables(conn)
        terms = [(str(t), int(c)) for t, c in conn.execute("SELECT term, cnt FROM temp.pixdex_terms")]
        (joined,) = conn.execute(
            f"SELECT group_concat(doc * 8 + {_COLUMN_INDEX}, ' ') FROM temp.pixdex_occurrences"
        ).fetchone()
        (table,) = conn.execute("SELECT group_concat(id, ' ') FROM fts_docsize").fetchone()
        occurrences: Int64Array = np.fromstring(joined or "", dtype=np.int64, sep=" ")
        table_rows: Int64Array = np.fromstring(table or "", dtype=np.int64, sep=" ")
        postings = Postings([BM25_WEIGHTS[f] for f in TEXT_FIELDS])
        try:
            postings.load(terms, occurrences, table_rows)
        except VocabularyMismatchError:
            # The vocabulary and the occurrences did not line up: take each occurrence with its term.
            column = {name: i for i, name in enumerate(TEXT_FIELDS)}
            rows = conn.execute("SELECT term, doc, col FROM temp.pixdex_occurrences").fetchall()
            postings = Postings([BM25_WEIGHTS[f] for f in TEXT_FIELDS])
            postings.add(table_rows, [(str(t), int(d), column[c]) for t, d, c in rows])
        self._postings = postings

    def _vocabulary_tables(self, conn: sqlite3.Connection) -> None:
        """fts5vocab views of the index's terms, private to this connection."""
        if self._vocabulary_conn is conn:
            return
        conn.execute("CREATE VIRTUAL TABLE IF NOT EXISTS temp.pixdex_terms USING fts5vocab(main, fts, row)")
        conn.execute("CREATE VIRTUAL TABLE IF NOT EXISTS temp.pixdex_occurrences USING fts5vocab(main, fts, instance)")
        self._vocabulary_conn = conn

    def _generations(self, conn: sqlite3.Connection) -> tuple[int, int]:
        """The write generation and the last purge's generation, read once per transaction."""
        if self._snapshot is None:
            found = dict(conn.execute("SELECT key, value FROM meta WHERE key IN ('gen', 'purged_gen')").fetchall())
            if "gen" not in found:
                raise BackendUnavailableError("index is not initialised: call ensure() first")
            self._snapshot = (int(found["gen"]), int(found.get("purged_gen", 0)))
        return self._snapshot

    def _sync_vectors(self, conn: sqlite3.Connection, name: str) -> _VectorCache:
        gen, purged = self._generations(conn)
        cache = self._vectors.setdefault(name, _VectorCache())
        if cache.gen == gen:
            return cache
        if cache.store is None:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (f"dim:{name}",)).fetchone()
            if row is None:
                cache.gen = gen
                return cache
            cache.store = VectorStore(int(row[0]), exact_max_values=self._exact_vector_values)
            cache.gen = -1
        store = cache.store
        if cache.gen < 0 or cache.gen < purged:
            self._load_vectors(conn, name, store)
        else:
            rows = conn.execute(
                "SELECT doc, vec FROM vectors WHERE field = ? AND gen > ?", (name, cache.gen)
            ).fetchall()
            store.remove(np.array([doc for doc, vec in rows if vec is None], dtype=np.int64))
            present = [(doc, vec) for doc, vec in rows if vec is not None]
            store.put(
                np.array([doc for doc, _ in present], dtype=np.int64),
                decode_half([vec for _, vec in present], store.dim),
            )
        cache.gen = gen
        return cache

    @staticmethod
    def _load_vectors(conn: sqlite3.Connection, name: str, store: VectorStore) -> None:
        """All vectors of a field, decoded chunk by chunk into one preallocated float16 matrix."""
        (n,) = conn.execute("SELECT count(*) FROM vectors WHERE field = ? AND vec IS NOT NULL", (name,)).fetchone()
        half = np.empty((n, store.dim), dtype=np.float16)
        seqs = np.empty(n, dtype=np.int64)
        cur = conn.execute("SELECT doc, vec FROM vectors WHERE field = ? AND vec IS NOT NULL", (name,))
        filled = 0
        while chunk := cur.fetchmany(4096):
            end = filled + len(chunk)
            seqs[filled:end] = [doc for doc, _ in chunk]
            half[filled:end] = decode_half([vec for _, vec in chunk], store.dim)
            filled = end
        store.load(seqs[:filled], half[:filled])

    # -- connection and transactions -------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._closed:
            raise BackendUnavailableError("index is closed", path=str(self.path))
        if self._conn is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(
                    str(self.path),
                    timeout=self._busy_timeout_ms / 1000,
                    isolation_level=None,
                    check_same_thread=False,
                )
                conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
                # NORMAL is durable against process crashes in WAL mode; only power loss can lose
                # the last commits, which the pipeline redelivers anyway.
                conn.execute("PRAGMA synchronous = NORMAL")
                conn.execute("PRAGMA temp_store = MEMORY")
                conn.execute("PRAGMA cache_size = -65536")
            except (OSError, sqlite3.Error) as exc:
                raise BackendUnavailableError(f"cannot open index {self.path}: {exc}", path=str(self.path)) from exc
            self._conn = conn
        return self._conn

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._connection()
            with _mapped_errors(self.path):
                conn.execute("BEGIN")
            self._snapshot = None
            try:
                with _mapped_errors(self.path):
                    yield conn
            except BaseException:
                _rollback(conn)
                raise
            finally:
                self._snapshot = None
            with _mapped_errors(self.path):
                conn.execute("COMMIT")

    @contextmanager
    def _write(self) -> Iterator[tuple[sqlite3.Connection, int]]:
        with self._lock:
            conn = self._connection()
            with _mapped_errors(self.path):
                conn.execute("BEGIN IMMEDIATE")
            try:
                with _mapped_errors(self.path):
                    conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'gen'")
                    gen = self._meta(conn, "gen")
                    yield conn, gen
                    self._maybe_analyze(conn)
            except BaseException:
                _rollback(conn)
                raise
            with _mapped_errors(self.path):
                conn.execute("COMMIT")

    def _maybe_analyze(self, conn: sqlite3.Connection) -> None:
        """Refresh the planner's statistics whenever the collection has doubled since the last time.

        Without them SQLite guesses index selectivity, and at 100k documents it drove a rare-label filter
        from the tenant index (reading every row) instead of from the label index.
        """
        row = conn.execute("SELECT value FROM meta WHERE key = 'analyzed_seq'").fetchone()
        analyzed = int(row[0]) if row else 0
        newest = self._max_seq(conn)
        if newest >= 2 * analyzed + ANALYZE_MIN_DOCS:
            # Only the tables the planner chooses indexes on: 0.3 s at 100k documents. Sampled statistics
            # (analysis_limit) guessed 400 documents for a tenant that had 90k and misled the planner.
            conn.execute("ANALYZE docs")
            conn.execute("ANALYZE doc_labels")
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('analyzed_seq', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (newest,),
            )

    @staticmethod
    def _meta(conn: sqlite3.Connection, key: str) -> int:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise BackendUnavailableError("index is not initialised: call ensure() first")
        return int(row[0])

    @staticmethod
    def _max_seq(conn: sqlite3.Connection) -> int:
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'docs'").fetchone()
        return int(row[0]) if row else 0

    @staticmethod
    def _schema_version(conn: sqlite3.Connection) -> int | None:
        exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'").fetchone()
        if exists is None:
            return None
        row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
        return int(row[0]) if row and row[0] is not None else None


# -- helpers ----------------------------------------------------------------------------------------


@contextmanager
def _mapped_errors(path: Path) -> Iterator[None]:
    try:
        yield
    except (sqlite3.OperationalError, sqlite3.DatabaseError) as exc:
        if isinstance(exc, sqlite3.IntegrityError | sqlite3.ProgrammingError | sqlite3.InterfaceError):
            raise
        raise _backend_error(exc, path) from exc


def _backend_error(exc: sqlite3.Error, path: Path) -> BackendUnavailableError:
    message = str(exc)
    if "no such table" in message:
        message = "index is not initialised: call ensure() first"
    return BackendUnavailableError(f"sqlite index {path}: {message}", path=str(path))


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        # The original error is the one worth reporting.
        with suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def _after_score(cursor: Cursor) -> tuple[float, str]:
    a = cursor.after
    if len(a) != 2 or not isinstance(a[0], int | float) or not isinstance(a[1], str):
        raise InvalidRequestError("invalid cursor", field="cursor")
    return float(a[0]), a[1]


def _after_time(cursor: Cursor) -> tuple[int, str]:
    a = cursor.after
    if len(a) != 2 or not isinstance(a[0], int) or not isinstance(a[1], str) or not -(2**63) <= a[0] < 2**63:
        raise InvalidRequestError("invalid cursor", field="cursor")
    return a[0], a[1]


def _render_snippet(text: str) -> str:
    escaped = html.escape(text, quote=False)
    return escaped.replace(_MARK_OPEN, HIGHLIGHT_PRE).replace(_MARK_CLOSE, HIGHLIGHT_POST)


# -- document columns -------------------------------------------------------------------------------


def _columns(body: Mapping[str, Any]) -> dict[str, Any]:
    """The typed filter and facet columns of a document; a field of the wrong type is a mapping error."""
    taken = _opt_time(body, "taken_at")
    uploaded = _opt_time(body, "uploaded_at")
    dated = taken if taken is not None else uploaded
    has_text = body.get("has_text")
    if has_text is not None and not isinstance(has_text, bool):
        raise IndexMappingError("has_text must be true or false", field="has_text")
    nsfw = body.get("nsfw_score")
    if nsfw is not None and (not isinstance(nsfw, int | float) or isinstance(nsfw, bool)):
        raise IndexMappingError("nsfw_score must be a number", field="nsfw_score")
    sha = _opt_str(body, "sha256")
    if sha is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", sha):
        raise IndexMappingError("sha256 must be 64 hexadecimal digits", field="sha256")
    phash = _opt_str(body, "phash")
    phash_int = None
    if phash is not None:
        # SQLite integers are signed 64-bit: store the hash's bits as such.
        phash_int = int(np.uint64(phash_to_int(phash, on_error=IndexMappingError)).astype(np.int64))
    return {
        "tenant": _opt_str(body, "tenant"),
        "format": _opt_str(body, "format"),
        "camera": _opt_str(body, "camera"),
        "width": _opt_int(body, "width"),
        "height": _opt_int(body, "height"),
        "bytes": _opt_int(body, "bytes"),
        "face_count": _opt_int(body, "face_count"),
        "has_text": None if has_text is None else int(has_text),
        "nsfw_score": None if nsfw is None else float(nsfw),
        "taken_us": taken,
        "uploaded_us": uploaded,
        "sort_us": uploaded if uploaded is not None else UNDATED,
        "year": None if dated is None else (_EPOCH + dated * _US).year,
        "sha256": None if sha is None else sha.lower(),
        "phash": phash_int,
    }


def _labels(body: Mapping[str, Any]) -> list[str]:
    labels = body.get("labels")
    if labels is None:
        return []
    if not isinstance(labels, list | tuple) or not all(isinstance(x, str) for x in labels):
        raise IndexMappingError("labels must be a list of strings", field="labels")
    return list(dict.fromkeys(labels))


def _text(value: Any, name: str) -> str:
    """Text indexed for a field: a string, or a list of scalars joined with spaces."""
    if value is None:
        return ""
    if isinstance(value, str):
        text = value
    elif isinstance(value, list | tuple) and all(isinstance(x, str | int | float) for x in value):
        text = " ".join(str(x) for x in value)
    else:
        raise IndexMappingError(f"{name} must be text or a list of words", field=name)
    # Snippet markers must only ever come from the index.
    return text.replace(_MARK_OPEN, " ").replace(_MARK_CLOSE, " ")


def _opt_str(body: Mapping[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise IndexMappingError(f"{name} must be a string", field=name)
    return value


def _opt_int(body: Mapping[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise IndexMappingError(f"{name} must be an integer", field=name)
    return value


def _opt_time(body: Mapping[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    return _instant_us(value, name, IndexMappingError)


# Kept under its old name: tests and callers parse dates the same way everywhere.
_instant_us = instant_us
