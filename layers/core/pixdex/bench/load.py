"""``pixdex bench load``: concurrent clients against the real local stack, idle and while 1,000 photos ingest.

1. 10,000 synthetic documents (the query benchmark's generator: labels, formats, cameras, OCR text, faces,
   near-duplicate hashes, clustered 1280-d/384-d vectors) are written through the index port into the
   SQLite file the stack will open (``DATA/index.db``). They are not uploads: that would take the
   pipeline hours on this machine, and the point of this step is an index of realistic size.
2. ``pixdex up`` is started as a user starts it (moto, pollers running the real handlers, the HTTP
   gateway), on free loopback ports.
3. **Idle**: ``--clients`` threads send requests for ``--seconds``, each in a loop over a mix of query
   kinds (keyword with facets, semantic, hybrid, filtered listing, similar, duplicates, get image) to
   127.0.0.1 only, and stop at the deadline. Throughput, p50/p95/p99 per kind and overall, errors.
4. **Ingest**: ``--photos`` JPEGs (variants of the photos scikit-image ships: crops, flips, rotations,
   colour and brightness shifts, each a distinct image) are uploaded to the local originals bucket
   with boto3, which sets off the real chain (EventBridge -> SQS -> compress/analyze -> index), while
   the same clients search. Ingest rate (uploads until every document has both stages recorded),
   search latency during ingest vs idle, errors, dead-lettered messages.
5. At the end every ingested photo must be searchable: ``GET /images/{id}`` shows both stages done
   without error, and a keyword search for its unique file-name word returns it.

The bench asserts errors = 0 and all photos searchable (exit status 1 otherwise) and reports either way.
Results go to the ``## load`` section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from pixdex.bench.report import publish
from pixdex.bench.stats import Latency, fmt_ratio, machine_note, ratio
from pixdex.document import document_id
from pixdex.local.launch import UpProcess, launch

SECTION: Final = "## load"
DEFAULT_OUTPUT: Final = Path("docs/benchmarks.md")
_WORDS: Final = ("cat", "dog", "beach", "city", "flower", "car", "sunset", "coffee", "person", "text")
_SAMPLES: Final = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
                   "camera.png", "horse.png", "brick.png", "hubble_deep_field.jpg", "retina.jpg")


# ------------------------------------------------------------------------------------------------------
# The stack's API


def get(api: str, path: str, timeout: float = 30.0) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(api + path, timeout=timeout) as resp:  # noqa: S310  # loopback http only
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        body = exc.read()
        return exc.code, (json.loads(body) if body else None)


# ------------------------------------------------------------------------------------------------------
# Clients


@dataclass
class Sample:
    kind: str
    ms: float
    ok: bool
    error: str = ""


def request_mix(ids: Sequence[str]) -> list[tuple[str, Callable[[int], str]]]:
    """(kind, i -> path): the query kinds every client cycles through, spread over documents and words."""
    def pick(i: int) -> str:
        return ids[(i * 7919) % len(ids)]

    def word(i: int) -> str:
        return _WORDS[i % len(_WORDS)]

    return [
        ("keyword", lambda i: f"/search?q={word(i)}&mode=keyword&facets=labels,format"),
        ("semantic", lambda i: "/search?" + urllib.parse.urlencode({"q": f"a photo of a {word(i)}",
                                                                     "mode": "semantic"})),
        ("hybrid", lambda i: f"/search?q={word(i)}"),
        ("filtered listing", lambda i: "/search?format=png&min_width=1500&sort=newest"),
        ("similar", lambda i: f"/images/{pick(i)}/similar?format=jpeg&size=20"),
        ("duplicates", lambda i: f"/images/{pick(i)}/duplicates?max_distance=8"),
        ("get image", lambda i: f"/images/{pick(i)}"),
    ]


def run_clients(api: str, ids: Sequence[str], clients: int, until: Callable[[], bool],
                max_seconds: float) -> tuple[list[Sample], float]:
    """``clients`` threads, each looping over the mix until ``until()`` or ``max_seconds``; (samples, seconds)."""
    mix = request_mix(ids)
    samples: list[Sample] = []
    lock = threading.Lock()
    hard_stop = time.monotonic() + max_seconds

    def client(n: int) -> None:
        mine: list[Sample] = []
        i = n * 101
        while not until() and time.monotonic() < hard_stop:
            kind, path = mix[i % len(mix)]
            t = time.perf_counter()
            try:
                status, body = get(api, path(i))
                ok = status == 200
                err = "" if ok else f"{status} {str(body)[:120]}"
            except (OSError, ValueError) as exc:
                ok, err = False, f"{type(exc).__name__}: {exc}"
            mine.append(Sample(kind, (time.perf_counter() - t) * 1000, ok, err))
            i += 1
        with lock:
            samples.extend(mine)

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return samples, time.perf_counter() - start


# ------------------------------------------------------------------------------------------------------
# Photos


def unique_word(i: int) -> str:
    """A lowercase-letters-only word per photo (file-name tokenising splits digits and case changes)."""
    letters = ""
    n = i
    for _ in range(4):
        letters = chr(ord("a") + n % 26) + letters
        n //= 26
    return f"lbq{letters}"


def photo_variants(count: int, size: int, seed: int) -> list[tuple[str, bytes]]:
    """``count`` distinct JPEGs made from scikit-image's photos: crop, flip, rotate, colour, brightness."""
    from pixdex.packages import package_dir

    root = package_dir("skimage")
    sources: list[tuple[str, Image.Image]] = []
    if root is not None:
        for name in _SAMPLES:
            path = root / "data" / name
            if path.is_file():
                with Image.open(path) as src:
                    sources.append((name.rsplit(".", 1)[0].replace("_", ""), src.convert("RGB")))
    if not sources:
        raise SystemExit("bench load needs scikit-image for its sample photos: pip install -e '.[local]'")
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        name, base = sources[i % len(sources)]
        w, h = base.size
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        im: Image.Image = base.crop((x, y, x + cw, y + ch))
        if rng.random() < 0.5:
            im = ImageOps.mirror(im)
        im = im.rotate(float(rng.uniform(-8, 8)), resample=Image.Resampling.BILINEAR, expand=False)
        im = ImageEnhance.Color(im).enhance(float(rng.uniform(0.6, 1.4)))
        im = ImageEnhance.Brightness(im).enhance(float(rng.uniform(0.8, 1.2)))
        scale = size / max(im.size)
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=int(rng.integers(80, 95)))
        out.append((f"loadbench/{name}/{unique_word(i)}.jpg", buf.getvalue()))
    return out


