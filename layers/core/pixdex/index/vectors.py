"""In-memory vector and hash stores for the embedded index, and the vector codecs.

Vectors are stored on disk as unit-normalised float16 (half the bytes; cosine error ~1e-3). In memory a
field is held in one of two tiers, chosen by its size (rows x dimensions, see :data:`EXACT_MAX_VALUES`:
20,000 image vectors of 1280-d, 66,666 caption vectors of 384-d):

- **exact** (small fields): a float32 matrix; every query scores every candidate row (``similarities``).
- **two-stage** (large fields): the float16 rows plus an int8 copy with one scale per row (3 bytes per
  dimension instead of 4). A query first scores every row on the int8 copy (12.4 ms instead of ~40 ms in
  float32 for 100k x 1280 on one core here; 6.6 ms on two idle cores, see :class:`ThreadChoice`), keeps
  the best :func:`shortlist_size` rows (k + max(k/4, 256)) and scores only those exactly: float16 rows
  against the float32 query, accurate to float32 rounding. The int8 error (per-row scale, query quantised
  the same way) has a standard deviation of ~3e-4 in cosine, a hundred times smaller than the spread of
  similarities among near neighbours, so the shortlist holds the exact top k: measured recall@10 and
  recall@1000 of 1.000 on the benchmark's 1280-d and 384-d vectors at 100k and 1M rows (filtered and
  not; docs/benchmarks.md, "## index internals", and tests/unit/test_index_vectors.py). When a filter
  leaves fewer candidates than a fifth of the rows plus the shortlist, scoring them all exactly is cheaper
  than the int8 scan, so selective filtered k-NN stays exact (recall 1.0).

numpy has no fast int8 or float16 matrix-vector product (100k x 1280: float16 upcast + product 74 ms, int8
emulated through float64 blocks 27 ms, simsimd's int8 kernel 12.4 ms); the kernels come from ``simsimd``
(SIMD dot products for int8 and float16, Apache-2.0, ~0.6 MB wheels for CPython 3.11/3.12 on x86_64 and
aarch64). Without it the same integer results are computed in numpy, slower.

A store maps a document's insertion sequence (``seq``) to a row of dense arrays. Rows are reused after
removal, and ``seq -> row`` is a dense lookup array, so mapping a candidate set to rows is one vectorised
take instead of a Python loop.

Threshold searches (every row at cosine >= s, the kind the duplicate searches make: few rows pass) skip the
int8 scan in the two-stage tier: each row also gets a 1024-bit SimHash code (:class:`SimHash`), the rows whose
codes are close enough that they may reach s are scored exactly, and every other row is left out. The bound
is exact binomial arithmetic (:func:`hamming_bound`), so a row at or above s is missed with probability at
most :data:`SIMHASH_MISS`, whatever the data; the Hamming scan costs ~1 ms at 100k rows instead of ~6-10 ms
for the int8 scan of 1280-d rows. The codes are built in the background the first time a field is searched
that way; until they are ready, the int8 scan answers.
"""

from __future__ import annotations

import functools
import importlib
import math
import os
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from types import ModuleType
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from pixdex.errors import IndexMappingError, InvalidRequestError, PixdexError


def _load_simsimd() -> ModuleType | None:
    try:
        module = importlib.import_module("simsimd")
    except ImportError:  # the numpy kernels below give the same results, slower
        return None
    # On CPUs with AVX512-FP16 (Sapphire Rapids and later) simsimd's float16 dot kernel accumulates in
    # float16: errors of ~1e-4 on unit vectors, enough to reorder near ties and break recall against the
    # float32 ground truth. Without it simsimd uses its Ice Lake/Genoa kernels, which widen to float32.
    if module.get_capabilities().get("sapphire"):
        module.disable_capability("sapphire")
    return module


_SIMSIMD = _load_simsimd()

