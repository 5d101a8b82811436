"""``pixdex bench query``: latency of each query kind through the query handler, at growing index sizes.

Documents are synthetic with realistic distributions: a Zipf-distributed label vocabulary with WordNet-like
parents, formats and sizes as photo libraries have them, cameras, dates over three years, OCR text on some,
faces on some, near-duplicate groups sharing perceptual hashes, and 1280-d image / 384-d caption vectors drawn
around cluster centres (real embeddings are clustered, which is what makes k-NN work; uniform noise would
flatter nothing and mislead), with a 1280-d crop vector per image at cosine ~0.9 to its image vector (as
analyze's centre crops are), so duplicates and query by image run their crossed crop searches as in
production. Every query goes through the real API handler (routing, validation, the backend, shaping,
presigned URLs, and for semantic and hybrid the embedding of the query text), as API
Gateway would call it. Recall@10 of vector search is checked against brute force over the generated vectors,
unfiltered and with a broad filter (jpeg, ~72% of rows), which exercises the approximate path above the
embedded index's exact-search threshold.

Results go to the ``## query`` section of docs/benchmarks.md. With ``--index-url URL`` (a cluster) or
``--opensearch`` (the local node of tools/opensearch-node, started and stopped by the benchmark) every size is
run twice in one process, on the embedded index and on the cluster, and the ``## query on OpenSearch``
section gets both, the cluster's latencies as ratios to the embedded index's, and the bulk ingest rate.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import boto3
import numpy as np
import numpy.typing as npt

from pixdex.api import create_app
from pixdex.bench.report import write_section
from pixdex.bench.stats import percentile
from pixdex.document import document_id
from pixdex.index.base import Filters, ImageIndex, SearchQuery, VectorQuery
from pixdex.local.functions import LocalContext
from pixdex.presign import Credentials, Presigner
from pixdex.runtime import Runtime
from pixdex.settings import ClusterSettings, Settings
from pixdex.storage import S3Store

SECTION: Final = "## query"
CLUSTER_SECTION: Final = "## query on OpenSearch"
DEFAULT_OUTPUT: Final = Path("docs/benchmarks.md")
TARGET_P50_MS: Final = 15.0
TARGET_P95_MS: Final = 40.0
BUCKET: Final = "bench-originals"
# Noise added to an image vector to make its crop_vector: cosine 1 / sqrt(1 + 0.484**2) = 0.90 to it.
CROP_NOISE: Final = 0.484
# Presigning is local computation; these never reach AWS.
_BENCH_CREDENTIALS: Final[dict[str, Any]] = {"aws_access_key_id": "bench", "aws_secret_access_key": "bench"}

_WORDS = ("cat dog bird car truck boat beach mountain forest city street food pizza coffee cup flower tree "
          "sky sunset snow river lake bridge building house church tower train plane bicycle horse cow "
          "sheep person child portrait group party wedding concert stage guitar piano book laptop phone "
          "screen keyboard desk chair table kitchen bedroom garden park road sign text menu poster ticket "
          "receipt document whiteboard chart map logo painting sculpture museum zoo elephant lion tiger bear "
          "monkey fish shark whale dolphin turtle frog insect butterfly bee spider rock sand desert island").split()
_PARENTS = ("animal", "vehicle", "place", "object", "food", "person", "nature", "structure", "text", "art")
_CAMERAS = ("Apple iPhone 15 Pro", "Apple iPhone 13", "Samsung SM-S918B", "Google Pixel 8", "Canon EOS R6",
            "Canon EOS 5D Mark IV", "Nikon Z 6II", "Sony ILCE-7M4", "Fujifilm X-T5", "OLYMPUS E-M10")
_FORMATS = (("jpeg", 0.72), ("png", 0.16), ("webp", 0.06), ("heic", 0.05), ("gif", 0.01))
_SIZES = ((4032, 3024), (3024, 4032), (1920, 1080), (1080, 1920), (6000, 4000), (1280, 720), (2048, 1536))


@dataclass
class Corpus:
    ids: list[str]
    image_vectors: npt.NDArray[np.float32]
    formats: list[str]
    caption_vectors: npt.NDArray[np.float32] | None = None


def _unit(a: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    out: npt.NDArray[np.float32] = (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)
    return out


def populate(index: ImageIndex, n: int, seed: int = 7, batch: int = 1000) -> Corpus:
    rng = np.random.default_rng(seed)
    vocab = len(_WORDS)
    zipf = 1.0 / np.arange(1, vocab + 1) ** 1.1
    zipf /= zipf.sum()
    centres_img = _unit(rng.normal(size=(64, 1280)).astype(np.float32))
    centres_cap = _unit(rng.normal(size=(64, 384)).astype(np.float32))
    fmt_names = [f for f, _ in _FORMATS]
    fmt_p = np.array([p for _, p in _FORMATS])
    base_time = 1_700_000_000
    ids: list[str] = []
    formats: list[str] = []
    image_vectors = np.empty((n, 1280), dtype=np.float32)
    caption_vectors = np.empty((n, 384), dtype=np.float32)
    phash_groups = rng.integers(0, 2**63, size=max(n // 20, 1), dtype=np.int64)
    for start in range(0, n, batch):
        items = []
        m = min(batch, n - start)
        cluster = rng.integers(0, 64, size=m)
        # Noise of norm ~0.6 around unit centres: members of a cluster are ~0.7 cosine apart, as in real embeddings.
        img = _unit(centres_img[cluster] + 0.6 * rng.normal(size=(m, 1280)).astype(np.float32) / np.sqrt(1280))
        # A centre crop embeds close to its photo (cosine ~0.9 for the 0.75 crop analyze takes): the image
        # vector plus noise of norm CROP_NOISE, so cosine = 1 / sqrt(1 + CROP_NOISE**2).
        crop = _unit(img + CROP_NOISE * rng.normal(size=(m, 1280)).astype(np.float32) / np.sqrt(1280))
        cap = _unit(centres_cap[cluster] + 0.6 * rng.normal(size=(m, 384)).astype(np.float32) / np.sqrt(384))
        image_vectors[start:start + m] = img
        caption_vectors[start:start + m] = cap
        for j in range(m):
            i = start + j
            key = f"library/{i // 1000:04d}/IMG_{i:07d}.jpg"
            labels = list(dict.fromkeys(rng.choice(_WORDS, size=int(rng.integers(2, 6)), p=zipf)))
            labels += [_PARENTS[_WORDS.index(w) % len(_PARENTS)] for w in labels[:2]]
            w, h = _SIZES[int(rng.integers(0, len(_SIZES)))]
            uploaded = base_time + int(rng.integers(0, 3 * 365 * 86400))
            doc: dict[str, Any] = {
                "bucket": BUCKET, "key": key, "name": key.rsplit("/", 1)[-1], "name_text": f"IMG {i}",
                "tenant": "default", "format": str(rng.choice(fmt_names, p=fmt_p)), "width": w, "height": h,
                "bytes": int(w * h * rng.uniform(0.15, 0.6)),
                "uploaded_at": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(uploaded)),
                "labels": labels, "caption": " ".join(labels),
                "has_text": bool(rng.random() < 0.15), "face_count": int(rng.poisson(0.4)),
                "nsfw_score": float(rng.beta(1, 30)),
                "sha256": f"{i:064x}",
                "phash": _near(int(phash_groups[int(rng.integers(0, len(phash_groups)))]), rng),
                "image_vector": img[j], "crop_vector": crop[j], "caption_vector": cap[j],
                "derivatives": {"thumbnail": {"key": f"{i}/thumbnail.webp"},
                                "preview": {"key": f"{i}/preview.webp"}},
            }
            if rng.random() < 0.8:
                doc["camera"] = str(rng.choice(_CAMERAS))
                doc["taken_at"] = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(uploaded - 86400))
            if doc["has_text"]:
                doc["ocr_text"] = " ".join(rng.choice(_WORDS, size=8))
            doc_id = document_id(BUCKET, key)
            ids.append(doc_id)
            formats.append(doc["format"])
            items.append((doc_id, doc))
        errors = [e for e in index.upsert_many(items) if e is not None]
        if errors:
            raise errors[0]
    return Corpus(ids=ids, image_vectors=image_vectors, formats=formats, caption_vectors=caption_vectors)


def _near(group_hash: int, rng: np.random.Generator) -> str:
    """A member of a near-duplicate group: the group's hash with one random bit flipped."""
    return f"{group_hash ^ (1 << int(rng.integers(0, 64))):016x}"


