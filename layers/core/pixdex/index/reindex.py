"""``pixdex reindex``: move a search-cluster index to a new mapping version without downtime.

The alias (``pixdex-images``) always points at one physical index (``pixdex-images-vN``); readers and
writers only ever use the alias. A reindex:

1. creates ``pixdex-images-v(N+1)`` with the current mapping (:mod:`pixdex.index.mapping`);
2. copies every document from vN, re-deriving the internal fields (hash encodings, ids) for the new
   mapping, then copies again whatever was written to vN meanwhile (the internal update time says what,
   with a margin for writers' clock skew);
3. moves the alias to v(N+1) in one atomic ``_aliases`` call, so every request sees either the old or
   the new index, never neither;
4. copies once more what was written to vN between step 2 and the swap, never overwriting a newer
   version already written to v(N+1) (a conditional update; without scripting, only missing documents).

Writes racing the very last moment of step 4 can be lost on a busy index: for a strictly lossless
reindex pause the queues' event source mappings (the events wait in SQS) while it runs.

Re-deriving from the bucket instead (when the models changed, not only the mapping): ``--mode empty``
creates v(N+1) behind a staging alias ``pixdex-images-next``; run the backfill with
``PIXDEX_INDEX_NAME=pixdex-images-next``, then ``pixdex reindex --swap`` moves the alias.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from pixdex.document import VECTOR_FIELDS
from pixdex.errors import IndexMappingError, PixdexError
from pixdex.index import requests as rq
from pixdex.index.clusters import cluster_options, open_cluster_index
from pixdex.index.mapping import (
    CREATED_FIELD,
    ID_FIELD,
    MAPPING_VERSION,
    UPDATED_FIELD,
    prepare_fields,
    strip_internal,
    version_of,
)
from pixdex.index.opensearch import ClusterIndex, ClusterOptions
from pixdex.settings import Settings

STAGING_SUFFIX: Final = "-next"
COPY_PAGE: Final = 500
# Writers' clocks may differ a little from this process's: catch-up windows start this much earlier.
CLOCK_SKEW_MS: Final = 5_000
# Replace the document only if what is there is older (or absent); otherwise leave it.
REPLACE_IF_NEWER: Final = (
    f"if (ctx._source.{UPDATED_FIELD} == null || ctx._source.{UPDATED_FIELD} < params.doc.{UPDATED_FIELD}) "
    "{ ctx._source.clear(); ctx._source.putAll(params.doc); } else { ctx.op = 'noop'; }"
)


@dataclass
class ReindexReport:
    old: str | None
    new: str
    copied: int = 0
    caught_up: int = 0
    failed: int = 0
    swapped: bool = False
    dropped_old: bool = False

    def lines(self) -> list[str]:
        return [
            f"from {self.old or '(nothing)'} to {self.new}",
            f"copied {self.copied} documents, {self.caught_up} again after concurrent writes, {self.failed} failed",
            "alias moved" if self.swapped else "alias not moved",
            *([f"deleted {self.old}"] if self.dropped_old else []),
        ]


def reindex(
    index: ClusterIndex,
    *,
    copy: bool = True,
    drop_old: bool = False,
    log: Callable[[str], None] = lambda _: None,
) -> ReindexReport:
    """Create the next version, copy into it and move the alias (see the module docstring)."""
    old = index.resolve_alias()
    if old is None:
        # Nothing yet: the first version is simply created behind the alias.
        index.ensure()
        assert index.physical is not None
        return ReindexReport(old=None, new=index.physical, swapped=True)
    new = index.create_version(_next_version(index, old), alias=False)
    report = ReindexReport(old=old, new=new)
    log(f"created {new}")
    target = _shaped(index, new)
    if copy:
        start = _now_ms()
        report.copied, failed = _copy(index, old, target, query={"match_all": {}}, mode="index")
        report.failed += failed
        log(f"copied {report.copied} documents")
        since, start = start - CLOCK_SKEW_MS, _now_ms()
        n, failed = _copy(index, old, target, query=_updated_since(since), mode="index")
        report.caught_up += n
        report.failed += failed
    _refresh(index, new)
    index.client.call(rq.swap_alias(index.alias, [old], new), refused=IndexMappingError)
    report.swapped = True
    log(f"alias {index.alias} -> {new}")
    if copy:
        mode = "newer" if index.update_mode == "script" else "create"
        n, failed = _copy(index, old, target, query=_updated_since(start - CLOCK_SKEW_MS), mode=mode)
        report.caught_up += n
        report.failed += failed
        _refresh(index, new)
    index.ensure()
    if drop_old:
        index.client.call(rq.delete_index(old), refused=IndexMappingError)
        report.dropped_old = True
    return report


def prepare_empty(index: ClusterIndex) -> str:
    """Create the next version behind the staging alias ``<alias>-next`` for a re-derivation run."""
    old = index.resolve_alias()
    version = _next_version(index, old) if old is not None else 1
    new = index.create_version(version, alias=False)
    staging = index.alias + STAGING_SUFFIX
    index.client.call(
        rq.Request("POST", "/_aliases", body={"actions": [{"add": {"index": new, "alias": staging}}]}),
        refused=IndexMappingError,
    )
    return new


def swap_to_staging(index: ClusterIndex, *, drop_old: bool = False) -> tuple[str | None, str]:
    """Move the alias to the index behind ``<alias>-next`` and remove the staging alias."""
    staging = ClusterIndex(index.client, alias=index.alias + STAGING_SUFFIX, dialect=index.dialect)
    new = staging.resolve_alias()
    if new is None:
        raise IndexMappingError(f"no staging alias {staging.alias!r}: run `pixdex reindex --mode empty` first")
    old = index.resolve_alias()
    actions: list[dict[str, Any]] = [{"remove": {"index": new, "alias": staging.alias}}]
    if old is not None:
        actions.append({"remove": {"index": old, "alias": index.alias}})
    actions.append({"add": {"index": new, "alias": index.alias, "is_write_index": True}})
    index.client.call(rq.Request("POST", "/_aliases", body={"actions": actions}), refused=IndexMappingError)
    if drop_old and old is not None:
        index.client.call(rq.delete_index(old), refused=IndexMappingError)
    index.ensure()
    return old, new


def _refresh(index: ClusterIndex, physical: str) -> None:
    """Make the copies searchable before readers arrive (Serverless has no refresh API; it refreshes
    on its own within seconds)."""
    if not index.serverless:
        index.client.call(rq.refresh_index(physical), refused=IndexMappingError)


def _next_version(index: ClusterIndex, current: str) -> int:
    """One above the highest existing ``<alias>-vN`` (an abandoned attempt must not be reused)."""
    response = index.client.call(
        rq.Request("GET", "/{index}", {"index": f"{index.alias}-v*"}), allow=(404,), refused=IndexMappingError
    )
    names = list(response.body) if response.status == 200 and isinstance(response.body, Mapping) else []
    versions = [v for v in (version_of(index.alias, n) for n in [*names, current]) if v is not None]
    return max(versions, default=0) + 1


def _shaped(index: ClusterIndex, physical: str) -> ClusterIndex:
    """The new physical index, addressed by name, with its own mapping read back."""
    target = ClusterIndex(
        index.client,
        alias=physical,
        dialect=index.dialect,
        knn=index.knn,
        refresh=None,
        update_mode=index.update_mode,
        version=index.version,
    )
    target.attach(physical)
    return target


def _copy(
    index: ClusterIndex, source: str, target: ClusterIndex, *, query: dict[str, Any], mode: str
) -> tuple[int, int]:
    shape = target.attach(target.alias)
    copied = failed = 0
    batch: list[tuple[int, list[dict[str, Any]]]] = []
    for hit in _scan_all(index, source, query):
        stored = hit.get("_source") or {}
        try:
            doc = prepare_fields(str(hit["_id"]), strip_internal(stored) | _vectors(stored), shape.dims,
                                 phash_bits=shape.phash_bits)
        except PixdexError:
            failed += 1
            continue
        doc[CREATED_FIELD] = stored.get(CREATED_FIELD, stored.get(UPDATED_FIELD, 0))
        doc[UPDATED_FIELD] = stored.get(UPDATED_FIELD, 0)
        batch.append((len(batch), _lines(target.alias, str(hit["_id"]), doc, mode)))
        if len(batch) >= COPY_PAGE:
            copied, failed = _flush(target, batch, copied, failed)
            batch = []
    if batch:
        copied, failed = _flush(target, batch, copied, failed)
    return copied, failed


def _flush(
    target: ClusterIndex, batch: list[tuple[int, list[dict[str, Any]]]], copied: int, failed: int
) -> tuple[int, int]:
    results = target.write_lines(batch)
    bad = sum(1 for r in results if r is not None)
    return copied + len(results) - bad, failed + bad


def _lines(physical: str, doc_id: str, doc: dict[str, Any], mode: str) -> list[dict[str, Any]]:
    if mode == "index":
        return rq.index_lines(physical, doc_id, doc)
    if mode == "create":
        return [{"create": {"_index": physical, "_id": doc_id}}, doc]
    return [
        {"update": {"_index": physical, "_id": doc_id, "retry_on_conflict": 3}},
        {"script": {"source": REPLACE_IF_NEWER, "lang": "painless", "params": {"doc": doc}}, "upsert": doc},
    ]


def _vectors(source: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in source.items() if k in VECTOR_FIELDS and v is not None}


def _updated_since(ms: int) -> dict[str, Any]:
    return {"range": {UPDATED_FIELD: {"gte": ms}}}


def _scan_all(index: ClusterIndex, physical: str, query: dict[str, Any]) -> Iterator[dict[str, Any]]:
    after: Sequence[Any] | None = None
    while True:
        body = rq.search_body(
            query=query, sort=[{ID_FIELD: {"order": "asc"}}], size=COPY_PAGE, search_after=after, source=["*"]
        )
        body.pop("track_total_hits")
        hits = index.client.call(rq.search(physical, body)).body["hits"]["hits"]
        yield from hits
        if len(hits) < COPY_PAGE:
            return
        after = hits[-1]["sort"]


def _now_ms() -> int:
    return int(time.time() * 1000)


# -- command line ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pixdex reindex", description=__doc__.split("\n\n")[0])
    parser.add_argument("--index-url", help="cluster URL (default: PIXDEX_INDEX_URL)")
    parser.add_argument("--index-name", help="the alias (default: PIXDEX_INDEX_NAME)")
    parser.add_argument("--mode", choices=("copy", "empty"), default="copy",
                        help="copy documents (default), or create an empty next version for a re-derivation run")
    parser.add_argument("--swap", action="store_true", help="move the alias to the staging index (after --mode empty)")
    parser.add_argument("--drop-old", action="store_true", help="delete the previous index after the swap")
    parser.add_argument("--status", action="store_true", help="show what the alias points at and exit")
    parser.add_argument("--from-bucket", action="store_true",
                        help="rebuild from the originals bucket (the source of truth) into a new index, then "
                             "switch to it: re-derives every document with the current code and models")
    parser.add_argument("--prefix", default="", help="with --from-bucket: only objects under this prefix")
    return parser


def rebuild_from_bucket(settings: Settings, *, prefix: str = "", drop_old: bool = False,
                        log: Callable[[str], None] = print) -> int:
    """Run the pipeline over every original into a fresh index, then switch readers to it: on a cluster by
    the alias swap; for the embedded index by atomically replacing the database file (stop `pixdex up`
    first: processes holding the old file keep reading it)."""
    from pathlib import Path
    from urllib.parse import urlparse

    from pixdex import heavy
    from pixdex.runtime import Runtime

    cluster = settings.index_url.startswith(("http://", "https://"))
    if cluster:
        index = open_cluster_index(_options(settings))
        new = prepare_empty(index)
        target = settings.replace(index_name=index.alias + STAGING_SUFFIX)
        log(f"rebuilding into {new} (staging alias {target.index_name})")
    else:
        current = Path(urlparse(settings.index_url).path)
        fresh = current.with_name(current.name + ".rebuild")
        for leftover in (fresh, Path(f"{fresh}-wal"), Path(f"{fresh}-shm")):
            leftover.unlink(missing_ok=True)
        target = settings.replace(index_url=f"sqlite:///{fresh}")
        log(f"rebuilding into {fresh}")
    runtime = Runtime(target, route_heavy=False)
    keys = heavy.collect_keys(runtime, settings.originals_bucket, [], prefix, None)
    progress = heavy.run(runtime, bucket=settings.originals_bucket, keys=keys,
                         job_id=f"reindex-{int(time.time())}")
    runtime.index.close()
    log(f"{progress.done} objects: {progress.processed} indexed, {progress.failed} failed (reasons on the documents)")
    if cluster:
        old, moved = swap_to_staging(index, drop_old=drop_old)
        log(f"{index.alias}: {old} -> {moved}")
    else:
        os.replace(fresh, current)
        for stale in (Path(f"{current}-wal"), Path(f"{current}-shm")):
            stale.unlink(missing_ok=True)
        log(f"{current} replaced")
    return 0


def main(argv: Sequence[str] | None = None, settings: Settings | None = None) -> int:
    args = build_parser().parse_args(argv)
    # The command line is an edge: settings come from the environment unless the caller passes them.
    base = settings or Settings.from_env(os.environ)
    if args.index_url:
        base = base.replace(index_url=args.index_url)
    if args.index_name:
        base = base.replace(index_name=args.index_name)
    if args.from_bucket:
        try:
            return rebuild_from_bucket(base, prefix=args.prefix, drop_old=args.drop_old)
        except PixdexError as exc:
            print(f"pixdex reindex: {exc.message}")
            return 1
    if not base.index_url.startswith(("http://", "https://")):
        print(f"pixdex reindex: {base.index_url!r} is not a search cluster; the embedded index needs no mapping "
              "reindex (use --from-bucket to rebuild it from the originals)")
        return 2
    try:
        index = open_cluster_index(_options(base))
        if args.status:
            stats = index.stats()
            print(f"{index.alias} -> {index.physical} (mapping v{stats['mapping_version']}, code v{MAPPING_VERSION}), "
                  f"{stats['documents']} documents")
            return 0
        if args.swap:
            old, new = swap_to_staging(index, drop_old=args.drop_old)
            print(f"{index.alias}: {old} -> {new}")
            return 0
        if args.mode == "empty":
            new = prepare_empty(index)
            print(f"created {new} behind {index.alias}{STAGING_SUFFIX}; run the backfill with "
                  f"PIXDEX_INDEX_NAME={index.alias}{STAGING_SUFFIX}, then `pixdex reindex --swap`")
            return 0
        report = reindex(index, drop_old=args.drop_old, log=print)
        for line in report.lines():
            print(line)
        return 1 if report.failed else 0
    except PixdexError as exc:
        print(f"pixdex reindex: {exc.message}")
        return 1


def _options(settings: Settings) -> ClusterOptions:
    return cluster_options(settings)