Int64Array = npt.NDArray[np.int64]
IntpArray = npt.NDArray[np.intp]
F32Array = npt.NDArray[np.float32]
F16Array = npt.NDArray[np.float16]
I8Array = npt.NDArray[np.int8]
U64Array = npt.NDArray[np.uint64]
U8Array = npt.NDArray[np.uint8]
BoolArray = npt.NDArray[np.bool_]

# A field with more than this many stored values (rows x dimensions) is searched in two stages: 20,000
# rows of 1280-d image vectors, 66,666 of 384-d caption vectors. Below it an exact float32 scan costs
# under ~9 ms on one core (~5 ms on two); above it the int8 scan is ~3x cheaper (docs/benchmarks.md).
EXACT_MAX_VALUES: Final = 20_000 * 1280
# The shortlist reranked exactly: k plus a quarter of k, and at least k + 256.
SHORTLIST_FRACTION: Final = 4
SHORTLIST_MARGIN: Final = 256
# Scoring a row exactly from float16 costs about this many times a row of the int8 scan: a filter that
# leaves fewer than size / ratio (+ the shortlist) candidates is scored exactly, without the scan.
EXACT_TO_COARSE_COST: Final = 5
# int8 scans of at least this many values (rows x dimensions: 12.5k image vectors, ~2 ms of work) may run
# on every core, as measured to pay off (see ThreadChoice).
PARALLEL_SCAN_VALUES: Final = 16_000_000
_INT8_MAX: Final = 127
# The query's float16 remainder is scaled up by this before rounding, so it keeps float32 precision.
_LOW_SCALE: Final = 2048.0

# SimHash codes for threshold searches: bits per row, the chance a row at the threshold is left out, and
# the seed of the planes (any seed gives the same guarantee; a fixed one makes results repeatable).
SIMHASH_BITS: Final = 1024
SIMHASH_MISS: Final = 1e-6
SIMHASH_SEED: Final = 20261202
# Stored rows are float16: their cosines are off by up to ~1e-3, so the bound is taken this far lower.
_SIMHASH_SLACK: Final = 2e-3

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


def decode_half(blobs: list[bytes], dim: int) -> F16Array:
    """Stack float16 blobs of one field into a float16 matrix (one row per blob)."""
    if not blobs:
        return np.zeros((0, dim), dtype=np.float16)
    joined = b"".join(blobs)
    if len(joined) != len(blobs) * dim * 2:
        raise IndexMappingError(f"stored vectors do not all have dimension {dim}")
    half: F16Array = np.frombuffer(joined, dtype="<f2").reshape(len(blobs), dim).astype(np.float16)
    return half


def decode_vectors(blobs: list[bytes], dim: int) -> F32Array:
    """Stack float16 blobs of one field into a float32 matrix (one row per blob)."""
    return decode_half(blobs, dim).astype(np.float32)


def quantize(rows: npt.NDArray[Any]) -> tuple[I8Array, F32Array]:
    """int8 codes and one scale per row: ``row ~= codes * scale``, the largest component mapped to 127."""
    values = np.asarray(rows, dtype=np.float32)
    if values.ndim == 1:
        values = values[None, :]
    peak = np.abs(values).max(axis=1) if values.shape[1] else np.zeros(len(values), dtype=np.float32)
    scales = np.where(peak > 0, peak / _INT8_MAX, 1.0).astype(np.float32)
    codes = np.clip(np.rint(values / scales[:, None]), -_INT8_MAX, _INT8_MAX).astype(np.int8)
    return codes, scales


def int8_dots(codes: I8Array, query: I8Array, *, threads: int = 1) -> F32Array:
    """Integer dot product of every row with the query, rounded once to float32 (the same on both paths,
    and whatever the number of threads)."""
    n = len(codes)
    if n == 0:
        return np.zeros(0, dtype=np.float32)
    if _SIMSIMD is not None:
        out = np.empty((1, n), dtype=np.float32)
        # simsimd holds the GIL but can split one call over OpenMP threads.
        _SIMSIMD.cdist(query[None, :], codes, metric="dot", out=out, out_dtype="float32", threads=threads)
        dots: F32Array = out[0]
        return dots
    # float64 holds these sums exactly (|sum| < 2^31), so rounding to float32 matches simsimd bit for bit.
    result = np.empty(n, dtype=np.float32)
    q = query.astype(np.float64)
    for start in range(0, n, _FALLBACK_ROWS):
        block = codes[start : start + _FALLBACK_ROWS].astype(np.float64)
        result[start : start + len(block)] = block @ q
    return result