def done_states(api: str, doc_ids: Sequence[str]) -> tuple[set[str], list[str]]:
    """Documents with both stages recorded without error; reasons for the first few that are not."""
    ok: set[str] = set()
    problems = []
    for doc_id in doc_ids:
        status, body = get(api, f"/images/{doc_id}")
        if status != 200 or not isinstance(body, dict):
            problems.append(f"{doc_id}: {status}")
            continue
        states = [body.get("compress_state"), body.get("analyze_state")]
        errors = [s.get("error") for s in states if isinstance(s, dict) and s.get("error")]
        if all(isinstance(s, dict) for s in states) and not errors:
            ok.add(doc_id)
        else:
            problems.append(f"{doc_id}: states {[bool(s) for s in states]} errors {errors}")
    return ok, problems[:5]


def dead_letters(stack: UpProcess) -> int:
    sqs = stack.client("sqs")
    total = 0
    for url in sqs.list_queues().get("QueueUrls", []):
        if "dlq" in url.lower() or "dead" in url.lower():
            attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
            total += int(attrs["Attributes"]["ApproximateNumberOfMessages"])
    return total


# ------------------------------------------------------------------------------------------------------
# Report


def _kind_table(samples: Sequence[Sample]) -> list[str]:
    lines = ["| kind | requests | p50 ms | p95 ms | p99 ms | errors |", "|---|---:|---:|---:|---:|---:|"]
    kinds = sorted({s.kind for s in samples})
    for kind in [*kinds, "all"]:
        rows = [s for s in samples if kind in ("all", s.kind)]
        lat = Latency.of([s.ms for s in rows])
        label = f"**{kind}**" if kind == "all" else kind
        lines.append(f"| {label} | {len(rows)} | {lat.p50:.0f} | {lat.p95:.0f} | {lat.p99:.0f} | "
                     f"{sum(not s.ok for s in rows)} |")
    return lines


