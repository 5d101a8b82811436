"""The embedded index's in-memory document columns: filters, facets and ordering with ties by id."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from pixdex.errors import InvalidRequestError
from pixdex.index.base import Filters
from pixdex.index.columns import NULL_INT, DocColumns, Int64Array, id_key, id_keys, instant_us

FORMATS = ("jpeg", "png", "webp")
CAMERAS = ("Canon", "Nikon")
LABELS = ("cat", "dog", "sky", "sea")


def _doc(rng: np.random.Generator) -> dict[str, Any]:
    """A document's column values, each field missing now and then."""

    def maybe(value: Any) -> Any:
        return None if rng.random() < 0.2 else value

    return {
        "tenant": maybe(str(rng.choice(["t1", "t2"]))),
        "format": maybe(str(rng.choice(FORMATS))),
        "camera": maybe(str(rng.choice(CAMERAS))),
        "year": maybe(int(rng.integers(2020, 2024))),
        "width": maybe(int(rng.integers(0, 5000))),
        "height": maybe(int(rng.integers(0, 5000))),
        "bytes": maybe(int(rng.integers(0, 10**7))),
        "face_count": maybe(int(rng.integers(0, 4))),
        "taken_us": maybe(int(rng.integers(0, 10**15))),
        "uploaded_us": maybe(int(rng.integers(0, 10**15))),
        "has_text": maybe(bool(rng.random() < 0.5)),
        "nsfw": maybe(float(rng.random())),
        "phash": maybe(int(rng.integers(-(2**63), 2**63 - 1))),
        "labels": sorted({str(x) for x in rng.choice(LABELS, size=int(rng.integers(0, 3)))}),
    }


def _store(columns: DocColumns, docs: dict[int, dict[str, Any]]) -> None:
    seqs = np.array(sorted(docs), dtype=np.int64)
    rows = [docs[int(s)] for s in seqs]

    def ints(name: str) -> list[int]:
        return [NULL_INT if r[name] is None else r[name] for r in rows]

    columns.set_docs(
        seqs,
        [f"id-{s:05d}" for s in seqs],
        {
            **{name: [r[name] for r in rows] for name in ("tenant", "format", "camera", "year", "phash", "nsfw")},
            **{name: ints(name) for name in ("width", "height", "bytes", "face_count", "taken_us", "uploaded_us")},
            "sort_us": [r["uploaded_us"] or 0 for r in rows],
            "has_text": [-1 if r["has_text"] is None else int(r["has_text"]) for r in rows],
        },
    )
    entries = [(int(s), label) for s in seqs for label in docs[int(s)]["labels"]]
    columns.set_labels(seqs, np.array([e[0] for e in entries], dtype=np.int64), [e[1] for e in entries])


def _passes(doc: dict[str, Any], f: Filters) -> bool:
    """The filter semantics, written out plainly: every given condition holds; missing fields never match."""

    def between(value: Any, low: Any, high: Any) -> bool:
        if low is None and high is None:
            return True
        return value is not None and (low is None or value >= low) and (high is None or value <= high)

    def instant(value: str | None) -> int | None:
        return None if value is None else instant_us(value, "t", InvalidRequestError)

    return (
        (f.tenant is None or doc["tenant"] == f.tenant)
        and (not f.formats or doc["format"] in f.formats)
        and all(label in doc["labels"] for label in f.labels)
        and (not f.cameras or doc["camera"] in f.cameras)
        and between(doc["width"], f.min_width, f.max_width)
        and between(doc["height"], f.min_height, f.max_height)
        and between(doc["bytes"], f.min_bytes, f.max_bytes)
        and between(doc["face_count"], f.min_faces, f.max_faces)
        and between(doc["taken_us"], instant(f.taken_after), instant(f.taken_before))
        and between(doc["uploaded_us"], instant(f.uploaded_after), instant(f.uploaded_before))
        and (f.has_text is None or doc["has_text"] == f.has_text)
        and (f.max_nsfw is None or (doc["nsfw"] is not None and doc["nsfw"] <= f.max_nsfw))
    )