class ThreadChoice:
    """Picks one thread or every core for a recurring scan, by how fast each has been lately.

    Splitting the int8 scan over 2 idle cores halves it (6.6 ms instead of 12.4 ms for 100k x 1280),
    but when another process keeps a core busy the second thread waits for a scheduler slice and the
    split scan is slower than one thread (measured both ways on the team's shared 2-core hosts). So the
    choice is measured: the faster option serves, the other is timed again every ``explore_every`` calls.
    Results do not depend on the choice (integer sums).
    """

    def __init__(self, workers: int, *, explore_every: int = 32, smoothing: float = 0.25) -> None:
        self.options = (1, workers) if workers > 1 else (1,)
        self.explore_every = explore_every
        self.smoothing = smoothing
        self.cost: dict[int, float] = {}  # seconds per value, smoothed
        self.calls = 0

    def pick(self) -> int:
        self.calls += 1
        untried = [t for t in self.options if t not in self.cost]
        if untried:
            return untried[0]
        best = min(self.options, key=lambda t: self.cost[t])
        if self.calls % self.explore_every == 0:
            return next(t for t in self.options if t != best) if len(self.options) > 1 else best
        return best

    def record(self, threads: int, seconds: float, values: int) -> None:
        sample = seconds / max(values, 1)
        known = self.cost.get(threads)
        self.cost[threads] = sample if known is None else known + self.smoothing * (sample - known)


def half_dots(rows: F16Array, query: F32Array) -> F32Array:
    """Dot products of float16 rows with a float32 query, accurate to float32 rounding.

    simsimd's float16 kernel takes a float16 query; the query is split into a float16 part and its
    (scaled) remainder, and the two products are added, which keeps the query's float32 precision.
    """
    n = len(rows)
    if n == 0:
        return np.zeros(0, dtype=np.float32)
    if _SIMSIMD is not None:
        high = query.astype(np.float16)
        low = ((query - high.astype(np.float32)) * np.float32(_LOW_SCALE)).astype(np.float16)
        out = np.empty((2, n), dtype=np.float64)
        _SIMSIMD.cdist(np.stack([high, low]), np.ascontiguousarray(rows), metric="dot", out=out, out_dtype="float64")
        combined: F32Array = (out[0] + out[1] / _LOW_SCALE).astype(np.float32)
        return combined
    result = np.empty(n, dtype=np.float32)
    for start in range(0, n, _FALLBACK_ROWS):
        block = rows[start : start + _FALLBACK_ROWS].astype(np.float32)
        np.einsum("ij,j->i", block, query, out=result[start : start + len(block)])
    return result


def kernels() -> str:
    """Which kernels score the two-stage tier: 'simsimd' or 'numpy'."""
    return "simsimd" if _SIMSIMD is not None else "numpy"


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


