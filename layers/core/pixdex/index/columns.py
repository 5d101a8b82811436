"""The embedded index's per-document columns in numpy: filters, sort keys, facets, hashes and id order.

Every search of the SQLite backend evaluates its filters here instead of in SQL: a filter over 100k
documents is a few vectorised comparisons (well under a millisecond), where SQL paid per row for joins and
for shipping candidate ids back to Python (a broad filter on a k-NN query cost ~0.8 s at 100k documents).
The columns are a copy of the ``docs`` and ``doc_labels`` tables, indexed by ``seq``; the backend keeps
them in step with the database by generation (see pixdex.index.sqlite).

Ordering ties by document id without holding every id in memory: each document keeps the first 8 UTF-8
bytes of its id as a big-endian integer (``id_key``), whose order agrees with the ids' order (SQLite's
BINARY collation and Python's str order are both code point order). Only documents whose keys tie as
well are resolved by fetching their full ids.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from pixdex.errors import InvalidRequestError
from pixdex.index.base import Filters, instant_us

Int64Array = npt.NDArray[np.int64]
IntpArray = npt.NDArray[np.intp]
U64Array = npt.NDArray[np.uint64]
BoolArray = npt.NDArray[np.bool_]
IdFetcher = Callable[[Int64Array], dict[int, str]]

# Integer columns store SQL NULL as this value; no filter bound ever matches it.
NULL_INT: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def id_key(doc_id: str) -> int:
    """The first 8 UTF-8 bytes of an id as a big-endian integer: ordered like the ids themselves."""
    return int.from_bytes(doc_id.encode("utf-8", "surrogatepass")[:8].ljust(8, b"\0"), "big")


def id_keys(ids: Sequence[str]) -> U64Array:
    if not ids:
        return np.zeros(0, dtype=np.uint64)
    packed = np.array([i.encode("utf-8", "surrogatepass")[:8] for i in ids], dtype="S8")
    keys: U64Array = packed.view(">u8").astype(np.uint64)
    return keys


def _int_param(value: object, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidRequestError(f"{name} must be an integer", field=name)
    return value


class DocColumns:
    """Filter, sort, facet and hash columns per document sequence.

    Single-valued text fields are dictionary-coded (int32, -1 for none); integers are int64 with
    :data:`NULL_INT` for none; ``has_text`` is int8 (-1 none); ``nsfw`` float64 (NaN none). Labels are
    (seq, label) entries, one contiguous run per document, marked dead when a document's labels change and
    compacted now and then; counting the labels of a result reads only its documents' runs.
    """

    CODED: Final = ("tenant", "format", "camera", "year")
    INTS: Final = ("width", "height", "bytes", "face_count", "taken_us", "uploaded_us", "sort_us")
    FACETS: Final = ("format", "camera", "year", "labels")

    def __init__(self) -> None:
        self._codes: dict[str, dict[str, int]] = {name: {} for name in (*self.CODED, "labels")}
        self._values: dict[str, list[str]] = {name: [] for name in (*self.CODED, "labels")}
        self.capacity = 0
        self.alive: BoolArray = np.zeros(0, dtype=bool)
        self.id_key: U64Array = np.zeros(0, dtype=np.uint64)
        self.coded: dict[str, npt.NDArray[np.int32]] = {n: np.zeros(0, dtype=np.int32) for n in self.CODED}
        self.ints: dict[str, Int64Array] = {n: np.zeros(0, dtype=np.int64) for n in self.INTS}
        self.has_text: npt.NDArray[np.int8] = np.zeros(0, dtype=np.int8)
        self.nsfw: npt.NDArray[np.float64] = np.zeros(0, dtype=np.float64)
        self.phash: U64Array = np.zeros(0, dtype=np.uint64)
        self.has_phash: BoolArray = np.zeros(0, dtype=bool)
        self._entry_seq: Int64Array = np.zeros(0, dtype=np.int64)
        self._entry_label: npt.NDArray[np.int32] = np.zeros(0, dtype=np.int32)
        self._entry_alive: BoolArray = np.zeros(0, dtype=bool)
        self._entries = 0
        self._dead = 0
        self._label_start: Int64Array = np.zeros(0, dtype=np.int64)
        self._label_count: Int64Array = np.zeros(0, dtype=np.int64)

    @property
    def nbytes(self) -> int:
        arrays: list[npt.NDArray[Any]] = [
            self.alive,
            self.id_key,
            self.has_text,
            self.nsfw,
            self.phash,
            self.has_phash,
            *self.coded.values(),
            *self.ints.values(),
            self._entry_seq,
            self._entry_label,
            self._entry_alive,
            self._label_start,
            self._label_count,
        ]
        return int(sum(a.nbytes for a in arrays))

    # -- updates ---------------------------------------------------------------------------------

    def set_docs(self, seqs: Int64Array, ids: Sequence[str], columns: Mapping[str, Sequence[Any]]) -> None:
        """Set every column of these documents. ``columns`` holds, per name, one value per document:
        text or None for :data:`CODED`, ints (NULL_INT for none) for :data:`INTS`, ``has_text`` as
        -1/0/1, ``nsfw`` as float or None, ``phash`` as a signed 64-bit int or None."""
        if len(seqs) == 0:
            return
        self._grow(int(seqs.max()) + 1)
        self.alive[seqs] = True
        self.id_key[seqs] = id_keys(ids)
        for name in self.CODED:
            self.coded[name][seqs] = self._encode(name, columns[name])
        for name in self.INTS:
            self.ints[name][seqs] = np.asarray(columns[name], dtype=np.int64)
        self.has_text[seqs] = np.asarray(columns["has_text"], dtype=np.int8)
        self.nsfw[seqs] = np.asarray(columns["nsfw"], dtype=np.float64)  # None -> NaN
        hashes = columns["phash"]
        self.has_phash[seqs] = [h is not None for h in hashes]
        self.phash[seqs] = np.array([0 if h is None else h for h in hashes], dtype=np.int64).view(np.uint64)

    def set_labels(self, seqs: Int64Array, entry_seqs: Int64Array, entry_labels: Sequence[str]) -> None:
        """Replace the labels of ``seqs`` with the (seq, label) entries given."""
        self._replace_labels(seqs, entry_seqs, self._encode("labels", entry_labels))

    def set_label_members(self, seqs: Int64Array, labels: Sequence[str], members: Sequence[Int64Array]) -> None:
        """Replace the labels of ``seqs``: ``members[i]`` are the documents labelled ``labels[i]``."""
        codes = self._encode("labels", labels)
        lengths = [len(m) for m in members]
        entry_seqs = np.concatenate(members) if members else np.zeros(0, dtype=np.int64)
        self._replace_labels(seqs, entry_seqs, np.repeat(codes, lengths))

    def _replace_labels(self, seqs: Int64Array, entry_seqs: Int64Array, codes: npt.NDArray[np.int32]) -> None:
        self.remove_labels(seqs)
        n = len(entry_seqs)
        if n == 0:
            return
        self._grow(int(entry_seqs.max()) + 1)
        # Each document's entries are kept contiguous, so its labels are one run (start, count).
        order = np.argsort(entry_seqs, kind="stable")
        entry_seqs = entry_seqs[order]
        codes = codes[order]
        needed = self._entries + n
        if needed > len(self._entry_seq):
            capacity = max(needed, len(self._entry_seq) * 3 // 2, 4096)
            self._entry_seq = _grown(self._entry_seq, capacity, 0)
            self._entry_label = _grown(self._entry_label, capacity, 0)
            self._entry_alive = _grown(self._entry_alive, capacity, False)
        start, end = self._entries, self._entries + n
        self._entry_seq[start:end] = entry_seqs
        self._entry_label[start:end] = codes
        self._entry_alive[start:end] = True
        self._entries = end
        owners, firsts, counts = np.unique(entry_seqs, return_index=True, return_counts=True)
        self._label_start[owners] = firsts + start
        self._label_count[owners] = counts

    def remove(self, seqs: Int64Array) -> None:
        seqs = seqs[seqs < self.capacity]
        self.alive[seqs] = False
        for name in self.CODED:
            self.coded[name][seqs] = -1
        self.has_phash[seqs] = False
        self.remove_labels(seqs)

    def remove_labels(self, seqs: Int64Array) -> None:
        seqs = seqs[seqs < self.capacity]
        if len(seqs) == 0 or self._entries == 0:
            return
        runs = _ranges(self._label_start[seqs], self._label_count[seqs])
        self._entry_alive[runs] = False
        self._label_count[seqs] = 0
        self._dead += len(runs)
        if self._dead > max(4096, self._entries // 2):
            keep = self._entry_alive[: self._entries]
            live = int(keep.sum())
            moved = np.cumsum(keep) - 1  # old position -> new position of every kept entry
            owners = np.flatnonzero(self._label_count)
            self._label_start[owners] = moved[self._label_start[owners]]
            self._entry_seq[:live] = self._entry_seq[: self._entries][keep]
            self._entry_label[:live] = self._entry_label[: self._entries][keep]
            self._entry_alive[:live] = True
            self._entry_alive[live : self._entries] = False
            self._entries, self._dead = live, 0

    # -- filters ---------------------------------------------------------------------------------

    def mask(
        self,
        f: Filters,
        pin: int,
        *,
        only: Int64Array | None = None,
        exclude: Int64Array | None = None,
    ) -> BoolArray:
        """Which sequences (index = seq) are live, at most ``pin`` and pass every filter.

        A document without the filtered field never matches. ``only`` restricts to the given sequences
        (the backend resolves ``sha256`` through its index), ``exclude`` drops them (``exclude_ids``).
        """
        m = self.alive.copy()
        m[max(pin + 1, 0) :] = False
        if only is not None:
            allowed = np.zeros(self.capacity, dtype=bool)
            allowed[only[only < self.capacity]] = True
            m &= allowed
        if exclude is not None:
            m[exclude[exclude < self.capacity]] = False
        if f.tenant is not None:
            m &= self._coded_in("tenant", (f.tenant,))
        if f.formats:
            m &= self._coded_in("format", f.formats)
        for label in dict.fromkeys(f.labels):
            m &= self._with_label(label)
        if f.cameras:
            m &= self._coded_in("camera", f.cameras)
        for column, low, high, name in (
            ("width", f.min_width, f.max_width, "width"),
            ("height", f.min_height, f.max_height, "height"),
            ("bytes", f.min_bytes, f.max_bytes, "bytes"),
            ("face_count", f.min_faces, f.max_faces, "face_count"),
        ):
            if low is not None:
                m &= self._at_least(column, _int_param(low, f"min_{name}"))
            if high is not None:
                m &= self._at_most(column, _int_param(high, f"max_{name}"))
        for column, after, before, name in (
            ("taken_us", f.taken_after, f.taken_before, "taken"),
            ("uploaded_us", f.uploaded_after, f.uploaded_before, "uploaded"),
        ):
            if after is not None:
                m &= self._at_least(column, instant_us(after, f"{name}_after", InvalidRequestError))
            if before is not None:
                m &= self._at_most(column, instant_us(before, f"{name}_before", InvalidRequestError))
        if f.has_text is not None:
            m &= self.has_text == (1 if f.has_text else 0)
        if f.max_nsfw is not None:
            if not isinstance(f.max_nsfw, int | float) or isinstance(f.max_nsfw, bool):
                raise InvalidRequestError("max_nsfw must be a number", field="max_nsfw")
            m &= self.nsfw <= float(f.max_nsfw)  # NaN (no score) compares false
        return m

    def _coded_in(self, name: str, values: Sequence[str]) -> BoolArray:
        codes = [self._codes[name][v] for v in values if isinstance(v, str) and v in self._codes[name]]
        if not codes:
            return np.zeros(self.capacity, dtype=bool)
        hit: BoolArray = np.isin(self.coded[name], codes) if len(codes) > 1 else self.coded[name] == codes[0]
        return hit

    def _with_label(self, label: str) -> BoolArray:
        member = np.zeros(self.capacity, dtype=bool)
        code = self._codes["labels"].get(label) if isinstance(label, str) else None
        if code is not None:
            n = self._entries
            chosen = self._entry_alive[:n] & (self._entry_label[:n] == code)
            member[self._entry_seq[:n][chosen]] = True
        return member

    def _at_least(self, column: str, bound: int) -> BoolArray:
        values = self.ints[column]
        if bound > _INT64_MAX:
            return np.zeros(self.capacity, dtype=bool)
        hit: BoolArray = (values != NULL_INT) & (values >= max(bound, NULL_INT))
        return hit

    def _at_most(self, column: str, bound: int) -> BoolArray:
        values = self.ints[column]
        if bound < NULL_INT:
            return np.zeros(self.capacity, dtype=bool)
        hit: BoolArray = (values != NULL_INT) & (values <= min(bound, _INT64_MAX))
        return hit

    # -- facets ----------------------------------------------------------------------------------

    def counts(self, name: str, seqs: Int64Array, size: int) -> list[tuple[str, int]]:
        """The ``size`` most frequent values of a facet among ``seqs``: count desc, then value asc."""
        values = self._values[name]
        if not values or len(seqs) == 0:
            return []
        if name == "labels":
            inside = seqs[seqs < self.capacity]
            codes = self._entry_label[_ranges(self._label_start[inside], self._label_count[inside])]
        else:
            column = self.coded[name]
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

    # -- ordering --------------------------------------------------------------------------------

    def top(
        self,
        keys: npt.NDArray[Any],
        seqs: Int64Array,
        need: int,
        fetch_ids: IdFetcher,
        *,
        ids_descending: bool = False,
    ) -> IntpArray:
        """Positions (into ``keys``/``seqs``) of the ``need`` smallest keys, ties by id, in order.

        Ids ascend unless ``ids_descending``. Only the candidates that can make the cut are sorted.
        """
        n = len(keys)
        if need <= 0 or n == 0:
            return np.zeros(0, dtype=np.intp)
        if need < n:
            kth = np.partition(keys, need - 1)[need - 1]
            chosen: IntpArray = np.flatnonzero(keys <= kth)
        else:
            chosen = np.arange(n, dtype=np.intp)
        tie_keys = self.id_key[seqs[chosen]]
        if ids_descending:
            tie_keys = ~tie_keys
        order = np.lexsort((tie_keys, keys[chosen]))
        chosen, tie_keys = chosen[order], tie_keys[order]
        self._resolve_ties(keys, seqs, chosen, tie_keys, need, fetch_ids, ids_descending)
        return chosen[:need]

    def after(
        self,
        keys: npt.NDArray[Any],
        seqs: Int64Array,
        key: float | int,
        doc_id: str,
        fetch_ids: IdFetcher,
        *,
        ids_descending: bool = False,
    ) -> BoolArray:
        """Which entries sort strictly after the boundary (``key``, ``doc_id``)."""
        boundary = id_key(doc_id)
        tie_keys = self.id_key[seqs]
        later = (tie_keys < boundary) if ids_descending else (tie_keys > boundary)
        same_key = keys == key
        result: BoolArray = (keys > key) | (same_key & later)
        unsure = np.flatnonzero(same_key & (tie_keys == boundary))
        if len(unsure):
            ids = fetch_ids(seqs[unsure])
            for position in unsure:
                other = ids.get(int(seqs[position]))
                if other is not None:
                    result[position] = other < doc_id if ids_descending else other > doc_id
        return result

    def _resolve_ties(
        self,
        keys: npt.NDArray[Any],
        seqs: Int64Array,
        chosen: IntpArray,
        tie_keys: U64Array,
        need: int,
        fetch_ids: IdFetcher,
        ids_descending: bool,
    ) -> None:
        """Sort, in place, runs of ``chosen`` whose keys and id keys both tie, by full id."""
        if len(chosen) < 2:
            return
        ordered_keys = keys[chosen]
        same = (ordered_keys[1:] == ordered_keys[:-1]) & (tie_keys[1:] == tie_keys[:-1])
        if not same.any():
            return
        # same[i]: chosen[i] and chosen[i + 1] tie; a run of True from i to j ties chosen[i : j + 2].
        edges = np.diff(np.concatenate(([0], same.astype(np.int8), [0])))
        runs = [
            (int(s), int(e) + 1)
            for s, e in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True)
            if s < need
        ]
        if not runs:
            return
        ids = fetch_ids(np.concatenate([seqs[chosen[s:e]] for s, e in runs]))
        for s, e in runs:
            run = chosen[s:e].tolist()
            run.sort(key=lambda p: ids.get(int(seqs[p]), ""), reverse=ids_descending)
            chosen[s:e] = run

    # -- internals -------------------------------------------------------------------------------

    def _encode(self, name: str, values: Sequence[Any]) -> npt.NDArray[np.int32]:
        """Dictionary codes of a column's values (compared as text; None is -1), new values coded first."""
        table: dict[Any, int] = {None: -1}
        for value in set(values):
            if value is not None:
                table[value] = self._code(name, str(value))
        return np.fromiter(map(table.__getitem__, values), dtype=np.int32, count=len(values))

    def _code(self, name: str, value: str | None) -> int:
        if value is None:
            return -1
        codes = self._codes[name]
        code = codes.get(value)
        if code is None:
            code = codes[value] = len(codes)
            self._values[name].append(value)
        return code

    def _grow(self, needed: int) -> None:
        if needed <= self.capacity:
            return
        capacity = max(needed, self.capacity * 3 // 2, 1024)
        self.alive = _grown(self.alive, capacity, False)
        self.id_key = _grown(self.id_key, capacity, 0)
        for name in self.CODED:
            self.coded[name] = _grown(self.coded[name], capacity, -1)
        for name in self.INTS:
            self.ints[name] = _grown(self.ints[name], capacity, NULL_INT)
        self.has_text = _grown(self.has_text, capacity, -1)
        self.nsfw = _grown(self.nsfw, capacity, np.nan)
        self.phash = _grown(self.phash, capacity, 0)
        self.has_phash = _grown(self.has_phash, capacity, False)
        self._label_start = _grown(self._label_start, capacity, 0)
        self._label_count = _grown(self._label_count, capacity, 0)
        self.capacity = capacity


def _ranges(starts: Int64Array, counts: Int64Array) -> IntpArray:
    """The concatenated index ranges [start, start + count) without a Python loop."""
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.intp)
    before = np.cumsum(counts) - counts
    ranges: IntpArray = (np.repeat(starts - before, counts) + np.arange(total)).astype(np.intp)
    return ranges


def _grown(array: npt.NDArray[Any], capacity: int, fill: object) -> npt.NDArray[Any]:
    out = np.full(capacity, fill, dtype=array.dtype)
    out[: len(array)] = array
    return out
