"""The GPU batch task (functions/heavy): compress and analyze many objects in large batches, resumably.

Runs in an AWS Batch job (an array job shards the keys by AWS_BATCH_JOB_ARRAY_INDEX) on the CUDA provider,
or locally on the CPU (`pixdex backfill --local`). Work is the same pipeline as the Lambda functions, so it is
idempotent: an object already processed at its current ETag is skipped, and a job that is interrupted and
started again resumes from its checkpoint in the derivatives bucket (`_jobs/<job id>/<shard>.json`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pixdex.errors import NotFoundError
from pixdex.events import ObjectEvent
from pixdex.pipeline import Outcome
from pixdex.runtime import Runtime
from pixdex.settings import Settings

log = logging.getLogger("pixdex.heavy")
CHECKPOINT_PREFIX = "_jobs"


@dataclass
class Progress:
    done: int = 0
    processed: int = 0
    skipped: int = 0
    failed: int = 0


def collect_keys(runtime: Runtime, bucket: str, keys: Sequence[str], prefix: str | None,
                 manifest: str | None) -> list[str]:
    """Every object the job names, sorted and without repeats (so every shard sees the same order)."""
    found = set(keys)
    if prefix is not None:
        found.update(k for k in runtime.store.list_keys(bucket, prefix) if not k.endswith("/"))
    if manifest is not None:
        m_bucket, _, m_key = manifest.removeprefix("s3://").partition("/")
        data, _ = runtime.store.get(m_bucket, m_key)
        found.update(line.strip() for line in data.decode().splitlines() if line.strip())
    return sorted(found)


def shard(keys: list[str], index: int, count: int) -> list[str]:
    return keys[index::count] if count > 1 else keys


def run(runtime: Runtime, *, bucket: str, keys: list[str], job_id: str, shard_index: int = 0,
        batch_size: int = 32, stages: Sequence[str] = ("compress", "analyze")) -> Progress:
    store, settings = runtime.store, runtime.settings
    fingerprint = hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]
    checkpoint_key = f"{CHECKPOINT_PREFIX}/{job_id}/{shard_index}.json"
    progress = Progress()
    try:
        saved = json.loads(store.get(settings.derivatives_bucket, checkpoint_key)[0])
        if saved.get("keys") == fingerprint:
            progress = Progress(**{k: int(saved[k]) for k in ("done", "processed", "skipped", "failed")})
            log.info("resuming %s shard %s at %d of %d", job_id, shard_index, progress.done, len(keys))
    except NotFoundError:
        pass
    pipeline = runtime.pipeline
    started = time.monotonic()
    while progress.done < len(keys):
        batch = keys[progress.done:progress.done + batch_size]
        events = [ObjectEvent(kind="created", bucket=bucket, key=key) for key in batch]
        outcomes: list[list[Outcome | Exception]] = []
        if "analyze" in stages:
            outcomes.append(pipeline.analyze_many(events))
        if "compress" in stages:
            row: list[Outcome | Exception] = []
            for event in events:
                try:
                    row.append(pipeline.compress(event))
                except Exception as exc:  # recorded on the document; the job goes on
                    row.append(exc)
            outcomes.append(row)
        for key, results in zip(batch, zip(*outcomes, strict=True), strict=True):
            errors = [r for r in results if isinstance(r, Exception)]
            if errors:
                progress.failed += 1
                log.warning("failed %s: %s", key, "; ".join(str(e) for e in errors))
            elif all(r == Outcome.DUPLICATE for r in results):
                progress.skipped += 1
            else:
                progress.processed += 1
        progress.done += len(batch)
        store.put(settings.derivatives_bucket, checkpoint_key,
                  json.dumps({"keys": fingerprint, **progress.__dict__}).encode(), content_type="application/json")
        rate = progress.done / max(time.monotonic() - started, 1e-9)
        log.info(json.dumps({"job": job_id, "shard": shard_index, "done": progress.done, "of": len(keys),
                             "processed": progress.processed, "skipped": progress.skipped,
                             "failed": progress.failed, "images_per_s": round(rate, 2)}))
    return progress


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pixdex.heavy", description=__doc__)
    p.add_argument("--bucket", default=None, help="default: the originals bucket")
    p.add_argument("--key", action="append", default=[], help="an object key (repeatable)")
    p.add_argument("--prefix", default=None, help="every object under this prefix")
    p.add_argument("--manifest", default=None, help="s3://bucket/key of a file with one key per line")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--job-id", default=None, help="default: AWS_BATCH_JOB_ID, or derived from the arguments")
    p.add_argument("--stages", default="compress,analyze")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    environ = os.environ if env is None else env
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    args = parse_args(argv)
    settings = Settings.from_env(environ)
    runtime = Runtime(settings, route_heavy=False)
    bucket = args.bucket or settings.originals_bucket
    if not (args.key or args.prefix is not None or args.manifest):
        print("pixdex.heavy: give --key, --prefix or --manifest", file=sys.stderr)
        return 2
    keys = collect_keys(runtime, bucket, args.key, args.prefix, args.manifest)
    # Array children share the parent's job id and split the keys by index.
    job_id = (environ.get("AWS_BATCH_JOB_ID", "").split(":")[0] or args.job_id
              or "local-" + hashlib.sha256(json.dumps(vars(args), sort_keys=True).encode()).hexdigest()[:12])
    index = int(environ.get("AWS_BATCH_JOB_ARRAY_INDEX", "0"))
    count = int(environ.get("PIXDEX_ARRAY_SIZE", "1"))
    mine = shard(keys, index, count)
    stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
    progress = run(runtime, bucket=bucket, keys=mine, job_id=job_id, shard_index=index,
                   batch_size=args.batch_size, stages=stages)
    print(json.dumps({"job": job_id, "shard": index, "keys": len(mine), **progress.__dict__}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