def shortlist_size(k: int) -> int:
    """How many rows the int8 scan hands to the exact rerank for a top-k query."""
    return k + max(k // SHORTLIST_FRACTION, SHORTLIST_MARGIN)


_BLOCK_ROWS = 16_384
_FALLBACK_ROWS = 2048
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


@functools.lru_cache(maxsize=256)
def hamming_bound(bits: int, min_similarity: float, miss: float = SIMHASH_MISS) -> int:
    """The most SimHash bits (of ``bits``) in which a row at cosine >= ``min_similarity`` to the query
    differs from it, except with probability at most ``miss``.

    Two vectors at angle theta differ in each bit with probability theta / pi, independently over the draw
    of the planes, so their distance is Binomial(bits, theta / pi); the bound is that law's upper tail at
    the threshold's angle, summed exactly (rows closer than the threshold differ in fewer bits still).
    """
    cosine = min(max(min_similarity - _SIMHASH_SLACK, -1.0), 1.0)
    p = math.acos(cosine) / math.pi
    if p <= 0.0:
        return 0
    if p >= 1.0:
        return bits
    log_p, log_q, log_n = math.log(p), math.log1p(-p), math.lgamma(bits + 1)
    tail = 0.0  # P(distance >= h), from the top down
    for h in range(bits, -1, -1):
        tail += math.exp(log_n - math.lgamma(h + 1) - math.lgamma(bits - h + 1) + h * log_p + (bits - h) * log_q)
        if tail > miss:
            return h  # P(distance > h) <= miss < P(distance >= h)
    return bits


class SimHash:
    """Sign bits of random projections (Charikar 2002) as packed bytes, and Hamming distances between them.

    The planes are Gaussian, drawn once from a fixed seed; the codes live in memory only, so a change in
    numpy's generator between versions cannot mix codes of two draws.
    """

    def __init__(self, dim: int, bits: int = SIMHASH_BITS, seed: int = SIMHASH_SEED) -> None:
        if bits % 64:
            raise ValueError("SimHash bits must be a multiple of 64")
        self.bits = bits
        self.planes: F32Array = np.random.default_rng(seed).standard_normal((dim, bits), dtype=np.float32)

    def encode(self, rows: npt.NDArray[Any]) -> U8Array:
        values = np.asarray(rows)
        if values.ndim == 1:
            values = values[None, :]
        codes = np.empty((len(values), self.bits // 8), dtype=np.uint8)
        for start in range(0, len(values), _BLOCK_ROWS):
            block = values[start : start + _BLOCK_ROWS].astype(np.float32)
            codes[start : start + len(block)] = np.packbits(block @ self.planes > 0, axis=1)
        return codes

    def distances(self, codes: U8Array, query: U8Array) -> npt.NDArray[np.float64]:
        """Differing bits of every code with the query code (small integers, exact in float64)."""
        if len(codes) == 0:
            return np.zeros(0, dtype=np.float64)
        if _SIMSIMD is not None:
            out = _SIMSIMD.cdist(query[None, :], codes, metric="hamming", dtype="bin8")
            distances: npt.NDArray[np.float64] = np.asarray(out, dtype=np.float64)[0]
            return distances
        words = np.ascontiguousarray(codes).view(np.uint64) ^ np.ascontiguousarray(query).view(np.uint64)
        counted: npt.NDArray[np.float64] = popcount64(words.reshape(-1)).reshape(words.shape).sum(
            axis=1, dtype=np.float64)
        return counted


class SimHashCodes:
    """The SimHash codes of one store's rows, row-aligned: built in the background on first use (~1.6 s
    per 100k rows of 1280-d here, while searches keep using the int8 scan) and kept in step with puts."""

    def __init__(self, hasher: SimHash) -> None:
        self.hasher = hasher
        self.codes: U8Array | None = None
        self._building: Future[U8Array] | None = None
        # Rows put while the codes were being built: their values may have changed under the build.
        self._pending: list[IntpArray] = []

    @property
    def nbytes(self) -> int:
        return int(self.hasher.planes.nbytes + (self.codes.nbytes if self.codes is not None else 0))

    @property
    def state(self) -> str:
        return "ready" if self.codes is not None else "building" if self._building is not None else "off"

    def ready(self, values: npt.NDArray[Any], size: int, *, wait: bool = False) -> U8Array | None:
        """The codes of rows ``[:size]``, or None while they are still being built (the first call starts
        the build; ``wait`` blocks until it is done)."""
        if self.codes is None:
            if self._building is None:
                self._pending = []
                # A view, not a copy: rows written meanwhile are in _pending and encoded again below.
                self._building = _pool(_workers()).submit(self.hasher.encode, values[:size])
            if not wait and not self._building.done():
                return None
            building, self._building = self._building, None
            try:
                self.codes = building.result()
            except MemoryError:  # searches keep the int8 scan; the next one tries again
                return None
            pending, self._pending = self._pending, []
            for rows in pending:
                self.update(values, size, rows)
        self._grow(size)
        assert self.codes is not None
        return self.codes[:size]

    def update(self, values: npt.NDArray[Any], size: int, rows: IntpArray) -> None:
        """Rows were put: encode them (or remember them while the build runs)."""
        if self.codes is None:
            if self._building is not None:
                self._pending.append(rows)
            return
        self._grow(size)
        self.codes[rows] = self.hasher.encode(values[rows])

    def _grow(self, size: int) -> None:
        assert self.codes is not None
        if len(self.codes) < size:
            grown = np.zeros((max(size, len(self.codes) * 3 // 2), self.codes.shape[1]), dtype=np.uint8)
            grown[: len(self.codes)] = self.codes
            self.codes = grown


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
    """Values keyed by document sequence, as dense arrays with free-row reuse.

    ``width`` None holds one scalar per row; otherwise rows of ``width`` columns. ``extras`` are further
    arrays kept row-aligned with ``values`` (name -> (dtype, width)). Free rows hold ``seq`` -1 and zero
    values, so whole-array products stay valid; callers mask them.
    """

    def __init__(
        self,
        dtype: npt.DTypeLike,
        width: int | None = None,
        extras: Mapping[str, tuple[npt.DTypeLike, int | None]] | None = None,
    ) -> None:
        self.dtype = np.dtype(dtype)
        self.width = width
        self._extra_specs = {name: (np.dtype(dt), w) for name, (dt, w) in (extras or {}).items()}
        self.size = 0  # rows in use or freed (high-water mark)
        self.seqs: Int64Array = np.full(0, -1, dtype=np.int64)
        self.values: npt.NDArray[Any] = self._alloc(self.dtype, width, 0)
        self.extras: dict[str, npt.NDArray[Any]] = {
            name: self._alloc(dt, w, 0) for name, (dt, w) in self._extra_specs.items()
        }
        self._row_of: Int64Array = np.full(0, -1, dtype=np.int64)  # seq -> row, -1 when absent
        self._free: list[int] = []

    def __len__(self) -> int:
        return self.size - len(self._free)

    @property
    def nbytes(self) -> int:
        extra = sum(int(a.nbytes) for a in self.extras.values())
        return int(self.values.nbytes + self.seqs.nbytes + self._row_of.nbytes) + extra

    def load(
        self, seqs: Int64Array, values: npt.NDArray[Any], extras: Mapping[str, npt.NDArray[Any]] | None = None
    ) -> None:
        """Replace everything with these rows (a full reload); takes ownership of the arrays."""
        self.size = len(seqs)
        self.values = values
        self.extras = dict(extras or {})
        self._check_extras(self.extras)
        self.seqs = np.array(seqs, dtype=np.int64)
        self._row_of = np.full(int(seqs.max()) + 1 if len(seqs) else 0, -1, dtype=np.int64)
        self._row_of[self.seqs] = np.arange(self.size, dtype=np.int64)
        self._free = []

    def put(
        self, seqs: Int64Array, values: npt.NDArray[Any], extras: Mapping[str, npt.NDArray[Any]] | None = None
    ) -> None:
        """Insert or replace the values of the given sequences (unique within one call)."""
        if len(seqs) == 0:
            return
        extras = dict(extras or {})
        self._check_extras(extras)
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
        for name, array in extras.items():
            self.extras[name][rows] = array

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
        for array in self.extras.values():
            array[rows] = 0
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

    def _check_extras(self, extras: Mapping[str, npt.NDArray[Any]]) -> None:
        if set(extras) != set(self._extra_specs):
            raise ValueError(f"row store extras must be exactly {sorted(self._extra_specs)}, got {sorted(extras)}")

    @staticmethod
    def _alloc(dtype: np.dtype[Any], width: int | None, capacity: int) -> npt.NDArray[Any]:
        shape: tuple[int, ...] = (capacity,) if width is None else (capacity, width)
        return np.zeros(shape, dtype=dtype)

    def _grow_rows(self, needed: int) -> None:
        capacity = len(self.seqs)
        if needed <= capacity:
            return
        new_capacity = max(needed, capacity * 3 // 2, 1024)
        values = self._alloc(self.dtype, self.width, new_capacity)
        values[: self.size] = self.values[: self.size]
        for name, (dt, w) in self._extra_specs.items():
            grown = self._alloc(dt, w, new_capacity)
            grown[: self.size] = self.extras[name][: self.size]
            self.extras[name] = grown
        seqs = np.full(new_capacity, -1, dtype=np.int64)
        seqs[: self.size] = self.seqs[: self.size]
        self.values, self.seqs = values, seqs

    def _grow_lookup(self, needed: int) -> None:
        if needed <= len(self._row_of):
            return
        grown = np.full(max(needed, len(self._row_of) * 3 // 2, 1024), -1, dtype=np.int64)
        grown[: len(self._row_of)] = self._row_of
        self._row_of = grown


class VectorStore:
    """One vector field in memory: exact float32 rows while small, float16 + int8 rows once large.

    The tier follows the number of stored values (see :data:`EXACT_MAX_VALUES`); crossing the threshold
    converts the rows in place, in either direction.
    """

    def __init__(self, dim: int, *, exact_max_values: int = EXACT_MAX_VALUES) -> None:
        self.dim = dim
        self.exact_max_values = exact_max_values
        self.two_stage = False
        self.rows = self._new_rows(two_stage=False)
        self._threads = ThreadChoice(_workers())
        # SimHash codes of the two-stage rows; made by the first threshold search, so a field that is never
        # searched that way pays nothing.
        self._codes: SimHashCodes | None = None

    @property
    def nbytes(self) -> int:
        return self.rows.nbytes + (self._codes.nbytes if self._codes is not None else 0)

    def load(self, seqs: Int64Array, half: F16Array) -> None:
        """Replace every row with these float16 vectors."""
        self.two_stage = self._wants_two_stage(len(seqs))
        self.rows = self._new_rows(self.two_stage)
        self.rows.load(seqs, *self._encode(half))
        self._codes = None

    def put(self, seqs: Int64Array, half: F16Array) -> None:
        if len(seqs) == 0:
            return
        self.rows.put(seqs, *self._encode(half))
        if not self._retier() and self._codes is not None:
            self._codes.update(self.rows.values, self.rows.size, self.rows.rows_for(seqs))

    def remove(self, seqs: Int64Array) -> None:
        # Freed rows keep stale codes: they hold seq -1, which every caller's ``ok`` leaves out.
        self.rows.remove(seqs)
        self._retier()

    def candidates(self, query: F32Array, ok: BoolArray, k: int,
                   min_similarity: float | None = None) -> tuple[IntpArray, F32Array]:
        """Rows that may hold the top k among the rows where ``ok`` is set (and, given ``min_similarity``,
        whose similarity reaches it), with their exact similarity.

        Every ``ok`` row in the exact tier, or when scoring them all exactly is cheaper than the int8
        scan; for a threshold search, the rows whose SimHash codes say they may reach it, when those are
        few enough; otherwise the int8 scan's shortlist of :func:`shortlist_size` rows.
        """
        store = self.rows
        n = store.size
        count = int(ok.sum())
        if count == 0:
            return np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.float32)
        if not self.two_stage:
            rows: IntpArray = np.flatnonzero(ok)
            # Gathering rows costs more per row than a full matrix-vector product: gather only few.
            if count * 8 < n:
                return rows, similarities(store.values[rows], query)
            return rows, similarities(store.values[:n], query)[rows]
        short = shortlist_size(k)
        if count <= short or count <= n // EXACT_TO_COARSE_COST + short:
            rows = np.flatnonzero(ok)
        elif (near := self._near(query, ok, min_similarity)) is not None:
            rows = near
        else:
            codes, _ = quantize(query)
            matrix = store.extras["codes"][:n]
            threads = self._threads.pick() if matrix.size >= PARALLEL_SCAN_VALUES else 1
            started = time.perf_counter()
            coarse = int8_dots(matrix, codes[0], threads=threads)
            if matrix.size >= PARALLEL_SCAN_VALUES:
                self._threads.record(threads, time.perf_counter() - started, matrix.size)
            coarse *= store.extras["scales"][:n]
            if count < n:
                np.putmask(coarse, ~ok, -np.inf)
            np.negative(coarse, out=coarse)
            rows = np.argpartition(coarse, short - 1)[:short]
            rows.sort()
        return rows, half_dots(store.values[rows], query)

    def _near(self, query: F32Array, ok: BoolArray, min_similarity: float | None) -> IntpArray | None:
        """The ``ok`` rows that may reach ``min_similarity`` by their SimHash codes; None when the threshold
        lets through too many rows for exact scoring to beat the int8 scan."""
        if min_similarity is None:
            return None
        bound = hamming_bound(SIMHASH_BITS, float(min_similarity))
        if bound >= SIMHASH_BITS:
            return None
        codes = self.threshold_codes()
        if codes is None or codes.codes is None:
            return None  # still being built
        n = self.rows.size
        hasher = codes.hasher  # ready() has grown the codes to every row
        near = ok & (hasher.distances(codes.codes[:n], hasher.encode(query)[0]) <= bound)
        rows: IntpArray = np.flatnonzero(near)
        return rows if len(rows) <= n // EXACT_TO_COARSE_COST else None

    @property
    def codes_state(self) -> str:
        """Whether threshold searches have their SimHash codes: 'off' (exact tier, or never asked),
        'building' or 'ready'."""
        return self._codes.state if self.two_stage and self._codes is not None else "off"

    def threshold_codes(self, *, wait: bool = False) -> SimHashCodes | None:
        """The SimHash codes threshold searches use in the two-stage tier, once built (the first call
        starts building them in the background; ``wait`` blocks until they are). None in the exact tier."""
        if not self.two_stage:
            return None
        if self._codes is None:
            self._codes = SimHashCodes(SimHash(self.dim))
        return self._codes if self._codes.ready(self.rows.values, self.rows.size, wait=wait) is not None else None

    def _wants_two_stage(self, rows: int) -> bool:
        return rows * self.dim > self.exact_max_values

    def _retier(self) -> bool:
        """Move the rows to the tier their number calls for; True when they moved."""
        wanted = self._wants_two_stage(len(self.rows))
        if wanted == self.two_stage:
            return False
        self._codes = None
        live = self.rows.live_rows()
        seqs = self.rows.seqs[live]
        half = self.rows.values[live].astype(np.float16)  # exact: the float32 rows came from float16
        self.two_stage = wanted
        self.rows = self._new_rows(wanted)
        if len(seqs):
            self.rows.load(seqs, *self._encode(half))
        return True

    def _new_rows(self, two_stage: bool) -> RowStore:
        if two_stage:
            return RowStore(np.float16, self.dim, extras={"codes": (np.int8, self.dim), "scales": (np.float32, None)})
        return RowStore(np.float32, self.dim)

    def _encode(self, half: F16Array) -> tuple[npt.NDArray[Any], dict[str, npt.NDArray[Any]]]:
        if not self.two_stage:
            return half.astype(np.float32), {}
        codes = np.empty(half.shape, dtype=np.int8)
        scales = np.empty(len(half), dtype=np.float32)
        for start in range(0, len(half), _BLOCK_ROWS):
            block = slice(start, start + _BLOCK_ROWS)
            codes[block], scales[block] = quantize(half[block])
        return np.ascontiguousarray(half, dtype=np.float16), {"codes": codes, "scales": scales}
