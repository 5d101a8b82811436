"""The embedded index: SQLite (stdlib sqlite3, WAL) plus exact vector and hash search in numpy.

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
see one snapshot. Readers keep in memory float32 matrices of the vectors, an array of perceptual hashes
and dictionary-coded facet columns; each query compares the stored generation with the one these copies
reflect and, when any process wrote, loads only the rows stamped with a newer generation.

Ordering and paging: relevance is (score desc, id asc); newest is (uploaded_at desc, id desc), oldest
(uploaded_at asc, id asc), documents without uploaded_at last when newest first. A plain listing has no
relevance and lists newest first. Cursors are keysets pinned to the highest ``seq`` of page 1, so
documents added later never shift, repeat or enter the pages; bm25 scores still drift with corpus
statistics, so a keyword cursor resumes after the boundary document's current score.

Facets count the whole result: every match of a keyword search or listing, the k hits of a vector
search. Keyword search ANDs the query's words over all text fields; see :func:`fts_match_expression`.

Vector k-NN is exact. The filter runs in SQL first: when it leaves few candidates (at most 1/8 of the
rows) only their rows are scored; otherwise all rows are scored and the best are checked against the
filter in similarity order, widening until k pass. Either way the result is the exact filtered top k.
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
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from pixdex.document import TEXT_FIELDS, VECTOR_FIELDS
from pixdex.errors import BackendUnavailableError, IndexMappingError, InvalidRequestError, PixdexError
from pixdex.index.base import (
    FACET_NAMES,
    FacetBucket,
    Filters,
    Hit,
    SearchQuery,
    SearchResult,
)
from pixdex.index.cursor import Cursor, CursorValue, decode_cursor, encode_cursor, query_shape
from pixdex.index.vectors import (
    F32Array,
    FacetColumns,
    Int64Array,
    RowStore,
    decode_vectors,
    encode_vector,
    phash_to_int,
    popcount64,
    similarities,
    unit_vector,
)

SCHEMA_VERSION: Final = 1

# bm25 weight per text column. What names or describes the picture (file-name words, labels, caption,
# user tags) outranks text that merely appears in it (OCR) or around it (EXIF words): a photo *of* a
# cat should beat a screenshot that mentions cats.
BM25_WEIGHTS: Final[Mapping[str, float]] = {
    "name_text": 4.0,
    "labels": 3.0,
    "caption": 2.0,
    "ocr_text": 1.0,
    "tags": 3.0,
    "exif_text": 0.5,
}
HIGHLIGHT_FIELDS: Final = ("caption", "ocr_text")
# Highlights are HTML-escaped text with matches wrapped in these tags, safe to render as-is.
HIGHLIGHT_PRE: Final = "<mark>"
HIGHLIGHT_POST: Final = "</mark>"

# Porter stemming ("cats" finds "cat") over Unicode words with accents folded ("cafe" finds "café").
TOKENIZER: Final = "porter unicode61 remove_diacritics 2"
MAX_PAGE_SIZE: Final = 1000
MAX_K: Final = 10_000
MAX_FACET_SIZE: Final = 1000
MAX_QUERY_TOKENS: Final = 32
MAX_DOC_ID_CHARS: Final = 512
# Shorter prefixes expand to too many terms to be useful while typing.
MIN_PREFIX_CHARS: Final = 3
# Sort key of documents without uploaded_at: after every dated one when newest first.
UNDATED: Final = -(2**62)
# Deletions are logged so other processes can drop them from memory; past this many the log is
# cleared and readers reload their matrices once.
PURGE_AFTER_DELETES: Final = 10_000
ANALYZE_MIN_DOCS: Final = 1000
# Vector search applies a filter in SQL first when it leaves at most this many rows (or 1/8 of them);
# broader filters are checked on the best-scoring rows instead, which avoids fetching 100k ids.
PREFILTER_MIN_ROWS: Final = 2048
PREFILTER_FRACTION: Final = 8
MEMO_ENTRIES: Final = 512

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_TOKEN = re.compile(r"[^\W_]+")
_MARK_OPEN, _MARK_CLOSE = "\x02", "\x03"
_SCORE = "-bm25(fts, {})".format(", ".join(repr(BM25_WEIGHTS[f]) for f in TEXT_FIELDS))
_FTS_COLUMNS = ", ".join(TEXT_FIELDS)

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


def fts_match_expression(text: str, *, any_word: bool = False) -> str | None:
    """The FTS5 MATCH expression for user text, or None when it has no searchable token.

    Every token is quoted as an FTS5 string, so operators, column filters, quotes and stars in user input
    are plain words. All tokens must match (AND). A last token being typed (no trailing space) also
    matches as a prefix; the exact term is OR-ed in so that whole-word matches rank first.
    ``any_word`` joins the words with OR instead (to mark every word that occurs, for highlights).
    """
    normalized = unicodedata.normalize("NFKC", text)
    tokens = _TOKEN.findall(normalized)[:MAX_QUERY_TOKENS]
    if not tokens:
        return None
    parts = [f'"{t}"' for t in tokens]
    last = tokens[-1]
    if len(last) >= MIN_PREFIX_CHARS and normalized.endswith(last):
        parts[-1] = f'("{last}" OR "{last}"*)'
    return (" OR " if any_word else " AND ").join(parts)


@dataclass
class _Store:
    """An in-memory copy of one kind of searchable row, and the generation it reflects."""

    store: RowStore
    gen: int = -1
    dim: int | None = None


@dataclass
class _Where:
    """A conjunction of SQL conditions over ``docs AS d`` with their parameters."""

    clauses: list[str] = field(default_factory=list)
    params: list[Any] = field(default_factory=list)

    def add(self, clause: str, *params: Any) -> None:
        self.clauses.append(clause)
        self.params.extend(params)

    def sql(self, prefix: str = " AND ") -> str:
        return prefix + " AND ".join(self.clauses) if self.clauses else ""

    def __bool__(self) -> bool:
        return bool(self.clauses)


@dataclass
class _Ranked:
    """One hit of an in-memory ranking (vector or hash search)."""

    key: float  # ascending: -similarity or Hamming distance
    seq: int
    id: str
    sort_us: int = 0


class SqliteIndex:
    """:class:`pixdex.index.base.ImageIndex` on one SQLite file. Call :meth:`ensure` once before use."""

    def __init__(self, path: Path, *, busy_timeout_ms: int = 5000) -> None:
        self.path = Path(path)
        self._busy_timeout_ms = busy_timeout_ms
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self._vectors: dict[str, _Store] = {}
        self._hashes = _Store(RowStore(np.uint64))
        # Counts and facet buckets by statement, valid for one generation: a landing page's facets
        # cost tens of milliseconds at 100k documents and do not change until something is written.
        self._memo: dict[tuple[Any, ...], Any] = {}
        self._memo_gen = -1
        self._facets = FacetColumns()
        self._facets_gen = -1
        self._hl: sqlite3.Connection | None = None

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
            self._vectors.clear()
            self._hashes = _Store(RowStore(np.uint64))
            self._facets, self._facets_gen = FacetColumns(), -1
            self._memo.clear()
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
            conn.execute("UPDATE vectors SET vec = NULL, gen = ? WHERE doc = ?", (gen, seq))
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
            rows = conn.execute(
                "SELECT v.field, v.vec FROM docs AS d JOIN vectors AS v ON v.doc = d.seq "
                "WHERE d.id = ? AND v.vec IS NOT NULL",
                (doc_id,),
            ).fetchall()
        return {name: np.frombuffer(blob, dtype="<f2").astype(np.float32) for name, blob in rows}

    def count(self, filters: Filters | None = None) -> int:
        where = _filter_where(filters or Filters())
        with self._read() as conn:
            (n,) = conn.execute(f"SELECT count(*) FROM docs AS d{where.sql(' WHERE ')}", where.params).fetchone()
        return int(n)

    def stats(self) -> dict[str, Any]:
        with self._read() as conn:
            (docs,) = conn.execute("SELECT count(*) FROM docs").fetchone()
            dims = dict(conn.execute("SELECT substr(key, 5), value FROM meta WHERE key LIKE 'dim:%'").fetchall())
            counts = dict(
                conn.execute("SELECT field, count(*) FROM vectors WHERE vec IS NOT NULL GROUP BY field").fetchall()
            )
            gen = self._meta(conn, "gen")
            version = self._schema_version(conn)
        file_bytes = sum(
            p.stat().st_size for p in (self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm")) if p.exists()
        )
        return {
            "backend": "sqlite",
            "path": str(self.path),
            "schema_version": version,
            "documents": int(docs),
            "vectors": {name: {"count": int(counts.get(name, 0)), "dim": int(dim)} for name, dim in dims.items()},
            "file_bytes": file_bytes,
            "memory_bytes": sum(s.store.nbytes for s in self._vectors.values())
            + self._hashes.store.nbytes
            + self._facets.nbytes,
            "generation": gen,
        }

    def search(self, query: SearchQuery) -> SearchResult:
        _validate(query)
        where = _filter_where(query.filters)
        shape = query_shape(query)
        cursor = decode_cursor(query.cursor, shape) if query.cursor else None
        if cursor is not None and not (isinstance(cursor.pin, int) and cursor.pin >= 0):
            raise InvalidRequestError("invalid cursor", field="cursor")
        with self._read() as conn:
            self._check_memo(conn)
            pin = cursor.pin if cursor is not None and isinstance(cursor.pin, int) else self._max_seq(conn)
            if query.text is not None:
                return self._keyword(conn, query, where, shape, cursor, pin)
            if query.vector is not None:
                return self._knn(conn, query, where, shape, cursor, pin)
            return self._listing(conn, query, where, shape, cursor, pin)

    def near_duplicates(
        self, phash: str, max_distance: int, filters: Filters | None = None, size: int = 20
    ) -> list[Hit]:
        target = np.uint64(phash_to_int(phash))
        if not isinstance(max_distance, int) or isinstance(max_distance, bool) or not 0 <= max_distance <= 64:
            raise InvalidRequestError("max_distance must be an integer from 0 to 64", field="max_distance")
        _check_range("size", size, 1, MAX_PAGE_SIZE)
        where = _filter_where(filters or Filters())
        with self._read() as conn:
            hashes = self._sync_hashes(conn)
            rows = hashes.store.live_rows()
            distances = popcount64(hashes.store.values[rows] ^ target)
            near = distances <= max_distance
            ranked = self._best(conn, distances[near].astype(np.float64), hashes.store.seqs[rows][near], size, where)
            bodies = self._bodies(conn, [r.seq for r in ranked])
        return [
            Hit(id=r.id, score=1.0 - r.key / 64.0, source="hash", doc=bodies[r.seq], distance=int(r.key))
            for r in ranked
            if r.seq in bodies
        ]

    # -- search modes ----------------------------------------------------------------------------

    def _listing(
        self,
        conn: sqlite3.Connection,
        q: SearchQuery,
        where: _Where,
        shape: str,
        cursor: Cursor | None,
        pin: int,
    ) -> SearchResult:
        where = _Where([*where.clauses, "d.seq <= ?"], [*where.params, pin])
        total, facets = self._total_and_facets(
            conn, q, f"SELECT d.seq AS s FROM docs AS d{where.sql(' WHERE ')}", where.params
        )
        page_where, order = _time_keyset(q, cursor, where)
        rows = conn.execute(
            f"SELECT d.seq, d.id, d.sort_us FROM docs AS d{page_where.sql(' WHERE ')} ORDER BY {order} LIMIT ?",
            (*page_where.params, q.size + 1),
        ).fetchall()
        bodies = self._bodies(conn, [r[0] for r in rows[: q.size]])
        hits = [Hit(id=r[1], score=1.0, source="filter", doc=bodies[r[0]]) for r in rows[: q.size]]
        next_cursor = None
        if len(rows) > q.size:
            last = rows[q.size - 1]
            next_cursor = encode_cursor(Cursor(shape, (int(last[2]), str(last[1])), pin))
        return SearchResult(hits=hits, total=total, facets=facets, next_cursor=next_cursor)

    def _keyword(
        self,
        conn: sqlite3.Connection,
        q: SearchQuery,
        where: _Where,
        shape: str,
        cursor: Cursor | None,
        pin: int,
    ) -> SearchResult:
        assert q.text is not None  # checked by the caller
        match = fts_match_expression(q.text)
        if match is None:
            return SearchResult(hits=[], total=0, facets={f: [] for f in q.facets})
        # CROSS JOIN fixes the join order: FTS first, then docs by rowid. A plain JOIN let the planner
        # scan docs first, 100x slower at 100k rows.
        source = "fts CROSS JOIN docs AS d ON d.seq = fts.rowid"
        matched = _Where(["fts MATCH ?", *where.clauses, "d.seq <= ?"], [match, *where.params, pin])
        if where:
            total, facets = self._total_and_facets(
                conn, q, f"SELECT d.seq AS s FROM {source}{matched.sql(' WHERE ')}", matched.params
            )
        else:
            total, facets = self._total_and_facets(
                conn, q, "SELECT rowid AS s FROM fts WHERE fts MATCH ? AND rowid <= ?", [match, pin]
            )

        if q.sort == "relevance":
            inner = f"SELECT d.seq AS seq, d.id AS id, {_SCORE} AS score, d.sort_us AS sort_us FROM {source}"
            params: list[Any] = list(matched.params)
            keyset = ""
            if cursor is not None:
                after_score, after_id = _after_score(cursor)
                # Other documents added since page 1 shift every bm25 score a little (corpus
                # statistics); comparing with the boundary document's current score keeps the order.
                fresh = conn.execute(
                    f"SELECT {_SCORE} FROM fts WHERE fts MATCH ? AND rowid = (SELECT seq FROM docs WHERE id = ?)",
                    (match, after_id),
                ).fetchone()
                if fresh is not None:
                    after_score = float(fresh[0])
                keyset = " WHERE score < ? OR (score = ? AND id > ?)"
                params += [after_score, after_score, after_id]
            rows = conn.execute(
                f"SELECT seq, id, score, sort_us FROM ({inner}{matched.sql(' WHERE ')}){keyset} "
                "ORDER BY score DESC, id ASC LIMIT ?",
                (*params, q.size + 1),
            ).fetchall()
        else:
            page_where, order = _time_keyset(q, cursor, matched)
            dated = conn.execute(
                f"SELECT d.seq, d.id, d.sort_us FROM {source}{page_where.sql(' WHERE ')} ORDER BY {order} LIMIT ?",
                (*page_where.params, q.size + 1),
            ).fetchall()
            # bm25 only for the page: in the query above it would run for every match before sorting.
            # One scan over the page's rowid range: "rowid IN (...)" alone would make FTS5 evaluate the
            # whole query (and bm25's statistics) once per value; the "+" keeps it off the index.
            page_seqs = [r[0] for r in dated[: q.size]]
            scores = dict(
                conn.execute(
                    f"SELECT rowid, {_SCORE} FROM fts WHERE fts MATCH ? AND rowid BETWEEN ? AND ? "
                    "AND +rowid IN (SELECT value FROM json_each(?))",
                    (match, min(page_seqs, default=0), max(page_seqs, default=0), json.dumps(page_seqs)),
                ).fetchall()
            )
            rows = [(seq, doc_id, scores.get(seq, 0.0), sort_us) for seq, doc_id, sort_us in dated]

        page = rows[: q.size]
        seqs = [int(r[0]) for r in page]
        bodies = self._bodies(conn, seqs)
        highlights = self._highlights(q.text, seqs, bodies)
        hits = [
            Hit(
                id=r[1],
                score=float(r[2]),
                source="keyword",
                doc=bodies[r[0]],
                highlights=highlights.get(r[0], {}),
            )
            for r in page
        ]
        next_cursor = None
        if len(rows) > q.size:
            last = page[-1]
            after: tuple[CursorValue, ...] = (
                (float(last[2]), str(last[1])) if q.sort == "relevance" else (int(last[3]), str(last[1]))
            )
            next_cursor = encode_cursor(Cursor(shape, after, pin))
        return SearchResult(hits=hits, total=total, facets=facets, next_cursor=next_cursor)

    def _knn(
        self,
        conn: sqlite3.Connection,
        q: SearchQuery,
        where: _Where,
        shape: str,
        cursor: Cursor | None,
        pin: int,
    ) -> SearchResult:
        vq = q.vector
        assert vq is not None  # checked by the caller
        query_vec = unit_vector(vq.vector, field="vector", on_error=InvalidRequestError)
        cache = self._sync_vectors(conn, vq.field)
        empty = SearchResult(hits=[], total=0, facets={f: [] for f in q.facets})
        if cache.dim is None:
            return empty
        if query_vec.size != cache.dim:
            raise InvalidRequestError(
                f"query vector has dimension {query_vec.size}; {vq.field} has {cache.dim}",
                field="vector",
                expected=cache.dim,
                got=int(query_vec.size),
            )
        store = cache.store
        sims, seqs, prefiltered = self._similarities(conn, store, query_vec, where, pin)
        if vq.min_similarity is not None:
            keep = sims >= np.float32(vq.min_similarity)
            sims, seqs = sims[keep], seqs[keep]
        ranked = self._best(conn, -sims.astype(np.float64), seqs, vq.k, _Where() if prefiltered else where)

        if q.sort != "relevance" and ranked:
            sort_keys = dict(
                conn.execute(
                    "SELECT seq, sort_us FROM docs WHERE seq IN (SELECT value FROM json_each(?))",
                    (json.dumps([r.seq for r in ranked]),),
                ).fetchall()
            )
            for r in ranked:
                r.sort_us = int(sort_keys.get(r.seq, UNDATED))
            ranked.sort(key=lambda r: (r.sort_us, r.id), reverse=q.sort == "newest")

        start = 0
        if cursor is not None:
            start = _resume_position(ranked, cursor, q.sort)
        page = ranked[start : start + q.size]
        bodies = self._bodies(conn, [r.seq for r in page])
        hits = [Hit(id=r.id, score=-r.key, source="vector", doc=bodies[r.seq]) for r in page if r.seq in bodies]
        next_cursor = None
        if start + q.size < len(ranked) and page:
            last = page[-1]
            after: tuple[CursorValue, ...] = (-last.key, last.id) if q.sort == "relevance" else (last.sort_us, last.id)
            next_cursor = encode_cursor(Cursor(shape, after, pin))
        facets = self._facet_buckets(conn, q, np.array([r.seq for r in ranked], dtype=np.int64))
        return SearchResult(hits=hits, total=len(ranked), facets=facets, next_cursor=next_cursor)

    def _similarities(
        self,
        conn: sqlite3.Connection,
        store: RowStore,
        query_vec: F32Array,
        where: _Where,
        pin: int,
    ) -> tuple[F32Array, Int64Array, bool]:
        """Cosine similarity of the query to every candidate row; True when the filter is already applied."""
        rows = None
        if where:
            # A selective filter is cheaper to apply first; a broad one is checked on the best rows only.
            # Counting in SQL is cheap; fetching the ids of a broad filter is not.
            limit = max(PREFILTER_MIN_ROWS, store.size // PREFILTER_FRACTION)
            candidates = f"SELECT d.seq AS s FROM docs AS d{where.sql(' WHERE ')} AND d.seq <= ?"
            params = (*where.params, pin)
            (n,) = conn.execute(f"SELECT count(*) FROM ({candidates} LIMIT ?)", (*params, limit + 1)).fetchone()
            if n <= limit:
                rows = store.rows_for(self._seqs(conn, candidates, params))
        if rows is not None:
            # Gathering rows costs more per row than a full matrix-vector product: gather only few.
            if len(rows) * 8 < store.size:
                sims = similarities(store.values[rows], query_vec)
            else:
                sims = similarities(store.values[: store.size], query_vec)[rows]
            return sims, store.seqs[rows], True
        sims = similarities(store.values[: store.size], query_vec)
        seqs = store.seqs[: store.size]
        live = (seqs >= 0) & (seqs <= pin)
        return sims[live], seqs[live], False

    def _best(
        self,
        conn: sqlite3.Connection,
        keys: npt.NDArray[np.float64],
        seqs: Int64Array,
        need: int,
        where: _Where,
    ) -> list[_Ranked]:
        """The ``need`` rows with the smallest keys (ties by id) that pass ``where``, exactly.

        Looks at the best rows first and widens until enough pass. Every row left out has a strictly
        larger key than every row looked at, so nothing that belongs in the result is ever skipped.
        """
        n = len(keys)
        if n == 0 or need <= 0:
            return []
        window = max(need * (4 if not where else 16), 64)
        while True:
            if window >= n:
                idx = np.arange(n)
            else:
                kth = keys[np.argpartition(keys, window - 1)[:window]].max()
                idx = np.flatnonzero(keys <= kth)
            ids = self._ids_passing(conn, seqs[idx], where)
            ranked = [_Ranked(float(keys[i]), int(seqs[i]), ids[int(seqs[i])]) for i in idx if int(seqs[i]) in ids]
            if len(ranked) >= need or len(idx) >= n:
                ranked.sort(key=lambda r: (r.key, r.id))
                return ranked[:need]
            window *= 8

    def _ids_passing(self, conn: sqlite3.Connection, seqs: Int64Array, where: _Where) -> dict[int, str]:
        rows = conn.execute(
            f"SELECT d.seq, d.id FROM docs AS d WHERE d.seq IN (SELECT value FROM json_each(?)){where.sql()}",
            (json.dumps(seqs.tolist()), *where.params),
        ).fetchall()
        return {int(s): str(i) for s, i in rows}

    def _bodies(self, conn: sqlite3.Connection, seqs: list[int]) -> dict[int, dict[str, Any]]:
        if not seqs:
            return {}
        rows = conn.execute(
            "SELECT seq, body FROM bodies WHERE seq IN (SELECT value FROM json_each(?))", (json.dumps(seqs),)
        ).fetchall()
        return {int(s): json.loads(b) for s, b in rows}

    def _highlights(
        self, text: str, seqs: list[int], bodies: dict[int, dict[str, Any]]
    ) -> dict[int, dict[str, list[str]]]:
        """Snippets of caption and OCR text with the query's words marked.

        Made by FTS5 itself (same tokenizer, so stems and folded accents are marked too) over a tiny
        in-memory table holding only this page: asking the main table for a few rowids would evaluate
        the whole query once per rowid.
        """
        match = fts_match_expression(text, any_word=True)
        if not seqs or match is None:
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
            rows = hl.execute(f"SELECT rowid, {snippets} FROM page WHERE page MATCH ?", (match,)).fetchall()
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

    def _total_and_facets(
        self, conn: sqlite3.Connection, q: SearchQuery, seqs_sql: str, params: Sequence[Any]
    ) -> tuple[int, dict[str, list[FacetBucket]]]:
        """The number of matching documents and, when asked for, their facets (``seqs_sql`` selects ``s``)."""
        if not q.facets:
            return self._count(conn, f"SELECT count(*) FROM ({seqs_sql})", params), {}
        key = ("facets", seqs_sql, tuple(params), q.facets, q.facet_size)
        if key not in self._memo:
            seqs = self._seqs(conn, seqs_sql, params)
            self._remember(key, (len(seqs), self._facet_buckets(conn, q, seqs)))
        total, facets = self._memo[key]
        return int(total), {name: list(buckets) for name, buckets in facets.items()}

    @staticmethod
    def _seqs(conn: sqlite3.Connection, seqs_sql: str, params: Sequence[Any]) -> Int64Array:
        """The ``s`` column of a query as an array: one string parsed by numpy is ~3x faster than 100k rows."""
        (joined,) = conn.execute(f"SELECT group_concat(s, ' ') FROM ({seqs_sql})", params).fetchone()
        seqs: Int64Array = np.fromstring(joined or "", dtype=np.int64, sep=" ")
        return seqs

    def _facet_buckets(
        self, conn: sqlite3.Connection, q: SearchQuery, seqs: Int64Array
    ) -> dict[str, list[FacetBucket]]:
        if not q.facets:
            return {}
        columns = self._sync_facets(conn)
        return {
            name: [FacetBucket(value=v, count=c) for v, c in columns.counts(name, seqs, q.facet_size)]
            for name in q.facets
        }

    def _count(self, conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> int:
        key = ("count", sql, tuple(params))
        if key not in self._memo:
            (n,) = conn.execute(sql, params).fetchone()
            self._remember(key, int(n))
        value: int = self._memo[key]
        return value

    def _remember(self, key: tuple[Any, ...], value: Any) -> None:
        if len(self._memo) >= MEMO_ENTRIES:
            del self._memo[next(iter(self._memo))]
        self._memo[key] = value

    def _check_memo(self, conn: sqlite3.Connection) -> None:
        """Forget remembered counts and facets once anything was written (by any process)."""
        gen = self._meta(conn, "gen")
        if gen != self._memo_gen:
            self._memo.clear()
            self._memo_gen = gen

    # -- in-memory copies ------------------------------------------------------------------------

    def _sync_vectors(self, conn: sqlite3.Connection, name: str) -> _Store:
        gen, purged = self._meta(conn, "gen"), self._meta(conn, "purged_gen")
        cache = self._vectors.setdefault(name, _Store(RowStore(np.float32, 1)))
        if cache.gen == gen:
            return cache
        if cache.dim is None:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (f"dim:{name}",)).fetchone()
            if row is None:
                cache.gen = gen
                return cache
            cache.dim = int(row[0])
            cache.gen = -1
        assert cache.dim is not None  # set just above
        if cache.gen < 0 or cache.gen < purged:
            cache.store = self._load_vectors(conn, name, cache.dim)
        else:
            rows = conn.execute(
                "SELECT doc, vec FROM vectors WHERE field = ? AND gen > ?", (name, cache.gen)
            ).fetchall()
            cache.store.remove(np.array([doc for doc, vec in rows if vec is None], dtype=np.int64))
            present = [(doc, vec) for doc, vec in rows if vec is not None]
            cache.store.put(
                np.array([doc for doc, _ in present], dtype=np.int64),
                decode_vectors([vec for _, vec in present], cache.dim),
            )
        cache.gen = gen
        return cache

    @staticmethod
    def _load_vectors(conn: sqlite3.Connection, name: str, dim: int) -> RowStore:
        """All vectors of a field, decoded chunk by chunk into one preallocated float32 matrix."""
        (n,) = conn.execute("SELECT count(*) FROM vectors WHERE field = ? AND vec IS NOT NULL", (name,)).fetchone()
        matrix = np.empty((n, dim), dtype=np.float32)
        seqs = np.empty(n, dtype=np.int64)
        cur = conn.execute("SELECT doc, vec FROM vectors WHERE field = ? AND vec IS NOT NULL", (name,))
        filled = 0
        while chunk := cur.fetchmany(4096):
            end = filled + len(chunk)
            seqs[filled:end] = [doc for doc, _ in chunk]
            matrix[filled:end] = decode_vectors([vec for _, vec in chunk], dim)
            filled = end
        store = RowStore(np.float32, dim)
        store.load(seqs[:filled], matrix[:filled])
        return store

    def _sync_facets(self, conn: sqlite3.Connection) -> FacetColumns:
        gen, purged = self._meta(conn, "gen"), self._meta(conn, "purged_gen")
        if self._facets_gen == gen:
            return self._facets
        if self._facets_gen < 0 or self._facets_gen < purged:
            self._facets = FacetColumns()
            docs = conn.execute("SELECT seq, format, camera, year FROM docs").fetchall()
            labels = conn.execute("SELECT doc, label FROM doc_labels").fetchall()
            gone: list[int] = []
        else:
            since = (self._facets_gen,)
            docs = conn.execute("SELECT seq, format, camera, year FROM docs WHERE gen > ?", since).fetchall()
            labels = conn.execute(
                "SELECT l.doc, l.label FROM docs AS d JOIN doc_labels AS l ON l.doc = d.seq WHERE d.gen > ?", since
            ).fetchall()
            gone = [s for (s,) in conn.execute("SELECT seq FROM deleted_docs WHERE gen > ?", since)]
        self._facets.remove(np.array(gone, dtype=np.int64))
        seqs = np.array([r[0] for r in docs], dtype=np.int64)
        self._facets.set_docs(
            seqs,
            {
                "format": [r[1] for r in docs],
                "camera": [r[2] for r in docs],
                "year": [None if r[3] is None else str(r[3]) for r in docs],
            },
        )
        self._facets.set_labels(seqs, np.array([r[0] for r in labels], dtype=np.int64), [r[1] for r in labels])
        self._facets_gen = gen
        return self._facets

    def _sync_hashes(self, conn: sqlite3.Connection) -> _Store:
        gen, purged = self._meta(conn, "gen"), self._meta(conn, "purged_gen")
        cache = self._hashes
        if cache.gen == gen:
            return cache
        if cache.gen < 0 or cache.gen < purged:
            cache.store = RowStore(np.uint64)
            rows = conn.execute("SELECT seq, phash FROM docs WHERE phash IS NOT NULL").fetchall()
            gone: list[int] = []
        else:
            rows = conn.execute("SELECT seq, phash FROM docs WHERE gen > ?", (cache.gen,)).fetchall()
            gone = [s for (s,) in conn.execute("SELECT seq FROM deleted_docs WHERE gen > ?", (cache.gen,))]
            gone += [s for s, h in rows if h is None]
        present = [(s, h) for s, h in rows if h is not None]
        cache.store.remove(np.array(gone, dtype=np.int64))
        cache.store.put(
            np.array([s for s, _ in present], dtype=np.int64),
            np.array([h for _, h in present], dtype=np.int64).view(np.uint64),
        )
        cache.gen = gen
        return cache

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
            try:
                with _mapped_errors(self.path):
                    yield conn
            except BaseException:
                _rollback(conn)
                raise
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


def _validate(q: SearchQuery) -> None:
    if q.text is not None and q.vector is not None:
        raise InvalidRequestError("a query is keyword or vector, not both", field="vector")
    if q.text is not None and not isinstance(q.text, str):
        raise InvalidRequestError("text must be a string", field="q")
    _check_range("size", q.size, 1, MAX_PAGE_SIZE)
    _check_range("facet_size", q.facet_size, 1, MAX_FACET_SIZE)
    if q.sort not in ("relevance", "newest", "oldest"):
        raise InvalidRequestError(f"unknown sort {q.sort!r}", field="sort")
    for name in q.facets:
        if name not in FACET_NAMES:
            raise InvalidRequestError(f"unknown facet {name!r}; expected one of {FACET_NAMES}", field="facets")
    if q.vector is not None:
        if q.vector.field not in VECTOR_FIELDS:
            raise InvalidRequestError(f"unknown vector field {q.vector.field!r}", field="vector.field")
        _check_range("k", q.vector.k, 1, MAX_K)
        ms = q.vector.min_similarity
        if ms is not None and (not isinstance(ms, int | float) or not -1.0 <= ms <= 1.0):
            raise InvalidRequestError("min_similarity must be between -1 and 1", field="min_similarity")


def _check_range(name: str, value: object, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidRequestError(f"{name} must be an integer from {low} to {high}", field=name)


def _filter_where(f: Filters) -> _Where:
    """SQL conditions for the filters. A document without the filtered field never matches."""
    w = _Where()
    if f.tenant is not None:
        w.add("d.tenant = ?", f.tenant)
    if f.formats:
        w.add(f"d.format IN ({', '.join('?' * len(f.formats))})", *f.formats)
    for label in dict.fromkeys(f.labels):
        w.add("d.seq IN (SELECT doc FROM doc_labels WHERE label = ?)", label)
    if f.cameras:
        w.add(f"d.camera IN ({', '.join('?' * len(f.cameras))})", *f.cameras)
    for column, low, high in (
        ("width", f.min_width, f.max_width),
        ("height", f.min_height, f.max_height),
        ("bytes", f.min_bytes, f.max_bytes),
        ("face_count", f.min_faces, f.max_faces),
    ):
        if low is not None:
            w.add(f"d.{column} >= ?", _int_param(low, f"min_{column}"))
        if high is not None:
            w.add(f"d.{column} <= ?", _int_param(high, f"max_{column}"))
    for column, after, before, name in (
        ("taken_us", f.taken_after, f.taken_before, "taken"),
        ("uploaded_us", f.uploaded_after, f.uploaded_before, "uploaded"),
    ):
        if after is not None:
            w.add(f"d.{column} >= ?", _instant_us(after, f"{name}_after", InvalidRequestError))
        if before is not None:
            w.add(f"d.{column} <= ?", _instant_us(before, f"{name}_before", InvalidRequestError))
    if f.has_text is not None:
        w.add("d.has_text = ?", 1 if f.has_text else 0)
    if f.max_nsfw is not None:
        if not isinstance(f.max_nsfw, int | float) or isinstance(f.max_nsfw, bool):
            raise InvalidRequestError("max_nsfw must be a number", field="max_nsfw")
        w.add("d.nsfw_score <= ?", float(f.max_nsfw))
    if f.sha256 is not None:
        w.add("d.sha256 = ?", f.sha256.lower())
    if f.exclude_ids:
        w.add(f"d.id NOT IN ({', '.join('?' * len(f.exclude_ids))})", *f.exclude_ids)
    return w


def _int_param(value: object, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidRequestError(f"{name} must be an integer", field=name)
    return value


def _time_keyset(q: SearchQuery, cursor: Cursor | None, where: _Where) -> tuple[_Where, str]:
    """The page condition and ORDER BY for date order; relevance without text lists newest first."""
    ascending = q.sort == "oldest"
    order = "d.sort_us ASC, d.id ASC" if ascending else "d.sort_us DESC, d.id DESC"
    if cursor is None:
        return where, order
    sort_us, after_id = _after_time(cursor)
    op = ">" if ascending else "<"
    return _Where([*where.clauses, f"(d.sort_us, d.id) {op} (?, ?)"], [*where.params, sort_us, after_id]), order


def _after_score(cursor: Cursor) -> tuple[float, str]:
    a = cursor.after
    if len(a) != 2 or not isinstance(a[0], int | float) or not isinstance(a[1], str):
        raise InvalidRequestError("invalid cursor", field="cursor")
    return float(a[0]), a[1]


def _after_time(cursor: Cursor) -> tuple[int, str]:
    a = cursor.after
    if len(a) != 2 or not isinstance(a[0], int) or not isinstance(a[1], str):
        raise InvalidRequestError("invalid cursor", field="cursor")
    return a[0], a[1]


def _resume_position(ranked: list[_Ranked], cursor: Cursor, sort: str) -> int:
    """Index of the first hit after the cursor's boundary in an in-memory ranking."""
    if sort == "relevance":
        score, after_id = _after_score(cursor)
        for i, r in enumerate(ranked):
            if r.id == after_id:
                return i + 1
        boundary = (-score, after_id)
        return next((i for i, r in enumerate(ranked) if (r.key, r.id) > boundary), len(ranked))
    sort_us, after_id = _after_time(cursor)
    for i, r in enumerate(ranked):
        if r.id == after_id:
            return i + 1
    if sort == "newest":
        return next((i for i, r in enumerate(ranked) if (r.sort_us, r.id) < (sort_us, after_id)), len(ranked))
    return next((i for i, r in enumerate(ranked) if (r.sort_us, r.id) > (sort_us, after_id)), len(ranked))


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


def _instant_us(value: object, name: str, error: type[PixdexError]) -> int:
    """An ISO 8601 date or date-time as UTC microseconds since the epoch; no offset means UTC."""
    if not isinstance(value, str):
        raise error(f"{name} must be an ISO 8601 date-time string", field=name)
    try:
        instant = datetime.fromisoformat(value.strip())
    except ValueError:
        raise error(f"{name}: not an ISO 8601 date-time: {value[:40]!r}", field=name) from None
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=UTC)
    return (instant - _EPOCH) // _US
