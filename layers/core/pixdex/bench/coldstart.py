"""``pixdex bench coldstart``: cold start of each function in a fresh process, with the sample events.

For each of compress, analyze, remove and query, ``--repeat`` times: a new Python process imports the
function's module the way the Lambda runtime does (``functions/<name>/app.py``, which builds its runtime,
clients and models at import) and hands it the sample event from ``events/``, then the same event again
(the warm invocation, for the ratio). The parts the functions talk to are real and local: a moto server on
127.0.0.1 with the buckets the events name, the scikit-image photo the events name uploaded to it, and a
fresh SQLite index per repetition so every first invocation does the whole work (nothing is a duplicate).
The events' ETag and size are set to the uploaded object's, as S3 would send them.

Reported per function: interpreter start to handler ready (import + init), the first invocation, the
second, and the whole process as the parent saw it; medians over the repetitions, and the range.
Results go to the ``## cold start`` section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from pixdex.bench.report import publish
from pixdex.bench.stats import machine_note

SECTION: Final = "## cold start"
DEFAULT_OUTPUT: Final = Path("docs/benchmarks.md")
REPO: Final = Path(__file__).resolve().parents[4]
FUNCTIONS: Final = (("compress", "compress.json"), ("analyze", "analyze.json"), ("query", "query-search.json"),
                    ("remove", "remove.json"))

# Runs in the fresh process. Timed from its first line, before pixdex or boto3 are imported.
_CHILD: Final = r"""
import time
t0 = time.perf_counter()
import importlib.util, json, sys
path, event_path, name = sys.argv[1], sys.argv[2], sys.argv[3]
spec = importlib.util.spec_from_file_location("pixdex_function_" + name, path)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
from pixdex.local.functions import LocalContext
t1 = time.perf_counter()
event = json.loads(open(event_path).read())
first = module.lambda_handler(event, LocalContext(function_name=name))
t2 = time.perf_counter()
second = module.lambda_handler(event, LocalContext(function_name=name))
t3 = time.perf_counter()
print(json.dumps({"init_s": t1 - t0, "first_s": t2 - t1, "second_s": t3 - t2, "first": first}, default=str))
"""


def failures(name: str, result: Any) -> str | None:
    """Why a function's reply is a failure, or None: SQS functions report failed items, query a status."""
    if name == "query":
        status = result.get("statusCode") if isinstance(result, dict) else None
        return None if status == 200 else f"statusCode {status}"
    items = result.get("batchItemFailures") if isinstance(result, dict) else None
    return None if items == [] else f"batchItemFailures {items}"


def patched_event(template: dict[str, Any], key: str, etag: str | None, size: int | None) -> dict[str, Any]:
    """The sample SQS event with its S3 object's key, ETag and size replaced (the body is EventBridge JSON)."""
    event: dict[str, Any] = json.loads(json.dumps(template))
    for record in event.get("Records", []):
        body = json.loads(record["body"])
        obj = body["detail"]["object"]
        obj["key"] = key
        if etag is not None:
            obj["etag"] = etag
        if size is not None:
            obj["size"] = size
        record["body"] = json.dumps(body)
    return event


def _bucket_names(events: dict[str, dict[str, Any]]) -> tuple[str, str]:
    body = json.loads(events["compress"]["Records"][0]["body"])
    originals = body["detail"]["bucket"]["name"]
    return originals, originals.replace("-originals-", "-derivatives-")


