"""Vector codecs, kernels, popcount, and the in-memory row and vector stores behind k-NN and hash search."""

from __future__ import annotations

import math
import threading

import numpy as np
import numpy.typing as npt
import pytest

from pixdex.errors import IndexMappingError, InvalidRequestError
from pixdex.index import vectors
from pixdex.index.vectors import (
    SIMHASH_BITS,
    RowStore,
    SimHash,
    VectorStore,
    decode_half,
    decode_vectors,
    encode_vector,
    half_dots,
    hamming_bound,
    int8_dots,
    phash_to_int,
    popcount64,
    quantize,
    shortlist_size,
    similarities,
    unit_vector,
)


def test_unit_vector_normalises_in_float64() -> None:
    v = unit_vector([3.0, 4.0], field="f")
    assert v.dtype == np.float32
    np.testing.assert_allclose(v, [0.6, 0.8])
    big = unit_vector([3e30, 4e30], field="f")  # float32 squares would overflow
    np.testing.assert_allclose(big, [0.6, 0.8])


@pytest.mark.parametrize("bad", [[], [[1.0]], [0.0, 0.0], [1.0, np.nan], [np.inf, 1.0], "abc", [1.0, "x"]])
def test_unit_vector_refuses_what_has_no_direction(bad: object) -> None:
    with pytest.raises(IndexMappingError):
        unit_vector(bad, field="f")
    with pytest.raises(InvalidRequestError):
        unit_vector(bad, field="f", on_error=InvalidRequestError)


def test_float16_round_trip_is_close() -> None:
    rng = np.random.default_rng(0)
    units = [unit_vector(rng.standard_normal(384), field="f") for _ in range(5)]
    decoded = decode_vectors([encode_vector(u) for u in units], 384)
    assert decoded.shape == (5, 384) and decoded.dtype == np.float32
    np.testing.assert_allclose(decoded, np.stack(units), atol=1e-3)
    assert np.all(np.abs(np.sum(decoded * np.stack(units), axis=1) - 1) < 1e-3)


def test_decoding_blobs_of_another_dimension_fails() -> None:
    with pytest.raises(IndexMappingError):
        decode_vectors([encode_vector(np.ones(4, dtype=np.float32))], 5)
    with pytest.raises(IndexMappingError):
        decode_half([encode_vector(np.ones(4, dtype=np.float32))], 3)
    assert decode_vectors([], 7).shape == (0, 7)
    half = decode_half([encode_vector(np.full(4, 0.5, dtype=np.float32))], 4)
    assert half.dtype == np.float16 and half.tolist() == [[0.5] * 4]


def test_popcount_matches_python_on_both_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    values = rng.integers(0, 2**63, size=1000, dtype=np.int64).view(np.uint64) ^ np.uint64(2**63)
    values[:3] = [0, 2**64 - 1, 1]
    expected = [bin(int(v)).count("1") for v in values]
    assert popcount64(values).tolist() == expected
    monkeypatch.delattr(np, "bitwise_count", raising=False)
    assert popcount64(values).tolist() == expected


@pytest.mark.parametrize("bad", ["", "0" * 15, "0" * 17, "g" * 16, None, 12])
def test_phash_must_be_16_hex_digits(bad: object) -> None:
    with pytest.raises(InvalidRequestError):
        phash_to_int(bad)  # type: ignore[arg-type]


def test_phash_parses_full_64_bits() -> None:
    assert phash_to_int("ffffffffffffffff") == 2**64 - 1
    assert phash_to_int("00000000000000A0") == 160


def test_row_store_put_replace_remove_and_reuse() -> None:
    store = RowStore(np.float32, 2)
    store.put(np.array([5, 9], dtype=np.int64), np.array([[1, 1], [2, 2]], dtype=np.float32))
    store.put(np.array([9, 3000], dtype=np.int64), np.array([[3, 3], [4, 4]], dtype=np.float32))
    assert len(store) == 3
    rows = store.rows_for(np.array([9, 5, 7, 3000, -1, 10**6], dtype=np.int64))
    assert store.seqs[rows].tolist() == [9, 5, 3000]
    assert store.values[rows].tolist() == [[3, 3], [1, 1], [4, 4]]

    store.remove(np.array([5, 42, 10**7], dtype=np.int64))
    assert len(store) == 2
    live = store.live_rows()
    assert sorted(store.seqs[live].tolist()) == [9, 3000]
    # Freed rows are zero, so whole-matrix products stay finite.
    freed = store.seqs[: store.size] < 0
    assert freed.sum() == 1 and np.all(store.values[: store.size][freed] == 0)
    size_before = store.size
    store.put(np.array([11], dtype=np.int64), np.array([[7, 7]], dtype=np.float32))
    assert store.size == size_before  # the freed row was reused
    assert store.values[store.rows_for(np.array([11], dtype=np.int64))].tolist() == [[7, 7]]


