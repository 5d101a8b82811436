"""``pixdex bench quality``: does search put the photo a person describes first?

The evaluation photos (:mod:`pixdex.bench.evalset`) are stored under wordless keys, analysed by the real
pipeline (``Pipeline.analyze_many`` with the real models) into a fresh embedded index, and every description
is sent through the query API's handler (``GET /search``) in keyword, semantic and hybrid mode. The rank of
the described photo gives hits@1, hits@5 and MRR, per caption style (``v1`` is the caption builder as it
was, the baseline; ``v2`` the current one), on the test split (never tuned on), the dev split and the whole
set. Results go to the ``## Search quality on the evaluation photos`` section of docs/quality.md.
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import platform
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

from pixdex.api import create_app
from pixdex.bench.evalset import DEFAULT_DEB_ROOT, EvalPhoto, eval_photos, unpack_debian
from pixdex.bench.report import write_section
from pixdex.document import document_id
from pixdex.events import ObjectEvent
from pixdex.local.functions import LocalContext
from pixdex.pipeline import Pipeline
from pixdex.runtime import Runtime, model_settings
from pixdex.settings import Settings
from pixdex.storage import FolderStore

SECTION: Final = "## Search quality on the evaluation photos"
DEFAULT_OUTPUT: Final = Path("docs/quality.md")
MODES: Final = ("keyword", "semantic", "hybrid")
BUCKET: Final = "eval-originals"
# The API's page limit; the set is smaller, so a missing photo was not found at all.
DEPTH: Final = 100
_BATCH: Final = 16
# pixdex.models.analysis.CAPTION_STYLES, named here so the CLI starts without importing the models.
CAPTION_STYLES: Final = ("v1", "v2")


@dataclass(frozen=True)
class Metrics:
    queries: int
    hits_at_1: float
    hits_at_5: float
    mrr: float


def metrics(ranks: Sequence[int | None]) -> Metrics:
    """hits@1, hits@5 and mean reciprocal rank of 1-based ranks; None (not returned) counts as a miss."""
    n = len(ranks)
    if n == 0:
        return Metrics(0, 0.0, 0.0, 0.0)
    return Metrics(
        queries=n,
        hits_at_1=sum(1 for r in ranks if r == 1) / n,
        hits_at_5=sum(1 for r in ranks if r is not None and r <= 5) / n,
        mrr=sum(1.0 / r for r in ranks if r is not None) / n,
    )


@dataclass(frozen=True)
class QueryResult:
    key: str
    description: str
    split: str
    category: str
    mode: str
    rank: int | None
    top_key: str | None


def _event(query: dict[str, str]) -> dict[str, Any]:
    return {
        "version": "2.0", "routeKey": "$default", "rawPath": "/search",
        "rawQueryString": "&".join(f"{k}={v}" for k, v in query.items()),
        "queryStringParameters": query, "headers": {},
        "requestContext": {"http": {"method": "GET", "path": "/search", "sourceIp": "127.0.0.1"},
                           "requestId": "bench-quality", "stage": "$default"},
        "isBase64Encoded": False,
    }


def evaluate(photos: Sequence[EvalPhoto], workdir: Path, caption_style: str, modes: Sequence[str] = MODES,
             settings: Settings | None = None) -> tuple[list[QueryResult], dict[str, Any]]:
    """Index ``photos`` through the pipeline with one caption style, then run every description."""
    from pixdex.models.analysis import ImageAnalyzer

    workdir.mkdir(parents=True, exist_ok=True)
    settings = replace(settings or Settings(), originals_bucket=BUCKET, derivatives_bucket="eval-derivatives",
                       index_url=f"sqlite:///{workdir / f'quality-{caption_style}.db'}")
    analyzer = ImageAnalyzer(replace(model_settings(settings), caption_style=caption_style))
    store = FolderStore(workdir / "s3")
    runtime = Runtime(settings, store=store, embedder=analyzer)
    pipeline = Pipeline(settings, store, runtime.index, analyzer=lambda: analyzer)
    events = []
    for photo in photos:
        ctype = mimetypes.guess_type(photo.path.name)[0] or "application/octet-stream"
        etag = store.put(BUCKET, photo.key, photo.path.read_bytes(), content_type=ctype)
        events.append(ObjectEvent(kind="created", bucket=BUCKET, key=photo.key, etag=etag))
    t0 = time.perf_counter()
    for start in range(0, len(events), _BATCH):
        for event, outcome in zip(events[start:start + _BATCH], pipeline.analyze_many(events[start:start + _BATCH]),
                                  strict=True):
            if isinstance(outcome, Exception):
                raise RuntimeError(f"{event.key}: analyze failed: {outcome}") from outcome
    analyze_s = time.perf_counter() - t0
    key_of = {document_id(BUCKET, p.key): p.key for p in photos}
    app = create_app(runtime)
    context = LocalContext(function_name="bench-quality")
    results: list[QueryResult] = []
    for photo in photos:
        for description in photo.descriptions:
            for mode in modes:
                resp = app.resolve(_event({"q": description, "mode": mode, "size": str(DEPTH)}), context)
                if resp["statusCode"] != 200:
                    raise RuntimeError(f"{description!r} ({mode}): {resp['statusCode']} {resp['body'][:200]}")
                keys = [key_of.get(h["id"]) for h in json.loads(resp["body"])["hits"]]
                rank = keys.index(photo.key) + 1 if photo.key in keys else None
                results.append(QueryResult(photo.key, description, photo.split, photo.category, mode, rank,
                                           keys[0] if keys else None))
    captions = {key_of[d]: (runtime.index.get(d) or {}).get("caption", "") for d in key_of}
    runtime.index.close()
    return results, {"analyze_s": analyze_s, "captions": captions}


def summarise(results: Sequence[QueryResult]) -> dict[tuple[str, str], Metrics]:
    """(mode, split or 'all') -> metrics."""
    out: dict[tuple[str, str], Metrics] = {}
    for mode in dict.fromkeys(r.mode for r in results):
        for split in ("test", "dev", "all"):
            ranks = [r.rank for r in results if r.mode == mode and (split == "all" or r.split == split)]
            out[(mode, split)] = metrics(ranks)
    return out


def render(runs: dict[str, tuple[list[QueryResult], dict[str, Any]]], photos: Sequence[EvalPhoto],
           command: str) -> str:
    sources = sorted({f"{p.source}=={p.version}" for p in photos})
    n_test = sum(1 for p in photos if p.split == "test")
    n_queries = sum(len(p.descriptions) for p in photos)
    lines = [
        SECTION, "",
        f"{len(photos)} real photographs from registry packages ({', '.join(sources)}), listed with their "
        f"licences in `layers/core/pixdex/data/evalset.json`; {n_queries} plain descriptions (2-3 per photo, "
        "written by a person looking at the photo, not at model output). Photos are stored under wordless keys "
        "(`img/001.png`...), analysed by the real pipeline into a fresh embedded index, and every description "
        "is sent to `GET /search` through the API handler. Split: "
        f"{n_test} test photos (never used for tuning), {len(photos) - n_test} dev photos. "
        f"Run: `{command}` ({platform.machine()}, Python {platform.python_version()}).", "",
        "| caption | mode | test hits@1 | test hits@5 | test MRR | dev hits@1 | all hits@1 | all hits@5 | all MRR |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for style, (results, _) in runs.items():
        table = summarise(results)
        for mode in dict.fromkeys(r.mode for r in results):
            t, d, a = table[(mode, "test")], table[(mode, "dev")], table[(mode, "all")]
            lines.append(f"| {style} | {mode} | {t.hits_at_1:.3f} | {t.hits_at_5:.3f} | {t.mrr:.3f} | "
                         f"{d.hits_at_1:.3f} | {a.hits_at_1:.3f} | {a.hits_at_5:.3f} | {a.mrr:.3f} |")
    last_style, (last, extra) = list(runs.items())[-1]
    lines += ["", f"Hits@1 by category ({last_style}, all splits):", "",
              "| category | photos | " + " | ".join(MODES) + " |", "|---|---:|" + "---:|" * len(MODES)]
    for category in sorted({p.category for p in photos}):
        count = sum(1 for p in photos if p.category == category)
        cells = [metrics([r.rank for r in last if r.category == category and r.mode == m]).hits_at_1 for m in MODES
                 if any(r.mode == m for r in last)]
        lines.append(f"| {category} | {count} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
    misses = [r for r in last if r.mode == "semantic" and r.rank != 1]
    lines += ["", f"Semantic misses ({last_style}): the rank the described photo got, and what its caption says "
              "(what the models saw).", "", "| query | photo | rank | its caption (first 90 characters) |",
              "|---|---|---:|---|"]
    for r in misses:
        caption = str(extra["captions"].get(r.key, "")).replace("|", "/")[:90]
        lines.append(f"| {r.description} | {r.key} | {r.rank if r.rank else '-'} | {caption} |")
    analyze = ", ".join(f"{s}: {e['analyze_s']:.0f} s" for s, (_, e) in runs.items())
    lines += ["", f"Analysis time for the set ({analyze}) includes loading the models."]
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--captions", default=",".join(CAPTION_STYLES),
                        help=f"caption styles to compare (first is the baseline); of {', '.join(CAPTION_STYLES)}")
    parser.add_argument("--split", choices=("all", "dev", "test"), default="all", help="photos to index and query")
    parser.add_argument("--deb-root", type=Path, default=DEFAULT_DEB_ROOT,
                        help="where the Debian photo packages are unpacked (also looks under /)")
    parser.add_argument("--unpack-debs", action="store_true",
                        help="apt-get download + dpkg -x the pinned Debian photo packages into --deb-root first")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--no-write", action="store_true", help="print the section instead of writing it")


def run(args: argparse.Namespace) -> int:
    if args.unpack_debs:
        unpack_debian(args.deb_root)
    photos = eval_photos(None if args.split == "all" else args.split, deb_root=args.deb_root)
    styles = [s.strip() for s in str(args.captions).split(",") if s.strip()]
    unknown = [s for s in styles if s not in CAPTION_STYLES]
    if unknown:
        raise SystemExit(f"pixdex bench quality: unknown caption style {unknown[0]!r}")
    runs: dict[str, tuple[list[QueryResult], dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="pixdex-quality-") as tmp:
        for style in styles:
            runs[style] = evaluate(photos, Path(tmp) / style, style)
            table = summarise(runs[style][0])
            print(json.dumps({"caption": style, **{f"{m}/{s}": round(v.hits_at_1, 3) for (m, s), v in table.items()}}))
    command = "pixdex bench quality" + (f" --split {args.split}" if args.split != "all" else "") + (
        f" --captions {args.captions}" if args.captions != ",".join(CAPTION_STYLES) else "")
    section = render(runs, photos, command)
    if args.no_write:
        print(section)
    else:
        write_section(args.output, SECTION, section)
        print(f"wrote {args.output}")
    return 0