def _random_filters(rng: np.random.Generator) -> Filters:
    def pick(value: Any) -> Any:
        return value if rng.random() < 0.3 else None

    def bound(high: int) -> int | None:
        return pick(int(rng.integers(0, high)))

    def date() -> str | None:
        return pick(f"{int(rng.integers(1970, 2001))}-06-01T00:00:00Z")

    return Filters(
        tenant=pick(str(rng.choice(["t1", "t2", "t3"]))),
        formats=tuple(rng.choice([*FORMATS, "gif"], size=int(rng.integers(0, 3)), replace=False).tolist()),
        labels=tuple(rng.choice([*LABELS, "none"], size=int(rng.integers(0, 3)), replace=False).tolist()),
        cameras=tuple(rng.choice(CAMERAS, size=int(rng.integers(0, 2)), replace=False).tolist()),
        min_width=bound(5000),
        max_width=bound(5000),
        min_height=bound(5000),
        max_height=bound(5000),
        min_bytes=bound(10**7),
        max_bytes=bound(10**7),
        min_faces=bound(4),
        max_faces=bound(4),
        taken_after=date(),
        taken_before=date(),
        uploaded_after=date(),
        uploaded_before=date(),
        has_text=pick(bool(rng.random() < 0.5)),
        max_nsfw=pick(float(rng.random())),
    )


def test_masks_agree_with_the_filter_semantics() -> None:
    rng = np.random.default_rng(8)
    docs = {seq: _doc(rng) for seq in rng.choice(np.arange(1, 5000), size=600, replace=False).tolist()}
    columns = DocColumns()
    _store(columns, docs)
    nonempty = 0
    for _ in range(400):
        f = _random_filters(rng)
        pin = int(rng.integers(0, 5000)) if rng.random() < 0.3 else 10**9
        expected = sorted(s for s, d in docs.items() if s <= pin and _passes(d, f))
        assert np.flatnonzero(columns.mask(f, pin)).tolist() == expected, f
        nonempty += bool(expected)
    assert nonempty > 100  # the random filters do select things


def test_masks_follow_updates_removals_and_restrictions() -> None:
    rng = np.random.default_rng(9)
    docs = {seq: _doc(rng) for seq in range(1, 200)}
    columns = DocColumns()
    _store(columns, docs)
    docs[5] = {**docs[5], "tenant": "t9", "labels": ["sea"]}
    _store(columns, {5: docs[5]})
    columns.remove(np.array([6, 7, 10**6], dtype=np.int64))
    for seq in (6, 7):
        del docs[seq]
    assert np.flatnonzero(columns.mask(Filters(tenant="t9"), 10**9)).tolist() == [5]
    everything = np.flatnonzero(columns.mask(Filters(), 10**9)).tolist()
    assert everything == sorted(docs)
    only = np.array([3, 5, 6, 4000], dtype=np.int64)
    assert np.flatnonzero(columns.mask(Filters(), 10**9, only=only)).tolist() == [3, 5]
    assert np.flatnonzero(columns.mask(Filters(), 10**9, exclude=only)).tolist() == sorted(set(docs) - {3, 5})
    assert np.flatnonzero(columns.mask(Filters(labels=("sea",)), 10**9)).tolist() == sorted(
        s for s, d in docs.items() if "sea" in d["labels"]
    )


@pytest.mark.parametrize(
    "bad",
    [
        Filters(min_width="wide"),  # type: ignore[arg-type]
        Filters(max_faces=True),  # bool is no count
        Filters(taken_after="yesterday"),
        Filters(max_nsfw="low"),  # type: ignore[arg-type]
    ],
)
def test_bad_filter_values_are_request_errors(bad: Filters) -> None:
    with pytest.raises(InvalidRequestError):
        DocColumns().mask(bad, 10)


def test_bounds_beyond_64_bits_match_nothing_or_everything() -> None:
    columns = DocColumns()
    _store(columns, {1: {**_doc(np.random.default_rng(1)), "width": 10}})
    assert not columns.mask(Filters(min_width=2**70), 10).any()
    assert columns.mask(Filters(min_width=-(2**70), max_width=2**70), 10).tolist()[1]


# -- facets -----------------------------------------------------------------------------------------


def _facets() -> DocColumns:
    rng = np.random.default_rng(0)
    docs = {seq: _doc(rng) for seq in (1, 2, 3, 4)}
    for seq, fmt, camera, year, labels in (
        (1, "jpeg", None, 2024, ["cat", "pet"]),
        (2, "png", None, 2023, ["dog"]),
        (3, "jpeg", "X", 2024, ["cat", "pet"]),
        (4, None, "Y", 2024, ["b"]),
    ):
        docs[seq].update(format=fmt, camera=camera, year=year, labels=labels)
    columns = DocColumns()
    _store(columns, docs)
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
    assert columns.counts("labels", everything, 10) == [("dog", 2), ("b", 1), ("cat", 1), ("pet", 1)]
    columns.remove(np.array([3, 4, 77], dtype=np.int64))
    assert columns.counts("labels", everything, 10) == [("dog", 2)]
    assert columns.counts("year", everything, 10) == [("2023", 1), ("2024", 1)]
    assert columns.counts("format", everything, 10) == [("jpeg", 1), ("png", 1)]


