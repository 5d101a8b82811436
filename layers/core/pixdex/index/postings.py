"""Keyword search of the embedded index in memory: the FTS5 table's postings, scored exactly like bm25.

Why: FTS5 computes bm25 row by row (~1.1 us per matching row here, plus a join per row for filters), so a
word found in 60% of 100k documents cost ~100 ms however few hits were asked for. The same postings in
numpy score all matches in about a millisecond.

What is held: per (term, document) the column-weighted term frequency (the sum of the bm25 column weights
over the term's occurrences, which is what FTS5's bm25 accumulates per phrase), the number of tokens per
document and the table's row and token counts. The terms come from FTS5 itself (fts5vocab over the
index, and the same tokenizer on an in-memory table for documents written since and for query words),
so stemming, case and accent folding are exactly the index's. Scores follow FTS5's bm25 (k1 = 1.2,
b = 0.75, IDF floored at 1e-6, the same operations in the same order), so ranking is unchanged.

Updates: a document's entries carry its epoch; rewriting or deleting the document bumps the epoch, which
retires the old entries at once. New entries go to a tail segment; the tail and retired entries are
folded into the sorted base segment when they grow large.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

Int64Array = npt.NDArray[np.int64]
F64Array = npt.NDArray[np.float64]

K1: Final = 1.2
B: Final = 0.75
MIN_IDF: Final = 1e-6
# Fold the tail into the base when it holds this many entries (or a quarter of the base).
TAIL_ENTRIES: Final = 65_536
WORD_CACHE: Final = 10_000


class VocabularyMismatchError(Exception):
    """The index's vocabulary did not line up with its instances; the caller reads them the slow way."""


@dataclass(frozen=True)
class Phrase:
    """The documents holding any of a phrase's terms (sorted seqs) and their weighted frequency."""

    seqs: Int64Array
    freq: F64Array


class Tokenizer:
    """FTS5's tokenizer run on a private in-memory table: the same terms the index holds."""

    def __init__(self, columns: Sequence[str], tokenize: str) -> None:
        self.columns = tuple(columns)
        conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        conn.execute(f"CREATE VIRTUAL TABLE tok USING fts5({', '.join(self.columns)}, tokenize = '{tokenize}')")
        conn.execute("CREATE VIRTUAL TABLE tok_terms USING fts5vocab(tok, instance)")
        self._conn = conn
        # Query words seen before, with their terms: the tokenizer never changes.
        self._known: dict[str, list[str]] = {}

    def close(self) -> None:
        self._conn.close()

    def documents(self, rows: Sequence[tuple[int, Sequence[str]]]) -> list[tuple[str, int, int]]:
        """(term, seq, column index) for every token of the given (seq, column texts) rows."""
        if not rows:
            return []
        column_index = {name: i for i, name in enumerate(self.columns)}
        placeholders = ", ".join("?" * len(self.columns))
        conn = self._conn
        conn.execute("BEGIN")
        try:
            conn.executemany(
                f"INSERT INTO tok (rowid, {', '.join(self.columns)}) VALUES (?, {placeholders})",
                [(seq, *texts) for seq, texts in rows],
            )
            found = conn.execute("SELECT term, doc, col FROM tok_terms").fetchall()
        finally:
            conn.execute("ROLLBACK")
        return [(str(term), int(doc), column_index[col]) for term, doc, col in found]

    def words(self, words: Sequence[str]) -> list[list[str]]:
        """The terms each word becomes, in order (usually one; none or several for odd characters)."""
        missing = list(dict.fromkeys(w for w in words if w not in self._known))
        if missing:
            conn = self._conn
            conn.execute("BEGIN")
            try:
                conn.executemany(
                    f"INSERT INTO tok (rowid, {self.columns[0]}) VALUES (?, ?)", list(enumerate(missing, start=1))
                )
                found = conn.execute("SELECT doc, offset, term FROM tok_terms").fetchall()
            finally:
                conn.execute("ROLLBACK")
            terms: list[list[str]] = [[] for _ in missing]
            for doc, _offset, term in sorted(found):
                terms[int(doc) - 1].append(str(term))
            if len(self._known) + len(missing) > WORD_CACHE:
                self._known.clear()
            self._known.update(zip(missing, terms, strict=True))
        return [list(self._known[w]) for w in words]