def test_row_store_grows_past_its_capacity() -> None:
    store = RowStore(np.uint64)
    seqs = np.arange(1, 5001, dtype=np.int64)
    store.put(seqs, seqs.astype(np.uint64) * np.uint64(3))
    assert len(store) == 5000
    rows = store.rows_for(np.array([1, 4999, 5000], dtype=np.int64))
    assert store.values[rows].tolist() == [3, 14997, 15000]


def test_row_store_load_replaces_everything() -> None:
    store = RowStore(np.float32, 1)
    store.put(np.array([1], dtype=np.int64), np.array([[1.0]], dtype=np.float32))
    store.load(np.array([4, 2], dtype=np.int64), np.array([[4.0], [2.0]], dtype=np.float32))
    assert len(store) == 2
    assert store.rows_for(np.array([1], dtype=np.int64)).tolist() == []
    assert store.values[store.rows_for(np.array([2, 4], dtype=np.int64))].ravel().tolist() == [2.0, 4.0]
    store.put(np.array([8], dtype=np.int64), np.array([[8.0]], dtype=np.float32))
    assert store.values[store.rows_for(np.array([8, 4], dtype=np.int64))].ravel().tolist() == [8.0, 4.0]


def test_similarities_do_not_depend_on_the_rest_of_the_matrix() -> None:
    rng = np.random.default_rng(5)
    matrix = rng.standard_normal((40_000, 64)).astype(np.float32)  # more than one block of rows
    query = rng.standard_normal(64).astype(np.float32)
    full = similarities(matrix, query)
    np.testing.assert_allclose(full, matrix.astype(np.float64) @ query.astype(np.float64), rtol=1e-4, atol=1e-4)
    subset = np.sort(rng.choice(len(matrix), 999, replace=False))
    # Bit-identical: a document's score must not change between a filtered and an unfiltered query.
    assert np.array_equal(similarities(matrix[subset], query), full[subset])
    assert similarities(matrix[:0], query).shape == (0,)


# -- two-stage tier: int8 scan, exact rerank ---------------------------------------------------------


