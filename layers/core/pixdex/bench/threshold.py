"""The duplicate searches at library scale: does the SimHash shortlist of threshold searches keep every row?

``pixdex bench duplicates`` analyses a few thousand real images, where a field is small enough for exact
scoring, so the two-stage tier (int8 scan, or SimHash codes for threshold searches) never runs. This study
puts the real image and crop vectors of that run among distractors up to ``rows`` rows per field, in the
index's own :class:`~pixdex.index.vectors.VectorStore`, and runs the three searches a duplicates query makes
(full vector against image vectors, full against crop vectors, crop against image vectors) at the rule's
vector floor, from every ``step``-th real image:

- ground truth: every row's exact similarity (the float16 rows against the float32 query, as the rerank
  scores them), the top ``k`` at or above the floor;
- the int8 path (the scan, a shortlist of k + 256, exact rerank: what these searches ran before) and the
  SimHash path (codes within the binomial bound, exact rerank), each timed on the same queries, interleaved.

Distractors are mixtures of three real vectors (Dirichlet weights, the same mixture for a distractor's full
and crop vector) plus a little noise: closer to the real images than unrelated photos are (photos of one
subject meet there), so more rows pass the bound than in a real library, and the test is harder than one.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt

from pixdex.index.vectors import SIMHASH_BITS, SIMHASH_MISS, VectorStore, half_dots, hamming_bound

F32 = npt.NDArray[np.float32]
NOISE: Final = 0.01


@dataclass
class SearchFigures:
    """One kind of search (probe field against stored field) over every query."""

    true_rows: int = 0
    missed_int8: int = 0
    missed_simhash: int = 0
    scored: list[int] = field(default_factory=list)
    int8_s: list[float] = field(default_factory=list)
    simhash_s: list[float] = field(default_factory=list)


@dataclass
class Scale:
    rows: int
    real: int
    queries: int
    floor: float
    k: int
    searches: dict[str, SearchFigures]
    build_s: float  # building the SimHash codes of one field, once


def _unit(rows: F32) -> F32:
    out: F32 = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)
    return out


def mixtures(full: F32, crop: F32, n: int, seed: int = 7) -> tuple[F32, F32]:
    """``n`` distractor (full, crop) pairs, each a random mixture of three real images' vectors."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(full), size=(n, 3))
    weights = rng.dirichlet((1.0, 1.0, 1.0), size=n).astype(np.float32)[:, :, None]
    out = []
    for source in (full, crop):
        mixed = (source[picks] * weights).sum(axis=1)
        mixed += rng.normal(0.0, NOISE, mixed.shape).astype(np.float32)
        out.append(_unit(mixed))
    return out[0], out[1]


def _top(seqs: npt.NDArray[np.int64], sims: F32, floor: float, k: int) -> set[int]:
    keep = sims >= np.float32(floor)
    seqs, sims = seqs[keep], sims[keep]
    order = np.lexsort((seqs, -sims.astype(np.float64)))[:k]
    return set(seqs[order].tolist())


def run(full: F32, crop: F32, *, rows: int, floor: float, k: int, step: int = 6) -> Scale:
    """The study over the real vectors ``full`` and ``crop`` (one row per image, unit length)."""
    full, crop = _unit(np.asarray(full, dtype=np.float32)), _unit(np.asarray(crop, dtype=np.float32))
    extra_full, extra_crop = mixtures(full, crop, max(rows - len(full), 0))
    seqs = np.arange(1, max(rows, len(full)) + 1, dtype=np.int64)
    stores: dict[str, VectorStore] = {}
    for name, real, extra in (("image_vector", full, extra_full), ("crop_vector", crop, extra_crop)):
        store = VectorStore(real.shape[1], exact_max_values=1)  # the two-stage tier, whatever the size
        store.load(seqs, np.vstack([real, extra]).astype(np.float16))
        stores[name] = store
    ok = np.ones(len(seqs), dtype=bool)
    # A field's first threshold search starts building its codes in the background; timed here once.
    started = time.perf_counter()
    stores["crop_vector"].threshold_codes(wait=True)
    build_s = time.perf_counter() - started
    stores["image_vector"].threshold_codes(wait=True)
    kinds = {"full against image vectors": (full, "image_vector"),
             "full against crop vectors": (full, "crop_vector"),
             "crop against image vectors": (crop, "image_vector")}
    figures = {name: SearchFigures() for name in kinds}
    queries = range(0, len(full), step)
    for q in queries:
        for name, (probes, field_name) in kinds.items():
            store, fig, probe = stores[field_name], figures[name], probes[q]
            row_seqs = store.rows.seqs[: store.rows.size]
            truth = _top(row_seqs, half_dots(store.rows.values[: store.rows.size], probe), floor, k)
            started = time.perf_counter()
            got_rows, got_sims = store.candidates(probe, ok, k)
            fig.int8_s.append(time.perf_counter() - started)
            int8 = _top(row_seqs[got_rows], got_sims, floor, k)
            started = time.perf_counter()
            got_rows, got_sims = store.candidates(probe, ok, k, floor)
            fig.simhash_s.append(time.perf_counter() - started)
            simhash = _top(row_seqs[got_rows], got_sims, floor, k)
            fig.true_rows += len(truth)
            fig.missed_int8 += len(truth - int8)
            fig.missed_simhash += len(truth - simhash)
            fig.scored.append(len(got_rows))
    return Scale(rows=len(seqs), real=len(full), queries=len(queries), floor=floor, k=k, searches=figures,
                 build_s=build_s)


def _ms(values: Sequence[float], q: float) -> str:
    return f"{float(np.percentile(values, q)) * 1000:.1f}"


def render(scale: Scale) -> list[str]:
    bound = hamming_bound(SIMHASH_BITS, scale.floor)
    lines = [
        "### The duplicate searches at library scale (SimHash shortlist)", "",
        f"The real image and crop vectors above ({scale.real} images) among mixtures of them, {scale.rows:,} rows per "
        f"field in the index's two-stage tier (`pixdex/bench/threshold.py`), the three searches of a duplicates query "
        f"at the rule's vector floor ({scale.floor:g}, top {scale.k}) from {scale.queries} of the real images. Truth: "
        "every row scored exactly. int8: the scan + shortlist of k + 256 + exact rerank (what these searches ran "
        f"before); SimHash: rows within {bound} of {SIMHASH_BITS} differing bits (the binomial bound at the floor, "
        f"miss chance {SIMHASH_MISS:g} per row), then the same exact rerank. Times interleaved, one query after the "
        "other, on this machine.", "",
        "| search | rows at the floor or above (top k) | missed: int8 | missed: SimHash | rows scored by SimHash "
        "(median / p95) | int8 p50 / p95 ms | SimHash p50 / p95 ms | SimHash / int8 p50 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, fig in scale.searches.items():
        ratio = float(np.median(fig.simhash_s)) / max(float(np.median(fig.int8_s)), 1e-12)
        lines.append(
            f"| {name} | {fig.true_rows:,} | {fig.missed_int8} | {fig.missed_simhash} | "
            f"{np.median(fig.scored):.0f} / {np.percentile(fig.scored, 95):.0f} | "
            f"{_ms(fig.int8_s, 50)} / {_ms(fig.int8_s, 95)} | {_ms(fig.simhash_s, 50)} / {_ms(fig.simhash_s, 95)} | "
            f"**{ratio:.2f}x** |")
    lines += ["", f"Building one field's codes: {scale.build_s:.2f} s for {scale.rows:,} rows, in the background "
              "after the field's first threshold search (the int8 scan answers until they are ready)."]
    return lines