def run(args: argparse.Namespace) -> int:
    import boto3

    from pixdex.local.stack import LOCAL_CREDENTIALS, MotoServer, free_port, function_environment
    from pixdex.packages import package_dir

    machine = machine_note()
    events = {name: json.loads((REPO / "events" / file).read_text()) for name, file in FUNCTIONS}
    originals, derivatives = _bucket_names(events)
    body = json.loads(events["compress"]["Records"][0]["body"])
    key = body["detail"]["object"]["key"]
    skimage = package_dir("skimage")
    photo = (skimage / "data" / key.rsplit("/", 1)[-1]) if skimage else None
    if photo is None or not photo.is_file():
        print(f"bench coldstart needs scikit-image's {key.rsplit('/', 1)[-1]} (pip install -e '.[local]')",
              file=sys.stderr)
        return 2
    rows: dict[str, list[dict[str, float]]] = {name: [] for name, _ in FUNCTIONS}
    with tempfile.TemporaryDirectory(prefix="pixdex-cold-") as tmp:
        root = Path(tmp)
        moto = MotoServer(free_port(), root / "moto.log")
        moto.start()
        try:
            s3 = boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1", **LOCAL_CREDENTIALS)
            for bucket in (originals, derivatives):
                s3.create_bucket(Bucket=bucket)
            for r in range(args.repeat):
                data_dir = root / f"run{r}"
                data_dir.mkdir()
                env = {**os.environ, **function_environment(
                    data_dir=data_dir, originals_bucket=originals, derivatives_bucket=derivatives,
                    aws_endpoint=moto.url, region="us-east-1")}
                put = s3.put_object(Bucket=originals, Key=key, Body=photo.read_bytes())
                etag = str(put["ETag"]).strip('"')
                for name, _file in FUNCTIONS:
                    if name == "remove":
                        s3.delete_object(Bucket=originals, Key=key)
                        event = patched_event(events[name], key, None, None)
                    elif name == "query":
                        event = events[name]
                    else:
                        event = patched_event(events[name], key, etag, photo.stat().st_size)
                    event_path = data_dir / f"{name}.json"
                    event_path.write_text(json.dumps(event))
                    start = time.perf_counter()
                    out = subprocess.run([sys.executable, "-c", _CHILD, str(REPO / "functions" / name / "app.py"),
                                          str(event_path), name], capture_output=True, text=True, env=env,
                                         cwd=REPO, timeout=600)
                    process_s = time.perf_counter() - start
                    if out.returncode != 0:
                        print(f"{name}: exit {out.returncode}\n{out.stderr[-3000:]}", file=sys.stderr)
                        return 1
                    result = json.loads(out.stdout.strip().splitlines()[-1])
                    problem = failures(name, result["first"])
                    if problem:
                        print(f"{name}: first invocation failed: {problem}\n{out.stderr[-2000:]}", file=sys.stderr)
                        return 1
                    rows[name].append({"init_s": result["init_s"], "first_s": result["first_s"],
                                       "second_s": result["second_s"], "process_s": process_s})
                    print(f"run {r} {name}: init {result['init_s']:.2f} s, first {result['first_s']:.2f} s, "
                          f"second {result['second_s']:.3f} s, process {process_s:.2f} s", file=sys.stderr)
        finally:
            moto.stop()
    section = render(rows, args, machine)
    publish(section, args.output, SECTION, write=args.write)
    return 0


def render(rows: dict[str, list[dict[str, float]]], args: argparse.Namespace, machine: str) -> str:
    def cell(values: list[float], unit: float = 1.0, digits: int = 2) -> str:
        return (f"{statistics.median(values) * unit:.{digits}f} ({min(values) * unit:.{digits}f}-"
                f"{max(values) * unit:.{digits}f})")

    lines = [SECTION, "",
             f"`pixdex bench coldstart --repeat {args.repeat}`, {machine}. A fresh process per function and "
             "repetition imports `functions/<name>/app.py` (its runtime, clients and models are built at import, "
             "as in Lambda) and handles the sample event from `events/` twice; moto on 127.0.0.1, a fresh "
             "SQLite index per repetition (every first invocation does the whole work). Median (min-max) of "
             f"{args.repeat} repetitions. Lambda adds its own runtime start and package download, not measured "
             "here.", "",
             "| function | import + init s | first invocation s | second invocation ms | cold / warm "
             "(first / second) | whole process s |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, values in rows.items():
        first = [v["first_s"] for v in values]
        second = [v["second_s"] for v in values]
        ratio = statistics.median(first) / max(statistics.median(second), 1e-9)
        lines.append(f"| {name} | {cell([v['init_s'] for v in values])} | {cell(first)} | "
                     f"{cell(second, 1000, 0)} | {ratio:.1f}x | {cell([v['process_s'] for v in values])} |")
    lines += ["", "The second invocation of compress and analyze finds its stage recorded for that ETag and "
              "skips (idempotency), so their cold / warm ratio overstates the pure model warm-up; query repeats "
              "the same search; remove repeats a delete of an absent object.", "",
              f"Reproduce: `pixdex bench coldstart --repeat {args.repeat}`.", ""]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeat", type=int, default=3, help="fresh processes per function (default 3)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--no-write", dest="write", action="store_false", help="print the section only")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pixdex bench coldstart", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(list(argv) if argv is not None else None))


if __name__ == "__main__":
    raise SystemExit(main())