def render(r: dict[str, Any], args: argparse.Namespace, machine: str) -> str:
    idle: list[Sample] = r["idle"]
    busy: list[Sample] = r["busy"]
    base: list[Sample] = r["base"]
    li, lb = Latency.of([s.ms for s in base]), Latency.of([s.ms for s in busy])
    lines = [
        SECTION, "",
        f"`pixdex bench load --docs {args.docs} --clients {args.clients} --seconds {args.seconds} --photos "
        f"{args.photos} --photo-size {args.photo_size} --ingest-clients {args.ingest_clients}`, {machine}. "
        "The real local stack (`pixdex up`: moto, "
        "pollers running the real handlers, the HTTP gateway) on 127.0.0.1; the clients run in the bench "
        f"process on the same {os.cpu_count()} cores, so they compete with the stack for CPU. "
        f"{args.docs:,} synthetic documents (the query benchmark's generator) were written through the index "
        f"port before the stack started ({r['populate_s']:.0f} s); they are not uploads.", "",
        f"### Idle: {args.clients} clients for {args.seconds} s over the mixed query kinds", "",
        f"**{len(idle) / r['idle_s']:.1f} requests/s**, {len(idle)} requests, "
        f"**{sum(not s.ok for s in idle)} errors**.", "", *_kind_table(idle), "",
        f"### While ingesting {args.photos:,} photos", "",
        f"{args.photos:,} JPEGs (variants of scikit-image's photos, long side {args.photo_size} px, "
        f"{r['photo_mb']:.1f} MB together) uploaded to the originals bucket by {args.upload_threads} threads "
        f"while {args.ingest_clients} clients kept searching. Uploads took {r['upload_s']:.1f} s; every document "
        f"had compress and analyze recorded after **{r['ingest_s']:.1f} s: {args.photos / r['ingest_s']:.1f} "
        f"photos/s** end to end. Searchable at the end: **{r['searchable']} / {args.photos}** "
        f"(GET /images/{{id}} with both stages and no error: {r['done']}; keyword search for the file's "
        f"unique word finds it: {r['found']}). Dead-lettered messages: {r['dlq']}.", "",
        f"Search during ingest: {len(busy)} requests, {len(busy) / r['busy_s']:.1f} requests/s, "
        f"**{sum(not s.ok for s in busy)} errors**; latency vs idle with the same {args.ingest_clients} clients "
        f"({len(base)} requests over {args.seconds / 2:.0f} s, {sum(not s.ok for s in base)} errors; p50 "
        f"{li.p50:.0f} ms, p95 {li.p95:.0f} ms, p99 {li.p99:.0f} ms): p50 {fmt_ratio(ratio(lb.p50, li.p50))}, "
        f"p95 {fmt_ratio(ratio(lb.p95, li.p95))}, p99 {fmt_ratio(ratio(lb.p99, li.p99))}; throughput "
        f"{fmt_ratio(ratio(len(busy) / r['busy_s'], len(base) / r['base_s']))} of idle.", "",
        *_kind_table(busy), "",
    ]
    errors = [s.error for s in idle + base + busy if not s.ok][:5]
    if errors:
        lines += ["First errors: " + "; ".join(f"`{e}`" for e in errors), ""]
    if r.get("stack_errors"):
        lines += ["What the stack logged about them (first distinct lines):", "", "```",
                  *r["stack_errors"], "```", ""]
    lines += ["Reproduce: the command above (`pixdex bench load` alone: 10,000 documents, 8 clients for 30 s, "
              "1,000 photos).", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--docs", type=int, default=10_000, help="synthetic documents indexed first")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (threads)")
    parser.add_argument("--seconds", type=float, default=30.0, help="idle phase length")
    parser.add_argument("--photos", type=int, default=1000, help="photos ingested while searching")
    parser.add_argument("--ingest-clients", type=int, default=2,
                        help="clients searching during the ingest (the local stack runs the query API and the "
                             "pipeline in one process: more clients starve the pollers)")
    parser.add_argument("--photo-size", type=int, default=640, help="long side of the ingested photos, px")
    parser.add_argument("--upload-threads", type=int, default=4)
    parser.add_argument("--ingest-timeout", type=float, default=1500.0, help="give up waiting after this")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--no-write", dest="write", action="store_false", help="print the section only")