def clustered(n: int, dim: int, seed: int = 3, spread: float = 4.8) -> npt.NDArray[np.float32]:
    """Unit vectors around 64 centres, noise of norm ``spread`` (the benchmark's generator)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((64, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    points = centres[rng.integers(0, 64, n)] + spread * rng.standard_normal((n, dim)) / np.sqrt(dim)
    unit: npt.NDArray[np.float32] = (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)
    return unit


def test_quantize_keeps_each_row_within_half_a_step() -> None:
    rows = clustered(50, 96)
    rows[3] = 0.0
    codes, scales = quantize(rows)
    assert codes.dtype == np.int8 and scales.dtype == np.float32
    assert np.abs(codes).max() == 127
    assert np.all(np.abs(codes.astype(np.float32) * scales[:, None] - rows) <= scales[:, None] / 2 + 1e-7)
    assert np.all(codes[3] == 0)


def test_int8_dots_are_exact_integers_on_both_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(4)
    codes = rng.integers(-127, 128, size=(3000, 1280), dtype=np.int8)
    query = rng.choice(np.array([-127, 127], dtype=np.int8), size=1280)
    codes[:10] = query  # sums past 2^24, where float32 rounds: both paths must round alike
    codes[1, 0] -= np.sign(query[0])
    expected = (codes.astype(np.int64) @ query.astype(np.int64)).astype(np.float32)
    assert np.array_equal(int8_dots(codes, query), expected)
    assert np.array_equal(int8_dots(codes, query, threads=2), expected)  # the threaded kernel sums the same
    monkeypatch.setattr(vectors, "_SIMSIMD", None)
    assert np.array_equal(int8_dots(codes, query), expected)
    assert int8_dots(codes[:0], query).shape == (0,)


def test_thread_choice_follows_the_measured_speed() -> None:
    choice = vectors.ThreadChoice(2, explore_every=4)
    assert [choice.pick(), choice.pick()] == [1, 1]  # untried options first, one at a time
    choice.record(1, 0.010, 1000)
    assert choice.pick() == 2
    choice.record(2, 0.006, 1000)
    picks = [choice.pick() for _ in range(8)]
    assert picks.count(2) == 6 and picks.count(1) == 2  # the slower option is timed again now and then
    for _ in range(10):  # the other core got busy: two threads became slow
        choice.record(2, 0.030, 1000)
    assert [choice.pick() for _ in range(3)].count(1) >= 2
    assert vectors.ThreadChoice(1).options == (1,)


def test_half_dots_keep_float32_precision_on_both_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = clustered(3000, 384).astype(np.float16)
    query = unit_vector(np.random.default_rng(5).standard_normal(384), field="q")
    exact = rows.astype(np.float64) @ query.astype(np.float64)
    fast = half_dots(rows, query)
    np.testing.assert_allclose(fast, exact, atol=2e-7)
    subset = np.arange(0, 3000, 7)
    assert np.array_equal(half_dots(rows[subset], query), fast[subset])  # a row's score never depends on others
    monkeypatch.setattr(vectors, "_SIMSIMD", None)
    np.testing.assert_allclose(half_dots(rows, query), exact, atol=2e-7)


def test_row_store_keeps_extras_aligned() -> None:
    store = RowStore(np.float16, 2, extras={"codes": (np.int8, 2), "scales": (np.float32, None)})
    seqs = np.arange(1, 1501, dtype=np.int64)  # past the first capacity
    store.put(
        seqs,
        np.ones((1500, 2), dtype=np.float16),
        {"codes": np.full((1500, 2), 5, dtype=np.int8), "scales": seqs.astype(np.float32)},
    )
    store.remove(np.array([7], dtype=np.int64))
    rows = store.rows_for(np.array([1500, 7, 2], dtype=np.int64))
    assert store.extras["scales"][rows].tolist() == [1500.0, 2.0]
    assert store.extras["codes"][store.size - 1].tolist() == [5, 5]
    with pytest.raises(ValueError, match="extras"):
        store.put(np.array([9], dtype=np.int64), np.ones((1, 2), dtype=np.float16))


def test_shortlist_grows_with_k() -> None:
    assert shortlist_size(10) == 266
    assert shortlist_size(1000) == 1256
    assert shortlist_size(10_000) == 12_500


def _top(store: VectorStore, query: npt.NDArray[np.float32], ok: npt.NDArray[np.bool_], k: int) -> list[int]:
    rows, sims = store.candidates(query, ok, k)
    order = np.lexsort((store.rows.seqs[rows], -sims.astype(np.float64)))[:k]
    return store.rows.seqs[rows][order].tolist()


def test_the_tier_follows_the_size_and_scores_stay_close() -> None:
    points = clustered(3000, 64)
    half = points.astype(np.float16)
    seqs = np.arange(1, 3001, dtype=np.int64)
    store = VectorStore(64, exact_max_values=2000 * 64)
    store.load(seqs[:1500], half[:1500])
    assert not store.two_stage
    store.put(seqs[1500:], half[1500:])
    assert store.two_stage and len(store.rows) == 3000
    query = points[17]
    two_stage = _top(store, query, np.ones(store.rows.size, dtype=bool), 50)
    store.remove(seqs[:1200])
    assert not store.two_stage and len(store.rows) == 1800
    store.put(seqs[:1200], half[:1200])
    assert store.two_stage
    assert _top(store, query, np.ones(store.rows.size, dtype=bool), 50) == two_stage
    exact = VectorStore(64, exact_max_values=10**9)
    exact.load(seqs, half)
    assert _top(exact, query, np.ones(exact.rows.size, dtype=bool), 50) == two_stage


@pytest.mark.parametrize(("dim", "k"), [(384, 10), (384, 1000), (1280, 10)])
def test_two_stage_recall_against_exact_search(dim: int, k: int) -> None:
    """recall@k of the int8 scan + rerank against exact search, on the benchmark's kind of vectors."""
    n = 20_000
    points = clustered(n, dim)
    half = points.astype(np.float16)
    seqs = np.arange(1, n + 1, dtype=np.int64)
    approx = VectorStore(dim, exact_max_values=1)
    approx.load(seqs, half)
    exact = half.astype(np.float64)
    ok = np.ones(n, dtype=bool)
    recalls = []
    for q in range(0, n, n // 20):
        query = points[q]
        truth = set((np.argsort(-(exact @ query), kind="stable")[:k] + 1).tolist())
        recalls.append(len(truth & set(_top(approx, query, ok, k))) / k)
    assert min(recalls) >= 0.98
    assert np.mean(recalls) >= 0.995


def test_selective_filters_are_scored_exactly_in_the_two_stage_tier() -> None:
    n = 20_000
    points = clustered(n, 128)
    store = VectorStore(128, exact_max_values=1)
    store.load(np.arange(1, n + 1, dtype=np.int64), points.astype(np.float16))
    ok = np.zeros(n, dtype=bool)
    ok[::9] = True  # 2,223 candidates: fewer than n / 5 + the shortlist
    rows, sims = store.candidates(points[0], ok, 10)
    assert sorted(rows.tolist()) == np.flatnonzero(ok).tolist()
    np.testing.assert_allclose(sims, points.astype(np.float16)[rows].astype(np.float64) @ points[0], atol=2e-7)
    ok[:] = True
    rows, _ = store.candidates(points[0], ok, 10)
    assert len(rows) == shortlist_size(10)


def _binomial_tail(bits: int, p: float, h: int) -> float:
    """P(Binomial(bits, p) >= h), summed with exact integer binomial coefficients."""
    return float(sum(math.comb(bits, j) * p**j * (1 - p) ** (bits - j) for j in range(h, bits + 1)))


@pytest.mark.parametrize("similarity", [0.0, 0.5, 0.69, 0.82, 0.95])
def test_hamming_bound_is_the_binomial_quantile(similarity: float) -> None:
    bound = hamming_bound(SIMHASH_BITS, similarity)
    p = math.acos(similarity - 2e-3) / math.pi
    assert _binomial_tail(SIMHASH_BITS, p, bound + 1) <= 1e-6 < _binomial_tail(SIMHASH_BITS, p, bound)


def test_hamming_bound_shrinks_as_the_threshold_rises() -> None:
    bounds = [hamming_bound(SIMHASH_BITS, s) for s in (-1.0, 0.0, 0.5, 0.69, 0.82, 0.95, 1.0, 1.5)]
    assert bounds == sorted(bounds, reverse=True) and len(set(bounds[1:-1])) == 6
    assert bounds[0] == SIMHASH_BITS  # nothing can be left out: the int8 path serves


def test_simhash_distance_follows_the_angle_on_both_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pairs at angle theta differ in a fraction theta / pi of the bits (Charikar's SimHash), the same
    count from simsimd and from numpy."""
    rng = np.random.default_rng(11)
    dim, pairs = 256, 400
    hasher = SimHash(dim)
    for cosine in (0.3, 0.69, 0.9):
        a = rng.standard_normal((pairs, dim))
        a /= np.linalg.norm(a, axis=1, keepdims=True)
        b = rng.standard_normal((pairs, dim))
        b -= (b * a).sum(axis=1, keepdims=True) * a
        b /= np.linalg.norm(b, axis=1, keepdims=True)
        other = cosine * a + math.sqrt(1 - cosine**2) * b
        codes_a, codes_b = hasher.encode(a), hasher.encode(other)
        fast = np.array([hasher.distances(codes_b[i : i + 1], codes_a[i])[0] for i in range(pairs)])
        monkeypatch.setattr(vectors, "_SIMSIMD", None)
        slow = np.array([hasher.distances(codes_b[i : i + 1], codes_a[i])[0] for i in range(pairs)])
        monkeypatch.undo()
        np.testing.assert_array_equal(fast, slow)
        assert abs(fast.mean() / SIMHASH_BITS - math.acos(cosine) / math.pi) < 0.01


def _above(store: VectorStore, query: npt.NDArray[np.float32], ok: npt.NDArray[np.bool_],
           threshold: float) -> set[int]:
    rows, sims = store.candidates(query, ok, 50, threshold)
    return set(store.rows.seqs[rows[sims >= np.float32(threshold)]].tolist())


def test_threshold_search_finds_every_row_above_it_and_few_others(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SimHash path of the two-stage tier returns exactly the rows an exact scan puts at or above the
    threshold (the benchmark's clustered vectors: cluster mates sit at cosine ~0.7), also after rows are
    added, replaced and removed, without the int8 scan, and scores a small part of the rows."""

    def no_scan(*_: object, **__: object) -> None:
        raise AssertionError("a threshold search this selective must not run the int8 scan")

    n, dim = 20_000, 256
    points = clustered(n, dim, spread=0.6)
    seqs = np.arange(1, n + 1, dtype=np.int64)
    store = VectorStore(dim, exact_max_values=1)
    store.load(seqs[:15_000], points[:15_000].astype(np.float16))
    assert store.threshold_codes(wait=True) is not None
    monkeypatch.setattr(vectors, "int8_dots", no_scan)
    rng = np.random.default_rng(5)
    noise = rng.standard_normal((n, dim)).astype(np.float32) * (0.35 / math.sqrt(dim))

    def truth(query: npt.NDArray[np.float32], threshold: float) -> set[int]:
        live = store.rows.seqs[: store.rows.size]
        sims = half_dots(store.rows.values[: store.rows.size], query)
        return set(live[(live >= 0) & (sims >= np.float32(threshold))].tolist())

    def check() -> None:
        ok = store.rows.seqs[: store.rows.size] >= 0
        for q in range(0, n, 997):
            query = points[q] + noise[q]
            query /= np.linalg.norm(query)
            for threshold in (0.69, 0.82):
                assert _above(store, query, ok, threshold) == truth(query, threshold)

    check()
    store.put(seqs[15_000:], points[15_000:].astype(np.float16))
    store.put(seqs[:500], points[500:1000].astype(np.float16))  # replaced in place
    store.remove(seqs[2000:2600])
    check()
    ok = store.rows.seqs[: store.rows.size] >= 0
    rows, _ = store.candidates(points[3], ok, 50, 0.82)
    assert len(rows) < store.rows.size // 20


def test_codes_are_built_in_the_background_and_catch_up_with_puts(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first threshold search starts the build and is answered by the int8 scan; rows put while the
    build runs are encoded once it is done, so the codes never lag the rows."""
    n, dim = 20_000, 128
    points = clustered(n, dim, spread=0.6)
    seqs = np.arange(1, n + 1, dtype=np.int64)
    store = VectorStore(dim, exact_max_values=1)
    store.load(seqs[:10_000], points[:10_000].astype(np.float16))
    release = threading.Event()
    encode = SimHash.encode

    def slow_encode(self: SimHash, rows: npt.NDArray[np.float16]) -> npt.NDArray[np.uint8]:
        if len(rows) > 1000:  # the build, not a put's few rows
            assert release.wait(30)
        return encode(self, rows)

    monkeypatch.setattr(SimHash, "encode", slow_encode)
    ok = np.ones(10_000, dtype=bool)
    rows, _ = store.candidates(points[0], ok, 10, 0.69)
    assert len(rows) == shortlist_size(10)  # the int8 path, while the codes are built
    assert store.threshold_codes() is None
    store.put(seqs[10_000:], points[10_000:].astype(np.float16))  # new rows during the build
    store.put(seqs[:100], points[100:200].astype(np.float16))  # and rows changed under it
    release.set()
    codes = store.threshold_codes(wait=True)
    assert codes is not None and codes.codes is not None
    live = store.rows.live_rows()
    np.testing.assert_array_equal(codes.codes[live], encode(codes.hasher, store.rows.values[live]))


def test_threshold_search_honours_filters_and_falls_back_when_many_rows_pass() -> None:
    n, dim = 20_000, 128
    points = clustered(n, dim, spread=0.6)
    store = VectorStore(dim, exact_max_values=1)
    store.load(np.arange(1, n + 1, dtype=np.int64), points.astype(np.float16))
    assert store.threshold_codes(wait=True) is not None
    ok = np.ones(n, dtype=bool)
    ok[1::2] = False
    rows, _ = store.candidates(points[0], ok, 10, 0.69)
    assert len(rows) and ok[rows].all()
    # cosine 0 lets about half the rows through: the int8 scan's shortlist is cheaper than scoring them.
    rows, _ = store.candidates(points[0], np.ones(n, dtype=bool), 10, 0.0)
    assert len(rows) == shortlist_size(10)
