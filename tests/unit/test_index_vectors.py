"""Vector codecs, popcount and the in-memory row store behind exact k-NN and hash search."""

from __future__ import annotations

import numpy as np
import pytest

from pixdex.errors import IndexMappingError, InvalidRequestError
from pixdex.index.vectors import (
    FacetColumns,
    RowStore,
    decode_vectors,
    encode_vector,
    phash_to_int,
    popcount64,
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
    assert decode_vectors([], 7).shape == (0, 7)


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


def _facets() -> FacetColumns:
    columns = FacetColumns()
    seqs = np.array([1, 2, 3, 4], dtype=np.int64)
    columns.set_docs(
        seqs,
        {
            "format": ["jpeg", "png", "jpeg", None],
            "camera": [None, None, "X", "Y"],
            "year": ["2024", "2023", "2024", "2024"],
        },
    )
    columns.set_labels(seqs, np.array([1, 1, 2, 3, 3, 4], dtype=np.int64), ["cat", "pet", "dog", "cat", "pet", "b"])
    return columns


def test_facet_counts_over_a_subset_sorted_by_count_then_value() -> None:
    columns = _facets()
    everything = np.array([1, 2, 3, 4], dtype=np.int64)
    assert columns.counts("format", everything, 10) == [("jpeg", 2), ("png", 1)]
    assert columns.counts("labels", everything, 10) == [("cat", 2), ("pet", 2), ("b", 1), ("dog", 1)]
    assert columns.counts("labels", everything, 3) == [("cat", 2), ("pet", 2), ("b", 1)]
    assert columns.counts("year", np.array([2, 4], dtype=np.int64), 10) == [("2023", 1), ("2024", 1)]
    assert columns.counts("camera", np.array([1, 2], dtype=np.int64), 10) == []
    assert columns.counts("labels", np.array([], dtype=np.int64), 10) == []
    assert columns.counts("labels", np.array([99], dtype=np.int64), 10) == []


def test_facet_updates_and_removals() -> None:
    columns = _facets()
    everything = np.array([1, 2, 3, 4], dtype=np.int64)
    columns.set_labels(np.array([1], dtype=np.int64), np.array([1], dtype=np.int64), ["dog"])
    columns.set_docs(np.array([2], dtype=np.int64), {"format": ["jpeg"], "camera": [None], "year": [None]})
    assert columns.counts("labels", everything, 10) == [("dog", 2), ("b", 1), ("cat", 1), ("pet", 1)]
    assert columns.counts("format", everything, 10) == [("jpeg", 3)]
    columns.remove(np.array([3, 4, 77], dtype=np.int64))
    assert columns.counts("labels", everything, 10) == [("dog", 2)]
    assert columns.counts("year", everything, 10) == [("2024", 1)]


def test_facet_entries_are_compacted_without_losing_counts() -> None:
    columns = FacetColumns()
    seqs = np.arange(1, 3001, dtype=np.int64)
    for round_ in range(4):
        columns.set_labels(seqs, np.repeat(seqs, 2), [f"l{round_}", "same"] * len(seqs))
    assert columns.counts("labels", seqs, 5) == [("l3", 3000), ("same", 3000)]
    assert columns._entries <= 3 * 6000  # dead entries were dropped along the way


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