def test_facet_entries_are_compacted_without_losing_counts() -> None:
    columns = DocColumns()
    seqs = np.arange(1, 3001, dtype=np.int64)
    for round_ in range(4):
        columns.set_labels(seqs, np.repeat(seqs, 2), [f"l{round_}", "same"] * len(seqs))
    assert columns.counts("labels", seqs, 5) == [("l3", 3000), ("same", 3000)]
    assert columns._entries <= 3 * 6000  # dead entries were dropped along the way


# -- ordering ---------------------------------------------------------------------------------------


def test_id_keys_order_like_the_ids() -> None:
    ids = ["a", "ab", "ab\x00", "abcdefgh", "abcdefghi", "abcdefgi", "z", "é", "€", "\U0001f600", "B", ""]
    keys = id_keys(ids)
    assert keys.tolist() == [id_key(i) for i in ids]
    for a, b in zip(sorted(ids), sorted(ids)[1:], strict=False):
        assert id_key(a) <= id_key(b)  # equal only when the first 8 bytes are


class _Ids:
    """Documents with given ids; counts the full-id lookups the ordering needs."""

    def __init__(self, ids: Sequence[str]) -> None:
        self.ids = {seq: doc_id for seq, doc_id in enumerate(ids, start=1)}
        self.columns = DocColumns()
        seqs = np.array(sorted(self.ids), dtype=np.int64)
        n = len(seqs)
        self.columns.set_docs(
            seqs,
            [self.ids[int(s)] for s in seqs],
            {
                **{name: [None] * n for name in ("tenant", "format", "camera", "year", "phash", "nsfw")},
                **{name: [NULL_INT] * n for name in DocColumns.INTS},
                "has_text": [-1] * n,
            },
        )
        self.lookups = 0

    def fetch(self, seqs: Int64Array) -> dict[int, str]:
        self.lookups += 1
        return {int(s): self.ids[int(s)] for s in seqs}


@pytest.mark.parametrize("descending", [False, True])
def test_top_orders_by_key_then_id_even_when_ids_share_8_bytes(descending: bool) -> None:
    rng = np.random.default_rng(12)
    ids = [f"document-{i:04d}" for i in range(300)] + [f"x{i}" for i in range(300)]  # "document" is 8 bytes
    docs = _Ids(ids)
    seqs = np.arange(1, len(ids) + 1, dtype=np.int64)
    keys = rng.integers(0, 5, size=len(ids)).astype(np.float64)
    expected = sorted(range(len(ids)), key=lambda p: (keys[p], ids[p]), reverse=False)
    if descending:
        expected = sorted(range(len(ids)), key=lambda p: (-keys[p], ids[p]), reverse=True)
    for need in (1, 7, 150, 600, 1000):
        got = docs.columns.top(keys, seqs, need, docs.fetch, ids_descending=descending)
        assert got.tolist() == expected[:need]


def test_ties_on_distinct_prefixes_need_no_lookup() -> None:
    docs = _Ids([f"{i:03d}" for i in range(100)])
    seqs = np.arange(1, 101, dtype=np.int64)
    assert docs.columns.top(np.zeros(100), seqs, 10, docs.fetch).tolist() == list(range(10))
    assert docs.lookups == 0


@pytest.mark.parametrize("descending", [False, True])
def test_after_selects_what_follows_a_boundary(descending: bool) -> None:
    ids = [f"document-{i:02d}" for i in range(40)] + ["a", "b", "c"]
    docs = _Ids(ids)
    seqs = np.arange(1, len(ids) + 1, dtype=np.int64)
    keys = np.array([i % 3 for i in range(len(ids))], dtype=np.int64)
    for boundary in (0, 5, 17, 40, 42):
        key, doc_id = int(keys[boundary]), ids[boundary]
        later = docs.columns.after(keys, seqs, key, doc_id, docs.fetch, ids_descending=descending)
        expected = [
            int(k) > key or (int(k) == key and (i < doc_id if descending else i > doc_id))
            for k, i in zip(keys, ids, strict=True)
        ]
        assert later.tolist() == expected