class Postings:
    """Per-term document lists with weighted frequencies, and per-document token counts."""

    def __init__(self, weights: Sequence[float]) -> None:
        self.weights = np.asarray(weights, dtype=np.float64)
        self._reset()

    def _reset(self) -> None:
        self.term_ids: dict[str, int] = {}
        self.rows = 0  # documents in the FTS table
        self.tokens = 0  # tokens over all of them
        # Base segment: entries sorted by (term, seq); term t owns [offsets[t], offsets[t + 1]).
        self._offsets: Int64Array = np.zeros(1, dtype=np.int64)
        self._seq: Int64Array = np.zeros(0, dtype=np.int64)
        self._freq: F64Array = np.zeros(0, dtype=np.float64)
        self._epoch: npt.NDArray[np.int32] = np.zeros(0, dtype=np.int32)
        # Tail segment, in arrival order.
        self._tail_term: Int64Array = np.zeros(0, dtype=np.int64)
        self._tail_seq: Int64Array = np.zeros(0, dtype=np.int64)
        self._tail_freq: F64Array = np.zeros(0, dtype=np.float64)
        self._tail_epoch: npt.NDArray[np.int32] = np.zeros(0, dtype=np.int32)
        self._tail = 0
        # Per document sequence.
        self._capacity = 0
        self._doc_epoch: npt.NDArray[np.int32] = np.zeros(0, dtype=np.int32)
        self._doc_len: Int64Array = np.zeros(0, dtype=np.int64)
        self._doc_entries: Int64Array = np.zeros(0, dtype=np.int64)
        self._in_table: npt.NDArray[np.bool_] = np.zeros(0, dtype=bool)
        self._retired = 0

    @property
    def nbytes(self) -> int:
        arrays: list[npt.NDArray[Any]] = [
            self._offsets,
            self._seq,
            self._freq,
            self._epoch,
            self._tail_term,
            self._tail_seq,
            self._tail_freq,
            self._tail_epoch,
            self._doc_epoch,
            self._doc_len,
            self._doc_entries,
            self._in_table,
        ]
        return int(sum(a.nbytes for a in arrays))

    # -- building --------------------------------------------------------------------------------

    def load(self, term_counts: Sequence[tuple[str, int]], instances: Int64Array, table_rows: Int64Array) -> None:
        """Build from the whole index: every term with its number of occurrences, in the index's term
        order, and every occurrence as ``seq * 8 + column`` in that same order (fts5vocab 'row' and
        'instance' tables read in one transaction). ``table_rows`` lists the documents in the table."""
        counts = np.array([c for _, c in term_counts], dtype=np.int64)
        if int(counts.sum()) != len(instances):
            raise VocabularyMismatchError("term counts do not add up to the occurrences read")
        terms = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
        seqs = instances >> 3
        columns = instances & 7
        if len(seqs) and int(columns.max()) >= len(self.weights):
            raise VocabularyMismatchError("an occurrence names an unknown column")
        if np.any((terms[1:] == terms[:-1]) & (seqs[1:] < seqs[:-1])):
            raise VocabularyMismatchError("occurrences are not in term, document order")
        self._reset()
        self.term_ids = {term: i for i, (term, _) in enumerate(term_counts)}
        self._grow(int(max(int(seqs.max(initial=0)), int(table_rows.max(initial=0)))) + 1)
        starts = _run_starts(terms, seqs)
        group_terms = terms[starts]
        group_seqs = seqs[starts]
        self._freq = _sums(self.weights[columns], starts)
        self._seq = group_seqs
        self._epoch = np.zeros(len(starts), dtype=np.int32)
        self._offsets = np.searchsorted(group_terms, np.arange(len(counts) + 1)).astype(np.int64)
        self._doc_len[:] = np.bincount(seqs, minlength=self._capacity)[: self._capacity]
        self._doc_entries[:] = np.bincount(group_seqs, minlength=self._capacity)[: self._capacity]
        self._in_table[table_rows] = True
        self.rows = len(table_rows)
        self.tokens = int(self._doc_len.sum())

    def retire(self, seqs: Int64Array) -> None:
        """Forget these documents (deleted, or about to be re-added)."""
        seqs = seqs[seqs < self._capacity]
        if len(seqs) == 0:
            return
        present = self._in_table[seqs]
        self.rows -= int(present.sum())
        self.tokens -= int(self._doc_len[seqs].sum())
        self._retired += int(self._doc_entries[seqs].sum())
        self._doc_epoch[seqs] += 1
        self._doc_len[seqs] = 0
        self._doc_entries[seqs] = 0
        self._in_table[seqs] = False

    def add(self, seqs: Int64Array, tokens: Sequence[tuple[str, int, int]]) -> None:
        """Add documents (retired before if they were known): ``seqs`` are in the table, ``tokens`` are
        their (term, seq, column) occurrences."""
        if len(seqs):
            self._grow(int(seqs.max()) + 1)
            self._in_table[seqs] = True
            self.rows += len(seqs)
        if not tokens:
            return
        ids = self.term_ids
        terms = np.array([ids.setdefault(t, len(ids)) for t, _, _ in tokens], dtype=np.int64)
        docs = np.array([s for _, s, _ in tokens], dtype=np.int64)
        weights = self.weights[np.array([c for _, _, c in tokens], dtype=np.int64)]
        self._grow(int(docs.max()) + 1)
        order = np.lexsort((docs, terms))
        terms, docs, weights = terms[order], docs[order], weights[order]
        starts = _run_starts(terms, docs)
        group_terms, group_docs = terms[starts], docs[starts]
        freq = _sums(weights, starts)
        length = np.bincount(docs)
        touched = np.flatnonzero(length)
        self._doc_len[touched] += length[touched]
        self.tokens += int(length.sum())
        np.add.at(self._doc_entries, group_docs, 1)
        self._append(group_terms, group_docs, freq, self._doc_epoch[group_docs])
        base = len(self._seq)
        if self._tail > max(TAIL_ENTRIES, base // 4) or self._retired > max(TAIL_ENTRIES, base // 2):
            self._fold()

    # -- querying --------------------------------------------------------------------------------

    def phrase(self, terms: Sequence[str]) -> Phrase:
        """Documents holding any of ``terms`` with their summed weighted frequency."""
        tids = np.array(sorted({self.term_ids[t] for t in terms if t in self.term_ids}), dtype=np.int64)
        if len(tids) == 0:
            return Phrase(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64))
        known = tids[tids < len(self._offsets) - 1]
        starts, lengths = self._offsets[known], self._offsets[known + 1] - self._offsets[known]
        # The concatenated ranges [start, start + length) of every term, without a Python loop.
        before = np.cumsum(lengths) - lengths
        index = np.repeat(starts - before, lengths) + np.arange(int(lengths.sum()))
        seqs, freq, epoch = self._seq[index], self._freq[index], self._epoch[index]
        if self._tail:
            in_tail = np.flatnonzero(np.isin(self._tail_term[: self._tail], tids))
            if len(in_tail):
                seqs = np.concatenate((seqs, self._tail_seq[in_tail]))
                freq = np.concatenate((freq, self._tail_freq[in_tail]))
                epoch = np.concatenate((epoch, self._tail_epoch[in_tail]))
        live = epoch == self._doc_epoch[seqs]
        seqs, freq = seqs[live], freq[live]
        if len(known) > 1 or self._tail:
            order = np.argsort(seqs, kind="stable")
            seqs, freq = seqs[order], freq[order]
            firsts = _run_starts(seqs)
            if len(firsts) < len(seqs):
                freq = _sums(freq, firsts)
                seqs = seqs[firsts]
        return Phrase(seqs, freq)

    def search(self, groups: Sequence[Sequence[Phrase]], *, every: bool = True) -> tuple[Int64Array, F64Array]:
        """Documents matching every group (any group when ``every`` is false: FTS5's OR), with their bm25
        score over all phrases in order, as FTS5 computes ``-bm25(fts, weights...)``.

        A group matches where any of its phrases does; its last phrase must hold the documents of the
        others (a word and its prefix: the prefix's terms include the word), so it stands for the group.
        """
        matched: Int64Array | None = None
        if every or len(groups) < 2:
            for group in sorted(groups, key=lambda g: len(g[-1].seqs)):
                union = group[-1].seqs
                matched = union if matched is None else _intersect(matched, union)
        else:
            # One pass over a flag per document: sorting the concatenated lists cost more at 100k.
            present = np.zeros(self._capacity, dtype=bool)
            for group in groups:
                present[group[-1].seqs] = True
            matched = np.flatnonzero(present).astype(np.int64)
        if matched is None or len(matched) == 0 or self.rows <= 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
        avgdl = float(self.tokens) / float(self.rows)
        length = self._doc_len[matched].astype(np.float64)
        norm = K1 * ((1 - B) + B * length / avgdl)
        score = np.zeros(len(matched), dtype=np.float64)
        for group in groups:
            for p in group:
                idf = math.log((self.rows - len(p.seqs) + 0.5) / (len(p.seqs) + 0.5))
                if idf <= 0.0:
                    idf = MIN_IDF
                at = np.searchsorted(p.seqs, matched)
                inside = at < len(p.seqs)
                hit = np.zeros(len(matched), dtype=bool)
                hit[inside] = p.seqs[at[inside]] == matched[inside]
                freq = np.zeros(len(matched), dtype=np.float64)
                freq[hit] = p.freq[at[hit]]
                score += idf * ((freq * (K1 + 1.0)) / (freq + norm))
        return matched, score

    # -- internals -------------------------------------------------------------------------------

    def _append(self, terms: Int64Array, seqs: Int64Array, freq: F64Array, epoch: npt.NDArray[np.int32]) -> None:
        needed = self._tail + len(terms)
        if needed > len(self._tail_term):
            capacity = max(needed, len(self._tail_term) * 3 // 2, 4096)
            self._tail_term = _grown(self._tail_term, capacity, 0)
            self._tail_seq = _grown(self._tail_seq, capacity, 0)
            self._tail_freq = _grown(self._tail_freq, capacity, 0.0)
            self._tail_epoch = _grown(self._tail_epoch, capacity, 0)
        end = self._tail + len(terms)
        self._tail_term[self._tail : end] = terms
        self._tail_seq[self._tail : end] = seqs
        self._tail_freq[self._tail : end] = freq
        self._tail_epoch[self._tail : end] = epoch
        self._tail = end

    def _fold(self) -> None:
        """Merge the tail into the base and drop retired entries: one sort of every live entry."""
        base_terms = np.repeat(np.arange(len(self._offsets) - 1, dtype=np.int64), np.diff(self._offsets))
        terms = np.concatenate((base_terms, self._tail_term[: self._tail]))
        seqs = np.concatenate((self._seq, self._tail_seq[: self._tail]))
        freq = np.concatenate((self._freq, self._tail_freq[: self._tail]))
        epoch = np.concatenate((self._epoch, self._tail_epoch[: self._tail]))
        live = epoch == self._doc_epoch[seqs]
        terms, seqs, freq, epoch = terms[live], seqs[live], freq[live], epoch[live]
        order = np.lexsort((seqs, terms))
        self._seq, self._freq, self._epoch = seqs[order], freq[order], epoch[order]
        self._offsets = np.searchsorted(terms[order], np.arange(len(self.term_ids) + 1)).astype(np.int64)
        self._tail = 0
        self._retired = 0

    def _grow(self, needed: int) -> None:
        if needed <= self._capacity:
            return
        capacity = max(needed, self._capacity * 3 // 2, 1024)
        self._doc_epoch = _grown(self._doc_epoch, capacity, 0)
        self._doc_len = _grown(self._doc_len, capacity, 0)
        self._doc_entries = _grown(self._doc_entries, capacity, 0)
        self._in_table = _grown(self._in_table, capacity, False)
        self._capacity = capacity


def _intersect(small: Int64Array, large: Int64Array) -> Int64Array:
    """The common values of two sorted arrays of unique values (the first being the smaller)."""
    if len(small) == 0 or len(large) == 0:
        return small[:0]
    at = np.searchsorted(large, small)
    found = at < len(large)
    found[found] = large[at[found]] == small[found]
    common: Int64Array = small[found]
    return common


def _run_starts(*keys: Int64Array) -> Int64Array:
    """Where each run of equal consecutive key tuples begins."""
    n = len(keys[0])
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    change = np.zeros(n, dtype=bool)
    change[0] = True
    for key in keys:
        change[1:] |= key[1:] != key[:-1]
    return np.flatnonzero(change).astype(np.int64)


def _sums(values: F64Array, starts: Int64Array) -> F64Array:
    if len(starts) == 0:
        return np.zeros(0, dtype=np.float64)
    sums: F64Array = np.add.reduceat(values, starts)
    return sums


def _grown(array: npt.NDArray[Any], capacity: int, fill: object) -> npt.NDArray[Any]:
    out = np.full(capacity, fill, dtype=array.dtype)
    out[: len(array)] = array
    return out