def _event(path: str, query: dict[str, str], body: dict[str, Any] | None = None) -> dict[str, Any]:
    event: dict[str, Any] = {
        "version": "2.0", "routeKey": "$default", "rawPath": path,
        "rawQueryString": "&".join(f"{k}={v}" for k, v in query.items()),
        "queryStringParameters": query or None, "headers": {},
        "requestContext": {"http": {"method": "GET" if body is None else "POST", "path": path,
                                    "sourceIp": "127.0.0.1"},
                           "requestId": "bench", "stage": "$default"},
        "isBase64Encoded": False,
    }
    if body is not None:
        event["headers"] = {"content-type": "application/json"}
        event["body"] = json.dumps(body)
    return event


def run_size(n: int, queries: int, embedder: Any, workdir: Path, index_url: str | None,
             knn_engine: str = "faiss") -> dict[str, Any]:
    settings = Settings(originals_bucket=BUCKET, derivatives_bucket="bench-derivatives",
                        index_url=index_url or f"sqlite:///{workdir / f'bench-{n}.db'}",
                        # A fresh alias per run on a cluster, dropped afterwards.
                        index_name=f"pixdex-bench-{n}-{os.getpid()}",
                        # Bulk loads with HNSW builds on a busy 2-core machine outlast the 10 s default.
                        cluster=ClusterSettings(knn_engine=knn_engine, timeout_s=120.0))
    # Presigning is local computation; no request leaves the process.
    s3 = boto3.client("s3", region_name="us-east-1", **_BENCH_CREDENTIALS)
    presigner = Presigner(region="us-east-1", endpoint_url=None, credentials=lambda: Credentials("bench", "bench"))
    runtime = Runtime(settings, store=S3Store(s3, presigner=presigner), embedder=embedder)
    index = runtime.index
    t0 = time.perf_counter()
    corpus = populate(index, n)
    ingest_s = time.perf_counter() - t0
    app = create_app(runtime)
    context = LocalContext(function_name="bench-query")
    rng = np.random.default_rng(11)
    # Half one-word, half two-word queries (the last word also matches as a prefix, as typed).
    words = [" ".join(str(w) for w in rng.choice(_WORDS, size=1 + i % 2)) for i in range(queries)]
    picks = [corpus.ids[int(i)] for i in rng.integers(0, n, size=queries)]

    def via_handler(path: str, query: dict[str, str], body: dict[str, Any] | None = None) -> Callable[[], None]:
        def call() -> None:
            resp = app.resolve(_event(path, query, body), context)
            if resp["statusCode"] != 200:
                raise RuntimeError(f"{path} {query}: {resp['statusCode']} {resp['body'][:200]}")
        return call

    kinds: dict[str, list[Callable[[], None]]] = {
        "keyword": [via_handler("/search", {"q": w, "mode": "keyword", "facets": "labels,format"}) for w in words],
        "filtered listing": [via_handler("/search", {"format": "png", "min_width": "1500", "sort": "newest"})
                             for _ in words],
        "similar (filtered)": [via_handler(f"/images/{p}/similar", {"format": "jpeg", "size": "20"}) for p in picks],
        # pHash only is the duplicates query as it was before the signals were fused: the same-run baseline.
        "duplicates (pHash only)": [via_handler(f"/images/{p}/duplicates", {"max_distance": "8",
                                                                          "signals": "sha256,phash"})
                                    for p in picks],
        "duplicates": [via_handler(f"/images/{p}/duplicates", {"max_distance": "8"}) for p in picks],
        "by image (id)": [via_handler("/search/image", {"size": "20"}, body={"image_id": p}) for p in picks],
    }
    if embedder is not None:
        kinds["semantic"] = [via_handler("/search", {"q": f"a photo of a {w}", "mode": "semantic"}) for w in words]
        kinds["hybrid"] = [via_handler("/search", {"q": f"{w}", "mode": "hybrid"}) for w in words]
    # Descriptions with a word no document holds: keyword search finds no image with every word and falls
    # back to any word (two index queries, the second over many more matches).
    described = [f"a {w} by the old mill" for w in words]
    kinds["keyword (description)"] = [
        via_handler("/search", {"q": d, "mode": "keyword", "facets": "labels,format"}) for d in described]
    if embedder is not None:
        kinds["hybrid (description)"] = [via_handler("/search", {"q": d, "mode": "hybrid"}) for d in described]
    results: dict[str, Any] = {}
    for calls in kinds.values():
        calls[0]()  # warm: loads vector matrices, compiles statements
    finish = getattr(index, "finish_background_work", None)
    if callable(finish):
        finish()  # the embedded index's SimHash codes, started by the warm-up's threshold searches
    # Kinds take turns, query by query, so a busy spell on a shared machine slows every kind alike and the
    # kinds compare with each other within one run.
    samples: dict[str, list[float]] = {name: [] for name in kinds}
    for i in range(queries):
        for name, calls in kinds.items():
            t = time.perf_counter()
            calls[i]()
            samples[name].append((time.perf_counter() - t) * 1000)
    for name in kinds:
        p50, p95 = percentile(samples[name], 50), percentile(samples[name], 95)
        results[name] = {"p50": p50, "p95": p95}
    results["_recall"] = _recall(index, corpus, rng, None)
    results["_recall_jpeg"] = _recall(index, corpus, rng, "jpeg")
    results["_ingest_s"] = ingest_s
    results["_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    stats = index.stats()
    results["_file_mb"] = stats.get("file_bytes", 0) / 1e6
    results["_vector_mb"] = stats.get("memory_bytes", 0) / 1e6
    results["_engine"] = f"{stats.get('backend')} {stats.get('engine_version') or ''} {stats.get('knn_engine') or ''}"
    drop = getattr(index, "drop", None)
    if index_url is not None and callable(drop):
        drop()
    index.close()
    return results


def _recall(index: ImageIndex, corpus: Corpus, rng: np.random.Generator, fmt: str | None,
            trials: int = 20) -> float:
    """recall@10 of (filtered) k-NN against brute force over the same rows."""
    mask = np.array([fmt is None or f == fmt for f in corpus.formats])
    ids = np.array(corpus.ids)[mask]
    # Ground truth over the vectors as the index stores them (float16), so the check measures the search,
    # not the storage precision chosen on purpose.
    vectors = _unit(corpus.image_vectors[mask].astype(np.float16).astype(np.float32))
    filters = Filters(tenant="default", formats=(fmt,) if fmt else ())
    hits = total = 0
    for _ in range(trials):
        q = corpus.image_vectors[int(rng.integers(0, len(corpus.ids)))]
        got = index.search(SearchQuery(vector=VectorQuery(field="image_vector", vector=q, k=10), filters=filters,
                                       size=10)).hits
        expected = set(ids[np.argsort(-(vectors @ q))[:10]])
        hits += len(expected & {h.id for h in got})
        total += len(expected)
    return hits / total if total else 1.0


def render(rows: dict[int, dict[str, Any]], args: argparse.Namespace, embedder_note: str) -> str:
    kinds = [k for k in next(iter(rows.values())) if not k.startswith("_")]
    lines = [
        SECTION, "",
        f"Latency through the query handler (`pixdex bench query --docs {args.docs} --queries {args.queries}`), "
        f"{args.queries} queries per kind after one warm-up; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}. Target: p50 < {TARGET_P50_MS:.0f} ms and "
        f"p95 < {TARGET_P95_MS:.0f} ms at 100k documents. {embedder_note}", "",
        "| documents | " + " | ".join(f"{k} p50 / p95 ms" for k in kinds) + " | k-NN recall@10 (all / jpeg) | "
        "ingest s | index file MB | index memory MB | peak RSS MB |",
        "|---:|" + "---:|" * (len(kinds) + 5),
    ]
    for n, r in rows.items():
        cells = [f"{r[k]['p50']:.1f} / {r[k]['p95']:.1f}" for k in kinds]
        lines.append(f"| {n:,} | " + " | ".join(cells) +
                     f" | {r['_recall']:.3f} / {r['_recall_jpeg']:.3f} | {r['_ingest_s']:.0f} | {r['_file_mb']:.0f}"
                     f" | {r['_vector_mb']:.0f} | {r['_rss_mb']:.0f} |")
    largest = rows[max(rows)]
    smallest = rows[min(rows)]
    if len(rows) > 1:
        growth = ", ".join(f"{k} x{largest[k]['p50'] / max(smallest[k]['p50'], 1e-6):.1f}" for k in kinds)
        lines += ["", f"p50 growth from {min(rows):,} to {max(rows):,} documents: {growth}."]
    lines += ["", "Peak RSS is the whole benchmark process (generator arrays included); index memory is what the "
              "index holds for search (columns, vectors, hashes)."]
    lines += ["", "Reproduce: `pixdex bench query --docs 10000,100000` (add `--index-url URL` to run the same "
              "queries against a cluster)."]
    return "\n".join(lines) + "\n"


def render_cluster(embedded: dict[int, dict[str, Any]], cluster: dict[int, dict[str, Any]],
                   args: argparse.Namespace, embedder_note: str, where: str) -> str:
    kinds = [k for k in next(iter(embedded.values())) if not k.startswith("_")]
    engine = next(iter(cluster.values()))["_engine"]
    lines = [
        CLUSTER_SECTION, "",
        f"The same queries through the query handler on the embedded index and on {where} ({engine.strip()}), "
        f"in one run: `pixdex bench query {_command(args)}`; {args.queries} queries per kind after one warm-up; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}. {embedder_note} Ratio = cluster p50 / embedded p50 (below 1: the cluster "
        "is faster).", "",
        "| documents | " + " | ".join(f"{k} p50 ms embedded / cluster (ratio)" for k in kinds) +
        " | k-NN recall@10 cluster (all / jpeg) | ingest s embedded / cluster | cluster bulk docs/s |",
        "|---:|" + "---:|" * (len(kinds) + 3),
    ]
    for n in cluster:
        e, c = embedded[n], cluster[n]
        cells = [f"{e[k]['p50']:.1f} / {c[k]['p50']:.1f} (x{c[k]['p50'] / max(e[k]['p50'], 1e-6):.2f})" for k in kinds]
        lines.append(f"| {n:,} | " + " | ".join(cells) + f" | {c['_recall']:.3f} / {c['_recall_jpeg']:.3f} | "
                     f"{e['_ingest_s']:.0f} / {c['_ingest_s']:.0f} | {n / max(c['_ingest_s'], 1e-6):.0f} |")
    lines += ["", "p95 ms embedded / cluster: " + "; ".join(
        f"{n:,} docs: " + ", ".join(f"{k} {embedded[n][k]['p95']:.1f} / {cluster[n][k]['p95']:.1f}" for k in kinds)
        for n in cluster) + "."]
    lines += ["", "Cluster ingest is bulk upserts of 1,000 documents (painless partial upserts, `refresh=wait_for`: "
              "each batch is searchable, HNSW graphs of the 1280-d image, 384-d caption and 64-bit Hamming "
              "vectors included, when the call returns). Semantic and similar ask the index for k = 1000 hits "
              "(`MAX_VECTOR_DEPTH` in query.py, so facets and paging see every hit): on a cluster that is a "
              "k = 1000 graph search plus 1000 `_source` documents over HTTP and JSON, where hybrid asks only for "
              "the page depth on each side."]
    return "\n".join(lines) + "\n"


def _command(args: argparse.Namespace) -> str:
    where = "--opensearch" if args.opensearch else "--index-url URL"
    return f"--docs {args.docs} --queries {args.queries} {where}" + (" --no-models" if args.no_models else "")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--docs", default="10000,100000", help="comma-separated index sizes")
    parser.add_argument("--queries", type=int, default=200, help="queries per kind and size")
    parser.add_argument("--index-url", default=None, help="run against this index instead of a fresh SQLite file")
    parser.add_argument("--opensearch", action="store_true",
                        help="start the local OpenSearch node and compare it with the embedded index")
    parser.add_argument("--knn-engine", choices=("faiss", "lucene"), default=None,
                        help="k-NN engine of cluster vector fields (default: lucene with --opensearch, else faiss)")
    parser.add_argument("--no-models", action="store_true", help="skip semantic and hybrid (no text model)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)


def run(args: argparse.Namespace) -> int:
    sizes = [int(s) for s in str(args.docs).split(",") if s.strip()]
    embedder, note = None, "Semantic and hybrid rows skipped: no text model."
    if not args.no_models:
        embedder = Runtime(Settings()).embedder
        if embedder is not None:
            note = "Semantic and hybrid include embedding the query text with all-MiniLM-L6-v2 (ONNX, CPU)."
    if args.opensearch or args.index_url:
        return _run_against_cluster(args, sizes, embedder, note)
    rows: dict[int, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="pixdex-bench-") as tmp:
        for n in sizes:
            rows[n] = run_size(n, args.queries, embedder, Path(tmp), args.index_url)
            print(json.dumps({"docs": n, **rows[n]}, default=float))
    write_section(args.output, SECTION, render(rows, args, note))
    print(f"wrote {args.output}")
    return 0


def _run_against_cluster(args: argparse.Namespace, sizes: list[int], embedder: Any, note: str) -> int:
    from pixdex.local.opensearch_node import KNN_ENGINE, OpenSearchNode

    embedded: dict[int, dict[str, Any]] = {}
    cluster: dict[int, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="pixdex-bench-") as tmp:
        node = OpenSearchNode(Path(tmp) / "opensearch") if args.opensearch else None
        url = node.start() if node is not None else str(args.index_url)
        engine = args.knn_engine or (KNN_ENGINE if node is not None else "faiss")
        try:
            for n in sizes:
                embedded[n] = run_size(n, args.queries, embedder, Path(tmp), None)
                print(json.dumps({"docs": n, "index": "embedded", **embedded[n]}, default=float), flush=True)
                cluster[n] = run_size(n, args.queries, embedder, Path(tmp), url, knn_engine=engine)
                print(json.dumps({"docs": n, "index": "cluster", **cluster[n]}, default=float), flush=True)
        finally:
            if node is not None:
                node.stop()
    where = "the local OpenSearch node (tools/opensearch-node, heap 1 GB)" if args.opensearch else "the cluster"
    write_section(args.output, CLUSTER_SECTION, render_cluster(embedded, cluster, args, note, where))
    print(f"wrote {args.output}")
    return 0
