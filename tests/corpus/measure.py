"""Peak memory (and time) of each corpus kind through each function's stage, against the function's MemorySize.

``python -m tests.corpus.measure --out docs/robustness.md`` runs every kind in a fresh subprocess per stage
(compress, analyze with the default models): the process first handles one small good JPEG (imports, model
sessions: the warm container), records ``ru_maxrss``, then handles the kind and records ``ru_maxrss`` again.
The table lists the warm baseline, the peak and the kind's own increase, with the function's MemorySize from
template.yaml. A measurement, not a test: nothing here asserts a number.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
STAGES = {"compress": "CompressFunction", "analyze": "AnalyzeFunction"}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure_one(kind_name: str, stage: str) -> dict[str, Any]:
    """In this process: warm the stage, then run one kind through it."""
    from pixdex.errors import PixdexError
    from pixdex.events import ObjectEvent
    from pixdex.runtime import Runtime
    from pixdex.settings import Settings
    from pixdex.storage import FolderStore
    from tests import imagegen
    from tests.corpus.generate import KINDS

    kind = next(k for k in KINDS if k.name == kind_name)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.from_env({"PIXDEX_DATA_DIR": tmp})
        store = FolderStore(Path(tmp) / "s3")
        runtime = Runtime(settings, store=store, route_heavy=False)

        def run(key: str, data: bytes) -> str:
            etag = store.put(settings.originals_bucket, key, data, content_type="application/octet-stream")
            event = ObjectEvent(kind="created", bucket=settings.originals_bucket, key=key, etag=etag)
            try:
                return runtime.pipeline.handle(stage, event).value
            except PixdexError as exc:
                return exc.code

        run("warm/warm.jpg", imagegen.jpeg_bytes(640, 480, seed=99))
        base = _rss_mb()
        data = kind.make()
        start = time.perf_counter()
        outcome = run(kind.key, data)
        seconds = time.perf_counter() - start
        peak = _rss_mb()
        runtime.index.close()
    return {"kind": kind_name, "stage": stage, "bytes": len(data), "outcome": outcome, "baseline_mb": round(base, 1),
            "peak_mb": round(peak, 1), "delta_mb": round(peak - base, 1), "seconds": round(seconds, 3)}


def memory_sizes() -> dict[str, int]:
    from tests.cfn_yaml import load_template

    resources = load_template(REPO / "template.yaml")["Resources"]
    return {stage: int(resources[lid]["Properties"]["MemorySize"]) for stage, lid in STAGES.items()}


def _subprocess(kind: str, stage: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "tests.corpus.measure", "--one", kind, "--stage", stage],
                          cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"},
                          check=False)
    if proc.returncode != 0:
        return {"kind": kind, "stage": stage, "outcome": f"CRASHED rc={proc.returncode}: {proc.stderr[-300:]}",
                "bytes": 0, "baseline_mb": 0.0, "peak_mb": 0.0, "delta_mb": 0.0, "seconds": 0.0}
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def report(rows: list[dict[str, Any]], sizes: dict[str, int], command: str) -> str:
    by_kind: dict[str, dict[str, dict[str, Any]]] = {}
    for r in rows:
        by_kind.setdefault(r["kind"], {})[r["stage"]] = r
    lines = [
        "## Peak memory per bad-input kind",
        "",
        f"Measured with `{command}` (one fresh process per kind and stage; the process first handles a",
        "640x480 JPEG, so the baseline is a warm container with its imports and, for analyze, the default models).",
        f"MemorySize in template.yaml: compress {sizes['compress']} MB, analyze {sizes['analyze']} MB.",
        "Peak is the process's maximum RSS; +kind is what that kind added over the warm baseline.",
        "",
        "| kind | bytes | compress outcome | compress peak MB (+kind) | s "
        "| analyze outcome | analyze peak MB (+kind) | s |",
        "|---|---:|---|---:|---:|---|---:|---:|",
    ]
    worst = {s: max((r for r in rows if r["stage"] == s), key=lambda r: r["peak_mb"]) for s in STAGES}
    for kind, stages in by_kind.items():
        c, a = stages.get("compress", {}), stages.get("analyze", {})
        lines.append(
            f"| {kind} | {c.get('bytes', a.get('bytes', 0))} | {c.get('outcome')} | {c.get('peak_mb')} "
            f"(+{c.get('delta_mb')}) | {c.get('seconds')} | {a.get('outcome')} | {a.get('peak_mb')} "
            f"(+{a.get('delta_mb')}) | {a.get('seconds')} |"
        )
    lines += ["", "Highest peaks: " + "; ".join(
        f"{s} {w['peak_mb']} MB ({w['kind']}, {100 * w['peak_mb'] / sizes[s]:.0f}% of {sizes[s]} MB)"
        for s, w in worst.items()) + ".", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--stage", choices=sorted(STAGES), help=argparse.SUPPRESS)
    parser.add_argument("--kinds", default="", help="comma-separated kinds (default: all)")
    parser.add_argument("--jobs", type=int, default=2, help="subprocesses at once")
    parser.add_argument("--out", type=Path, help="write the table into this Markdown file's section")
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure_one(args.one, args.stage)))
        return 0
    from tests.corpus.generate import KINDS

    names = [n for n in args.kinds.split(",") if n] or [k.name for k in KINDS]
    jobs = [(n, s) for n in names for s in STAGES]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        rows = list(pool.map(lambda j: _subprocess(*j), jobs))
    command = "python -m tests.corpus.measure" + (" --out " + str(args.out) if args.out else "")
    text = report(rows, memory_sizes(), command)
    if args.out:
        args.out.write_text(_replace_section(args.out.read_text() if args.out.exists() else "", text))
    print(text)
    return 0


def _replace_section(doc: str, section: str) -> str:
    head = section.splitlines()[0]
    if head not in doc:
        return doc.rstrip() + ("\n\n" if doc.strip() else "") + section
    before, _, rest = doc.partition(head)
    nxt = rest.find("\n## ")
    return before + section + (rest[nxt + 1:] if nxt >= 0 else "")


if __name__ == "__main__":
    raise SystemExit(main())
