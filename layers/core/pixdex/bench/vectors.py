"""``pixdex bench vectors``: pixdex's embedded k-NN against LanceDB and usearch on the same vectors and filters.

Data: the query benchmark's generator (``pixdex.bench.query.populate``): 100k documents with clustered
1280-d image and 384-d caption vectors, and its format distribution (jpeg ~72 %, gif ~1 %). Every engine
gets the same vectors, rounded to float16 as pixdex stores them (so storage precision is not what differs),
and the same queries (vectors of stored documents). Three cases per field: unfiltered, broad filter
(``format = jpeg``) and selective filter (``format = gif``). Ground truth: exact top 10 by cosine over the
rows the filter keeps; recall@10 against it.

Engines:

- ``pixdex index``: the real embedded index (SQLite filters + the vector store + documents back), as the
  query function calls it; its build time is the whole ingest of the documents.
- ``pixdex store``: the vector store alone (``index.vectors.VectorStore``) with the filter as a row mask:
  the kernel the other engines are compared with.
- ``usearch exact``: ``usearch.index.search(..., exact=True)`` over the float16 rows the filter keeps
  (gathered per query: the Python binding has no mask).
- ``usearch HNSW``: an f16 HNSW index (defaults); filters by post-filtering a larger result (10, 100, 1,000,
  ... hits until 10 pass), since the Python binding (2.26) exposes no filter predicate.
- ``LanceDB flat``: brute force (``bypass_vector_index``) with a prefilter (``where(..., prefilter=True)``).
- ``LanceDB IVF-PQ``: ``create_index(index_type="IVF_PQ")``, 256 partitions, dim/16 sub-vectors,
  ``nprobes(20)``, ``refine_factor(10)``, prefilter.
- ``LanceDB HNSW``: ``IVF_HNSW_SQ`` with few partitions, prefilter.

Every engine runs with its own default threading on this machine's cores. LanceDB and usearch come from
the optional extra: ``pip install -e '.[bench]'``; a missing one stops the run with that hint.
Results go to the ``## vectors vs LanceDB, usearch`` section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import importlib
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Final, Protocol

import numpy as np
import numpy.typing as npt

from pixdex.bench.report import publish, write_section
from pixdex.bench.stats import Latency, machine_note
from pixdex.index.base import Filters, ImageIndex, SearchQuery, VectorQuery
from pixdex.index.vectors import VectorStore

SECTION: Final = "## vectors vs LanceDB, usearch"
DEFAULT_OUTPUT: Final = Path("docs/benchmarks.md")
K: Final = 10
CASES: Final = (("unfiltered", None), ("broad (jpeg, ~72 %)", "jpeg"), ("selective (gif, ~1 %)", "gif"))
ENGINES: Final = ("pixdex-index", "pixdex-store", "usearch-exact", "usearch-hnsw", "lancedb-flat",
                  "lancedb-ivfpq", "lancedb-hnsw")

F32 = npt.NDArray[np.float32]
Rows = npt.NDArray[np.intp]


class MissingComparatorError(RuntimeError):
    """A comparison library is not installed; the message says how to install it."""


def need(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingComparatorError(f"{module} is not installed ({exc}); install the comparators with: "
                                ".venv/bin/pip install -e '.[bench]'") from exc


@dataclass(frozen=True)
class Field:
    name: str  # the document field (image_vector, caption_vector)
    vectors: F32  # unit rows, float16-rounded
    formats: npt.NDArray[np.str_]
    masks: dict[str, npt.NDArray[np.bool_]]


class Engine(Protocol):
    label: str
    build_s: float
    memory_note: str

    @property
    def memory_bytes(self) -> int: ...

    def search(self, query: F32, fmt: str | None) -> list[int]: ...


def exact_top(vectors: F32, mask: npt.NDArray[np.bool_] | None, query: F32, k: int = K) -> list[int]:
    """Ground truth: the k rows (among ``mask``) with the highest cosine to ``query``."""
    rows: Rows = np.arange(len(vectors)) if mask is None else np.flatnonzero(mask)
    scores = vectors[rows] @ query
    k = min(k, len(rows))
    top = np.argpartition(-scores, k - 1)[:k]
    return [int(r) for r in rows[top[np.argsort(-scores[top])]]]


def recall(expected: Sequence[int], got: Sequence[int]) -> float:
    if not expected:
        return 1.0
    return len(set(expected) & set(got)) / len(expected)


class PixdexStore:
    label = "pixdex store"
    memory_note = "VectorStore.nbytes"

    def __init__(self, f: Field) -> None:
        start = time.perf_counter()
        self.store = VectorStore(f.vectors.shape[1])
        self.store.load(np.arange(len(f.vectors), dtype=np.int64), f.vectors.astype(np.float16))
        self.build_s = time.perf_counter() - start
        self.memory_bytes = self.store.nbytes
        self.masks = f.masks
        self.all = np.ones(len(f.vectors), dtype=bool)

    def search(self, query: F32, fmt: str | None) -> list[int]:
        rows, sims = self.store.candidates(query, self.masks[fmt] if fmt else self.all, K)
        k = min(K, len(rows))
        top = np.argpartition(-sims, k - 1)[:k]
        # Rows are store rows; load() put seq i at row i, so they are the corpus rows.
        return [int(r) for r in rows[top]]


class PixdexIndex:
    label = "pixdex index"
    memory_note = "index.stats() memory_bytes (all fields, columns, hashes)"

    def __init__(self, index: ImageIndex, f: Field, row_of: dict[str, int], build_s: float) -> None:
        self.index = index
        self.field = f.name
        self.row_of = row_of
        self.build_s = build_s

    @property
    def memory_bytes(self) -> int:
        # Vector fields load on their first search: read after searching.
        return int(self.index.stats().get("memory_bytes", 0))

    def search(self, query: F32, fmt: str | None) -> list[int]:
        filters = Filters(tenant="default", formats=(fmt,) if fmt else ())
        hits = self.index.search(SearchQuery(vector=VectorQuery(field=self.field, vector=query, k=K),
                                             filters=filters, size=K)).hits
        return [self.row_of[h.id] for h in hits]


class UsearchExact:
    label = "usearch exact"
    memory_note = "the float16 matrix"

    def __init__(self, f: Field) -> None:
        self.ui = need("usearch.index")
        start = time.perf_counter()
        self.half = np.ascontiguousarray(f.vectors.astype(np.float16))
        self.build_s = time.perf_counter() - start
        self.memory_bytes = self.half.nbytes
        self.rows = {fmt: np.flatnonzero(m) for fmt, m in f.masks.items()}

    def search(self, query: F32, fmt: str | None) -> list[int]:
        data = self.half if fmt is None else self.half[self.rows[fmt]]
        found = self.ui.search(data, query.astype(np.float16), K, self.ui.MetricKind.Cos, exact=True)
        keys = np.asarray(found.keys, dtype=np.int64)
        return [int(k) for k in (keys if fmt is None else self.rows[fmt][keys])]


class UsearchHnsw:
    label = "usearch HNSW"
    memory_note = "Index.memory_usage"

    def __init__(self, f: Field) -> None:
        ui = need("usearch.index")
        self.index = ui.Index(ndim=f.vectors.shape[1], metric="cos", dtype="f16")
        start = time.perf_counter()
        self.index.add(np.arange(len(f.vectors), dtype=np.uint64), f.vectors)
        self.build_s = time.perf_counter() - start
        self.memory_bytes = int(self.index.memory_usage)
        self.formats = f.formats
        self.n = len(f.vectors)

    def search(self, query: F32, fmt: str | None) -> list[int]:
        count = K
        while True:
            found = self.index.search(query, count)
            keys = [int(k) for k in np.asarray(found.keys)]
            kept = keys if fmt is None else [k for k in keys if self.formats[k] == fmt]
            if len(kept) >= K or count >= self.n:
                return kept[:K]
            count *= 10


class Lance:
    def __init__(self, f: Field, workdir: Path, kind: str) -> None:
        lancedb = need("lancedb")
        pa = need("pyarrow")
        dim = f.vectors.shape[1]
        self.kind = kind
        self.label = {"flat": "LanceDB flat", "ivfpq": "LanceDB IVF-PQ", "hnsw": "LanceDB HNSW"}[kind]
        self.memory_note = "dataset + index on disk"
        self.path = workdir / f"lance-{f.name}-{kind}"
        db = lancedb.connect(str(self.path))
        values = pa.array(f.vectors.reshape(-1), type=pa.float32())
        table = pa.table({"row": pa.array(np.arange(len(f.vectors)), type=pa.int64()),
                          "format": pa.array([str(x) for x in f.formats]),
                          "vector": pa.FixedSizeListArray.from_arrays(values, dim)})
        start = time.perf_counter()
        self.table = db.create_table("vectors", table)
        if kind == "ivfpq":
            self.table.create_index(metric="cosine", index_type="IVF_PQ", num_partitions=256,
                                    num_sub_vectors=dim // 16)
        elif kind == "hnsw":
            self.table.create_index(metric="cosine", index_type="IVF_HNSW_SQ", num_partitions=4)
        self.build_s = time.perf_counter() - start
        self.memory_bytes = sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())

    def search(self, query: F32, fmt: str | None) -> list[int]:
        q = self.table.search(query).distance_type("cosine").select(["row", "_distance"]).limit(K)
        if self.kind == "flat":
            q = q.bypass_vector_index()
        elif self.kind == "ivfpq":
            q = q.nprobes(20).refine_factor(10)
        if fmt is not None:
            q = q.where(f"format = '{fmt}'", prefilter=True)
        return [int(r) for r in q.to_arrow().column("row").to_pylist()]


@dataclass
class CaseResult:
    latency: Latency
    recall: float


@dataclass
class EngineResult:
    label: str
    build_s: float
    memory_bytes: int
    memory_note: str
    cases: dict[str, CaseResult] = field(default_factory=dict)


def measure(engine: Engine, f: Field, queries: Sequence[int], truth: dict[str, list[list[int]]]) -> EngineResult:
    out = EngineResult(engine.label, engine.build_s, 0, engine.memory_note)
    for case, fmt in CASES:
        engine.search(f.vectors[queries[0]], fmt)  # warm: first-touch of pages, lazy loads
        times, recalls = [], []
        for qi, expected in zip(queries, truth[case], strict=True):
            q = f.vectors[qi]
            t = time.perf_counter()
            got = engine.search(q, fmt)
            times.append((time.perf_counter() - t) * 1000)
            recalls.append(recall(expected, got))
        out.cases[case] = CaseResult(Latency.of(times), float(np.mean(recalls)))
    out.memory_bytes = engine.memory_bytes
    print(f"{f.name} {engine.label:>16}: " + ", ".join(
        f"{c} p50 {r.latency.p50:.1f} ms r@10 {r.recall:.3f}" for c, r in out.cases.items()), file=sys.stderr)
    return out


def _unit16(a: F32) -> F32:
    """Unit rows rounded to float16 and not renormalised: exactly what pixdex stores, so ground truth
    computed on them is the ground truth of every engine's input (a renormalised copy would differ from
    the stored one by rounding, enough to swap neighbours 10 and 11)."""
    unit = a / np.linalg.norm(a, axis=1, keepdims=True)
    out: F32 = unit.astype(np.float16).astype(np.float32)
    return out


def build_engine(name: str, f: Field, index: ImageIndex, row_of: dict[str, int], populate_s: float,
                 workdir: Path) -> Engine:
    if name == "pixdex-index":
        return PixdexIndex(index, f, row_of, populate_s)
    if name == "pixdex-store":
        return PixdexStore(f)
    if name == "usearch-exact":
        return UsearchExact(f)
    if name == "usearch-hnsw":
        return UsearchHnsw(f)
    return Lance(f, workdir, name.removeprefix("lancedb-"))


def render(fields: dict[str, list[EngineResult]], args: argparse.Namespace, machine: str, n: int,
           populate_s: float) -> str:
    lines = [SECTION, "",
             f"`pixdex bench vectors --docs {args.docs} --queries {args.queries} --engines {args.engines}`, "
             f"{machine}. {n:,} documents from the query benchmark's generator (clustered vectors); "
             f"{args.queries} queries per case (stored documents' vectors) after one warm-up; recall@10 "
             "against exact search over the same float16-rounded vectors and the rows the filter keeps. "
             f"Building the pixdex index (ingest of all fields and documents) took {populate_s:.0f} s.", ""]
    for name, results in fields.items():
        base = next((r for r in results if r.label == "pixdex store"), results[0])
        dim = 1280 if name == "image_vector" else 384
        lines += [f"### {name} ({dim}-d)", "",
                  "| engine | " + " | ".join(f"{c} p50 / p95 ms | recall@10" for c, _ in CASES) +
                  " | p50 vs pixdex store (unf. / broad / sel.) | build s | memory MB |",
                  "|---|" + "---:|---:|" * len(CASES) + "---:|---:|---:|"]
        for r in results:
            cells = [f"{r.cases[c].latency.p50:.1f} / {r.cases[c].latency.p95:.1f} | {r.cases[c].recall:.3f}"
                     for c, _ in CASES]
            rel = " / ".join(f"{r.cases[c].latency.p50 / max(base.cases[c].latency.p50, 1e-9):.2f}x"
                             for c, _ in CASES)
            lines.append(f"| {r.label} | " + " | ".join(cells) + f" | {rel} | {r.build_s:.1f} | "
                         f"{r.memory_bytes / 1e6:.0f} |")
        lines.append("")
    notes = {r.label: r.memory_note for rs in fields.values() for r in rs}
    lines += ["Memory: " + "; ".join(f"{k}: {v}" for k, v in notes.items()) + ". Peak RSS of the whole run: "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB.", "",
              "Reproduce: `.venv/bin/pip install -e '.[bench]' && pixdex bench vectors` (add `--engines` to "
              "pick, `--docs` for another size).", ""]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=50, help="queries per field and case (default 50)")
    parser.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated, of {','.join(ENGINES)}")
    parser.add_argument("--fields", default="image_vector,caption_vector")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--no-write", dest="write", action="store_false", help="print the section only")


def run(args: argparse.Namespace) -> int:
    from pixdex.bench.query import populate
    from pixdex.index import open_index
    from pixdex.settings import Settings

    names = [e.strip() for e in str(args.engines).split(",") if e.strip()]
    unknown = [e for e in names if e not in ENGINES]
    if unknown:
        print(f"unknown engine(s) {unknown}; choose from {','.join(ENGINES)}", file=sys.stderr)
        return 2
    try:
        if any(e.startswith("usearch") for e in names):
            need("usearch.index")
        if any(e.startswith("lancedb") for e in names):
            need("lancedb")
    except MissingComparatorError as exc:
        print(f"pixdex bench vectors: {exc}", file=sys.stderr)
        return 2
    machine = machine_note()
    fields: dict[str, list[EngineResult]] = {}
    with tempfile.TemporaryDirectory(prefix="pixdex-vec-") as tmp:
        workdir = Path(tmp)
        index = open_index(Settings(index_url=f"sqlite:///{workdir / 'bench.db'}"))
        print(f"indexing {args.docs:,} documents ...", file=sys.stderr)
        start = time.perf_counter()
        corpus = populate(index, args.docs)
        populate_s = time.perf_counter() - start
        assert corpus.caption_vectors is not None
        formats = np.array(corpus.formats)
        masks = {fmt: formats == fmt for _, fmt in CASES if fmt}
        row_of = {doc_id: i for i, doc_id in enumerate(corpus.ids)}
        rng = np.random.default_rng(args.seed)
        raw = {"image_vector": corpus.image_vectors, "caption_vector": corpus.caption_vectors}
        for name in [f.strip() for f in str(args.fields).split(",") if f.strip()]:
            f = Field(name, _unit16(raw[name]), formats, masks)
            queries = [int(i) for i in rng.integers(0, len(f.vectors), size=args.queries)]
            truth = {case: [exact_top(f.vectors, masks[fmt] if fmt else None, f.vectors[q]) for q in queries]
                     for case, fmt in CASES}
            results = []
            for e in names:
                engine = build_engine(e, f, index, row_of, populate_s, workdir)
                results.append(measure(engine, f, queries, truth))
                del engine
            fields[name] = results
            if args.write:  # after each field, so a long run that is stopped still leaves what it measured
                write_section(args.output, SECTION, render(fields, args, machine, args.docs, populate_s))
        index.close()
    section = render(fields, args, machine, args.docs, populate_s)
    publish(section, args.output, SECTION, write=args.write)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pixdex bench vectors", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(list(argv) if argv is not None else None))


if __name__ == "__main__":
    raise SystemExit(main())