def run(args: argparse.Namespace) -> int:
    from pixdex.bench.query import populate
    from pixdex.index import open_index
    from pixdex.settings import Settings

    machine = machine_note()
    with tempfile.TemporaryDirectory(prefix="pixdex-load-") as tmp:
        data_dir = Path(tmp) / "data"
        data_dir.mkdir()
        print(f"indexing {args.docs:,} synthetic documents ...", file=sys.stderr)
        index = open_index(Settings(index_url=f"sqlite:///{data_dir / 'index.db'}"))
        t = time.perf_counter()
        corpus = populate(index, args.docs)
        populate_s = time.perf_counter() - t
        index.close()
        photos = photo_variants(args.photos, args.photo_size, args.seed)
        print("starting pixdex up ...", file=sys.stderr)
        stack = launch(data_dir)
        try:
            result = _measure(stack, corpus.ids, photos, args)
        finally:
            stack.stop(timeout_s=60)
            # What the stack logged about failures: the report names the errors, not only their count.
            result_log = [line.strip()[:400] for line in stack.output
                          if any(w in line for w in ("Traceback", "Error", "error", "exception"))]
        result["stack_errors"] = list(dict.fromkeys(result_log))[:8]
    result["populate_s"] = populate_s
    section = render(result, args, machine)
    publish(section, args.output, SECTION, write=args.write)
    errors = sum(not s.ok for s in result["idle"] + result["base"] + result["busy"])
    if errors or result["searchable"] != args.photos:
        print(f"FAILED: {errors} request errors, {result['searchable']} / {args.photos} photos searchable",
              file=sys.stderr)
        return 1
    return 0


def _measure(stack: UpProcess, ids: Sequence[str], photos: Sequence[tuple[str, bytes]],
             args: argparse.Namespace) -> dict[str, Any]:
    status, stats = get(stack.api, "/stats")
    if status != 200:
        raise RuntimeError(f"/stats: {status} {stats}")
    print(f"stack up at {stack.api}; idle phase ...", file=sys.stderr)
    # One warm-up pass of every kind (vector matrices load, the text model loads), not counted.
    for _kind, path in request_mix(ids):
        get(stack.api, path(0), timeout=120)
    end = time.monotonic() + args.seconds
    idle, idle_s = run_clients(stack.api, ids, args.clients, lambda: time.monotonic() >= end, args.seconds + 60)
    print(f"idle: {len(idle)} requests, {sum(not s.ok for s in idle)} errors", file=sys.stderr)
    # The baseline for the during-ingest ratio: as many clients as search during the ingest.
    end = time.monotonic() + args.seconds / 2
    base, base_s = run_clients(stack.api, ids, args.ingest_clients, lambda: time.monotonic() >= end,
                               args.seconds + 60)
    print(f"idle with {args.ingest_clients} clients: {len(base)} requests; ingest phase ...", file=sys.stderr)
    s3 = stack.client("s3")
    doc_ids = [document_id(stack.originals_bucket, key) for key, _ in photos]
    finished = threading.Event()
    timing: dict[str, float] = {}

    def ingest() -> None:
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.upload_threads) as pool:
            list(pool.map(lambda p: s3.put_object(Bucket=stack.originals_bucket, Key=p[0], Body=p[1],
                                                  ContentType="image/jpeg"), photos))
        timing["upload_s"] = time.perf_counter() - start
        pending = list(doc_ids)
        deadline = time.monotonic() + args.ingest_timeout
        while pending and time.monotonic() < deadline:
            # Documents finish roughly in upload order: check from the oldest pending one and stop at the
            # first that is not done, so the polling adds few requests to the load being measured.
            while pending:
                status, body = get(stack.api, f"/images/{pending[0]}")
                if not (status == 200 and isinstance(body, dict) and body.get("compress_state")
                        and body.get("analyze_state")):
                    break
                pending.pop(0)
            if pending:
                time.sleep(2.0)
        timing["ingest_s"] = time.perf_counter() - start
        finished.set()

    worker = threading.Thread(target=ingest, daemon=True)
    worker.start()
    busy, busy_s = run_clients(stack.api, ids, args.ingest_clients, finished.is_set, args.ingest_timeout + 120)
    worker.join()
    print(f"ingest: {timing}; checking every photo ...", file=sys.stderr)
    done, problems = done_states(stack.api, doc_ids)
    found = searchable = 0
    for (key, _), doc_id in zip(photos, doc_ids, strict=True):
        word = key.rsplit("/", 1)[-1].split(".")[0]
        status, body = get(stack.api, f"/search?q={word}&mode=keyword&size=5")
        hit = status == 200 and isinstance(body, dict) and any(h.get("id") == doc_id for h in body.get("hits", []))
        found += hit
        searchable += hit and doc_id in done
    if problems:
        print("not done: " + "; ".join(problems), file=sys.stderr)
    return {"idle": idle, "idle_s": idle_s, "base": base, "base_s": base_s,
            "busy": busy, "busy_s": busy_s, "done": len(done), "found": found,
            "searchable": searchable, "dlq": dead_letters(stack), "photo_mb": sum(len(b) for _, b in photos) / 1e6,
            **timing}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pixdex bench load", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(list(argv) if argv is not None else None))


if __name__ == "__main__":
    raise SystemExit(main())
