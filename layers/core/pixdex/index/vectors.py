"""In-memory stores for exact vector, perceptual-hash and facet search, and the vector codecs.

Vectors are stored on disk as unit-normalised float16 (half the bytes; cosine error ~1e-3) and held in
memory as float32, because numpy has no fast float16 matrix product: upcasting blockwise per query costs
~25x a float32 matrix-vector product (measured: 540 ms vs 20 ms for 100k x 1280).

A store maps a document's insertion sequence (``seq``) to a row of a dense array. Rows are reused after
removal, and ``seq -> row`` is a dense lookup array, so mapping a candidate set from SQL to rows is one
vectorised take instead of a Python loop.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import numpy.typing as npt

from pixdex.errors import IndexMappingError, InvalidRequestError, PixdexError

Int64Array = npt.NDArray[np.int64]
IntpArray = npt.NDArray[np.intp]
F32Array = npt.NDArray[np.float32]
U64Array = npt.NDArray[np.uint64]

_POPCOUNT_TABLE = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def unit_vector(value: Any, *, field: str, on_error: type[PixdexError] = IndexMappingError) -> F32Array:
    """A finite, non-zero 1-D vector, scaled to unit length (so cosine similarity is a dot product)."""
    try:
        arr = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        raise on_error(f"{field}: not a numeric vector", field=field) from None
    if arr.ndim != 1 or arr.size == 0:
        raise on_error(f"{field}: expected a non-empty 1-D vector, got shape {arr.shape}", field=field)
    if not np.all(np.isfinite(arr)):
        raise on_error(f"{field}: vector has NaN or infinite values", field=field)
    # float64 norm: float32 squares overflow for components above ~1e19.
    norm = float(np.linalg.norm(arr.astype(np.float64)))
    if norm == 0.0 or not np.isfinite(norm):
        raise on_error(f"{field}: zero vector has no direction", field=field)
    unit: F32Array = (arr.astype(np.float64) / norm).astype(np.float32)
    return unit


def encode_vector(unit: F32Array) -> bytes:
    return unit.astype("<f2").tobytes()


def decode_vectors(blobs: list[bytes], dim: int) -> F32Array:
    """Stack float16 blobs of one field into a float32 matrix (one row per blob)."""
    if not blobs:
        return np.zeros((0, dim), dtype=np.float32)
    joined = b"".join(blobs)
    if len(joined) != len(blobs) * dim * 2:
        raise IndexMappingError(f"stored vectors do not all have dimension {dim}")
    return np.frombuffer(joined, dtype="<f2").reshape(len(blobs), dim).astype(np.float32)


def similarities(matrix: F32Array, query: F32Array) -> F32Array:
    """Dot product of every row with the query; a row gets the same bits whatever matrix it sits in.

    BLAS (``matrix @ query``) rounds a row differently depending on the matrix's size, so a document's
    score would change between an unfiltered and a filtered query, or between pages; its threads also
    contend badly on a busy host (20 ms instead of 1.5 ms for 10k x 384 here). einsum runs one kernel
    per row; large matrices are split over threads, since it releases the GIL.
    """
    n = len(matrix)
    out = np.empty(n, dtype=np.float32)
    workers = _workers()
    if n <= _BLOCK_ROWS or workers == 1:
        np.einsum("ij,j->i", matrix, query, out=out)
        return out
    pool = _pool(workers)
    blocks = [
        pool.submit(np.einsum, "ij,j->i", matrix[i : i + _BLOCK_ROWS], query, out=out[i : i + _BLOCK_ROWS])
        for i in range(0, n, _BLOCK_ROWS)
    ]
    for block in blocks:
        block.result()
    return out


_BLOCK_ROWS = 16_384
_POOL: ThreadPoolExecutor | None = None
_POOL_PID = 0
_POOL_LOCK = threading.Lock()


def _workers() -> int:
    return min(4, os.cpu_count() or 1)


def _pool(workers: int) -> ThreadPoolExecutor:
    global _POOL, _POOL_PID
    with _POOL_LOCK:
        # A forked child inherits the pool but not its threads: work submitted there would never run.
        if _POOL is None or os.getpid() != _POOL_PID:
            _POOL = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pixdex-knn")
            _POOL_PID = os.getpid()
        return _POOL


def popcount64(values: U64Array) -> npt.NDArray[np.uint8]:
    """Set bits per 64-bit word; np.bitwise_count on numpy >= 2, a byte table otherwise."""
    bitwise_count = getattr(np, "bitwise_count", None)
    if bitwise_count is not None:
        counted: npt.NDArray[np.uint8] = bitwise_count(values).astype(np.uint8)
        return counted
    as_bytes = np.ascontiguousarray(values).view(np.uint8).reshape(-1, 8)
    summed: npt.NDArray[np.uint8] = _POPCOUNT_TABLE[as_bytes].sum(axis=1, dtype=np.uint8)
    return summed


def phash_to_int(phash: str, *, on_error: type[PixdexError] = InvalidRequestError) -> int:
    """A 16-hex-digit perceptual hash as an unsigned 64-bit integer."""
    if not isinstance(phash, str) or len(phash) != 16:
        raise on_error("phash must be 16 hexadecimal digits (64 bits)", field="phash")
    try:
        return int(phash, 16)
    except ValueError:
        raise on_error("phash must be 16 hexadecimal digits (64 bits)", field="phash") from None


class RowStore:
    """Values keyed by document sequence, as a dense array with free-row reuse.

    ``width`` None holds one scalar per row (hashes); otherwise rows of ``width`` columns (vectors).
    Free rows hold ``seq`` -1 and zero values, so whole-array products stay valid; callers mask them.
    """

    def __init__(self, dtype: npt.DTypeLike, width: int | None = None) -> None:
        self.dtype = np.dtype(dtype)
        self.width = width
        self.size = 0  # rows in use or freed (high-water mark)
        self.seqs: Int64Array = np.full(0, -1, dtype=np.int64)
        self.values: npt.NDArray[Any] = self._alloc(0)
        self._row_of: Int64Array = np.full(0, -1, dtype=np.int64)  # seq -> row, -1 when absent
        self._free: list[int] = []

    def __len__(self) -> int:
        return self.size - len(self._free)

    @property
    def nbytes(self) -> int:
        return int(self.values.nbytes + self.seqs.nbytes + self._row_of.nbytes)

    def load(self, seqs: Int64Array, values: npt.NDArray[Any]) -> None:
        """Replace everything with these rows (a full reload); takes ownership of ``values``."""
        self.size = len(seqs)
        self.values = values
        self.seqs = np.array(seqs, dtype=np.int64)
        self._row_of = np.full(int(seqs.max()) + 1 if len(seqs) else 0, -1, dtype=np.int64)
        self._row_of[self.seqs] = np.arange(self.size, dtype=np.int64)
        self._free = []

    def put(self, seqs: Int64Array, values: npt.NDArray[Any]) -> None:
        """Insert or replace the values of the given sequences (unique within one call)."""
        if len(seqs) == 0:
            return
        self._grow_lookup(int(seqs.max()) + 1)
        rows = self._row_of[seqs]
        new = rows < 0
        n_new = int(new.sum())
        if n_new:
            reuse = min(n_new, len(self._free))
            fresh = n_new - reuse
            taken = [self._free.pop() for _ in range(reuse)]
            self._grow_rows(self.size + fresh)
            new_rows = np.array(taken + list(range(self.size, self.size + fresh)), dtype=np.int64)
            self.size += fresh
            rows = rows.copy()
            rows[new] = new_rows
            self._row_of[seqs[new]] = new_rows
            self.seqs[new_rows] = seqs[new]
        self.values[rows] = values

    def remove(self, seqs: Int64Array) -> None:
        if len(seqs) == 0:
            return
        seqs = seqs[seqs < len(self._row_of)]
        rows = self._row_of[seqs]
        present = rows >= 0
        rows = rows[present]
        self._row_of[seqs[present]] = -1
        self.seqs[rows] = -1
        self.values[rows] = 0
        self._free.extend(int(r) for r in rows)

    def rows_for(self, seqs: Int64Array) -> IntpArray:
        """Rows of those sequences that are present, in the order given."""
        seqs = seqs[(seqs >= 0) & (seqs < len(self._row_of))]
        rows = self._row_of[seqs]
        found: IntpArray = rows[rows >= 0].astype(np.intp)
        return found

    def live_rows(self) -> IntpArray:
        rows: IntpArray = np.flatnonzero(self.seqs[: self.size] >= 0)
        return rows

    def _alloc(self, capacity: int) -> npt.NDArray[Any]:
        shape: tuple[int, ...] = (capacity,) if self.width is None else (capacity, self.width)
        return np.zeros(shape, dtype=self.dtype)

    def _grow_rows(self, needed: int) -> None:
        capacity = len(self.seqs)
        if needed <= capacity:
            return
        new_capacity = max(needed, capacity * 3 // 2, 1024)
        values = self._alloc(new_capacity)
        values[: self.size] = self.values[: self.size]
        seqs = np.full(new_capacity, -1, dtype=np.int64)
        seqs[: self.size] = self.seqs[: self.size]
        self.values, self.seqs = values, seqs

    def _grow_lookup(self, needed: int) -> None:
        if needed <= len(self._row_of):
            return
        grown = np.full(max(needed, len(self._row_of) * 3 // 2, 1024), -1, dtype=np.int64)
        grown[: len(self._row_of)] = self._row_of
        self._row_of = grown


class FacetColumns:
    """Facet values per document sequence, to count buckets over any set of documents in numpy.

    Counting with SQL GROUP BY over a join costs ~0.5 s for 90k documents' labels; a bincount over
    dictionary codes costs milliseconds. Single-valued facets live in arrays indexed by ``seq``; labels
    are (seq, label) entries, marked dead when a document's labels change and compacted now and then.
    """

    SINGLE = ("format", "camera", "year")

    def __init__(self) -> None:
        self._codes: dict[str, dict[str, int]] = {name: {} for name in (*self.SINGLE, "labels")}
        self._values: dict[str, list[str]] = {name: [] for name in (*self.SINGLE, "labels")}
        self._single: dict[str, npt.NDArray[np.int32]] = {name: np.full(0, -1, dtype=np.int32) for name in self.SINGLE}
        self._entry_seq: Int64Array = np.zeros(0, dtype=np.int64)
        self._entry_label: npt.NDArray[np.int32] = np.zeros(0, dtype=np.int32)
        self._entry_alive: npt.NDArray[np.bool_] = np.zeros(0, dtype=bool)
        self._entries = 0
        self._dead = 0

    @property
    def nbytes(self) -> int:
        arrays: list[npt.NDArray[Any]] = [*self._single.values(), self._entry_seq, self._entry_label]
        return int(sum(a.nbytes for a in arrays)) + int(self._entry_alive.nbytes)

    def set_docs(self, seqs: Int64Array, values: dict[str, list[str | None]]) -> None:
        """Set the single-valued facets of these documents (None: the document has no value)."""
        if len(seqs) == 0:
            return
        self._grow_single(int(seqs.max()) + 1)
        for name in self.SINGLE:
            self._single[name][seqs] = [self._code(name, v) for v in values[name]]

    def set_labels(self, seqs: Int64Array, entry_seqs: Int64Array, entry_labels: list[str]) -> None:
        """Replace the labels of ``seqs`` with the (seq, label) entries given."""
        self.remove_labels(seqs)
        n = len(entry_seqs)
        if n == 0:
            return
        needed = self._entries + n
        if needed > len(self._entry_seq):
            capacity = max(needed, len(self._entry_seq) * 3 // 2, 4096)
            self._entry_seq = _grown(self._entry_seq, capacity, 0)
            self._entry_label = _grown(self._entry_label, capacity, 0)
            self._entry_alive = _grown(self._entry_alive, capacity, False)
        end = self._entries + n
        self._entry_seq[self._entries : end] = entry_seqs
        self._entry_label[self._entries : end] = [self._code("labels", v) for v in entry_labels]
        self._entry_alive[self._entries : end] = True
        self._entries = end

    def remove(self, seqs: Int64Array) -> None:
        seqs = seqs[seqs < len(self._single["format"])]
        for name in self.SINGLE:
            self._single[name][seqs] = -1
        self.remove_labels(seqs)

    def remove_labels(self, seqs: Int64Array) -> None:
        if len(seqs) == 0 or self._entries == 0:
            return
        hit = self._entry_alive[: self._entries] & np.isin(self._entry_seq[: self._entries], seqs)
        self._entry_alive[: self._entries][hit] = False
        self._dead += int(hit.sum())
        if self._dead > max(4096, self._entries // 2):
            keep = self._entry_alive[: self._entries]
            live = int(keep.sum())
            self._entry_seq[:live] = self._entry_seq[: self._entries][keep]
            self._entry_label[:live] = self._entry_label[: self._entries][keep]
            self._entry_alive[:live] = True
            self._entry_alive[live : self._entries] = False
            self._entries, self._dead = live, 0

    def counts(self, name: str, seqs: Int64Array, size: int) -> list[tuple[str, int]]:
        """The ``size`` most frequent values of a facet among ``seqs``: count desc, then value asc."""
        values = self._values[name]
        if not values or len(seqs) == 0:
            return []
        if name == "labels":
            n = self._entries
            member = np.zeros(max(int(seqs.max()), int(self._entry_seq[:n].max(initial=0))) + 1, dtype=bool)
            member[seqs] = True
            chosen = self._entry_alive[:n] & member[self._entry_seq[:n]]
            codes = self._entry_label[:n][chosen]
        else:
            column = self._single[name]
            codes = column[seqs[seqs < len(column)]]
            codes = codes[codes >= 0]
        counted = np.bincount(codes, minlength=len(values))
        present = np.flatnonzero(counted)
        if len(present) > size:
            # Only values that can make the cut need the (Python) tie-break by value.
            cut = np.partition(counted[present], len(present) - size)[len(present) - size]
            present = present[counted[present] >= cut]
        ranked = sorted((-int(counted[i]), values[i]) for i in present)[:size]
        return [(value, -negative) for negative, value in ranked]

    def _code(self, name: str, value: str | None) -> int:
        if value is None:
            return -1
        codes = self._codes[name]
        code = codes.get(value)
        if code is None:
            code = codes[value] = len(codes)
            self._values[name].append(value)
        return code

    def _grow_single(self, needed: int) -> None:
        current = len(self._single["format"])
        if needed <= current:
            return
        capacity = max(needed, current * 3 // 2, 1024)
        for name in self.SINGLE:
            self._single[name] = _grown(self._single[name], capacity, -1)


def _grown(array: npt.NDArray[Any], capacity: int, fill: object) -> npt.NDArray[Any]:
    out = np.full(capacity, fill, dtype=array.dtype)
    out[: len(array)] = array
    return out
