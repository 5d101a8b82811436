"""What every fault test reports: messages in, documents out, dead letters, duplicates."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pixdex.document import document_id
from tests.e2e.conftest import RunningStack


@dataclass
class Figures:
    name: str
    messages_in: int
    documents_out: int = 0
    dead_letters: dict[str, list[str]] = field(default_factory=dict)
    duplicates: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        dlq = {q: len(b) for q, b in self.dead_letters.items()}
        more = "".join(f", {k} {v}" for k, v in self.extra.items())
        return (f"[fault] {self.name}: messages in {self.messages_in}, documents out {self.documents_out}, "
                f"DLQ {dlq}, duplicates {self.duplicates}{more}")


def queue_url(stack: RunningStack, suffix: str) -> str:
    return next(u for u in stack.client("sqs").list_queues()["QueueUrls"] if u.endswith(suffix))


def peek_dead_letters(stack: RunningStack) -> dict[str, list[str]]:
    """Bodies in each dead-letter queue (received with a short visibility, so they stay in the queue)."""
    sqs = stack.client("sqs")
    out: dict[str, list[str]] = {}
    for url in sqs.list_queues()["QueueUrls"]:
        if url.endswith("-dlq"):
            got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=1).get("Messages", [])
            out[url.rsplit("/", 1)[-1]] = [m["Body"] for m in got]
    return out


def settled(stack: RunningStack, key: str) -> dict[str, Any] | None:
    status, doc = stack.get(f"/images/{document_id(stack.originals_bucket, key)}")
    if status == 200 and doc.get("compress_state") and doc.get("analyze_state"):
        return doc  # type: ignore[no-any-return]
    return None


def figures(stack: RunningStack, name: str, messages_in: int, keys: list[str]) -> Figures:
    """Documents out and duplicates: a document per object and two derivatives per processed document."""
    status, listing = stack.get("/search?size=100")
    assert status == 200
    ids = [h["id"] for h in listing["hits"]]
    s3 = stack.client("s3")
    derivative_keys = [o["Key"] for o in s3.list_objects_v2(Bucket=stack.derivatives_bucket).get("Contents", [])]
    per_doc: dict[str, int] = {}
    for k in derivative_keys:
        per_doc[k.split("/", 1)[0]] = per_doc.get(k.split("/", 1)[0], 0) + 1
    duplicates = (len(ids) - len(set(ids))) + sum(n - 2 for n in per_doc.values() if n > 2)
    expected_ids = {document_id(stack.originals_bucket, k) for k in keys}
    return Figures(name=name, messages_in=messages_in, documents_out=listing["total"],
                   dead_letters=peek_dead_letters(stack), duplicates=duplicates,
                   extra={"unexpected documents": len(set(ids) - expected_ids)})


def record(fig: Figures, out: Path | None = None) -> None:
    print("\n" + fig.line())
    if out is not None:
        with out.open("a") as f:
            f.write(json.dumps({"name": fig.name, "line": fig.line()}) + "\n")


class IndexLock:
    """Holds SQLite's write lock on the embedded index from another process's connection: every writer of
    the stack waits its busy timeout and then fails with 'database is locked', as during a long
    maintenance transaction or a stuck writer."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(str(path), timeout=30, isolation_level=None)

    def __enter__(self) -> IndexLock:
        self.conn.execute("BEGIN EXCLUSIVE")
        return self

    def __exit__(self, *exc: object) -> None:
        self.conn.execute("ROLLBACK")
        self.conn.close()
