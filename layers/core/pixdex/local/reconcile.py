"""Start-up reconciliation of the local stack: re-derive the work that was queued when it stopped.

moto keeps its queues in memory, so messages waiting when `pixdex up` stopped (or was killed) are gone on
the next start. The objects themselves survive (DATA/s3, restored into moto before notifications are on),
and so does the index. The work is therefore re-derived instead of persisted: every original whose
document does not record the object's current ETag for a stage (missing, older, or a retryable failure)
gets a fresh "Object Created" event on that stage's queue, and every document whose original is gone gets
an "Object Deleted" event on the remove queue. The events have the shape EventBridge delivers, so the
functions treat them like any other; since every stage is idempotent, re-deriving too much costs only time.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pixdex.document import document_id
from pixdex.index.base import Filters, ImageIndex, SearchQuery
from pixdex.local.template import LOCAL_ACCOUNT_ID

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sqs import SQSClient

CREATE_STAGES = ("compress", "analyze")


@dataclass
class ReconcileReport:
    objects: int = 0
    documents: int = 0
    enqueued: dict[str, int] = field(default_factory=lambda: {"compress": 0, "analyze": 0, "remove": 0})

    def line(self) -> str:
        todo = ", ".join(f"{n} {stage}" for stage, n in self.enqueued.items() if n) or "nothing"
        return f"reconciled {self.objects} originals with {self.documents} documents: re-queued {todo}"


def object_event(detail_type: str, bucket: str, key: str, *, etag: str | None = None,
                 size: int | None = None, time: str | None = None, region: str = "us-east-1",
                 account: str = LOCAL_ACCOUNT_ID) -> dict[str, Any]:
    """An S3 event as EventBridge delivers it to SQS (``time``: when the object was written)."""
    obj: dict[str, Any] = {"key": key}
    if etag is not None:
        obj["etag"] = etag
    if size is not None:
        obj["size"] = size
    return {
        "version": "0", "id": str(uuid.uuid4()), "detail-type": detail_type, "source": "aws.s3",
        "account": account,
        "time": time or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": region, "resources": [f"arn:aws:s3:::{bucket}"],
        "detail": {"version": "0", "bucket": {"name": bucket}, "object": obj, "reason": "PixdexReconcile"},
    }


def needs(state: Any, etag: str) -> bool:
    """Whether a stage still has to run for the object version ``etag``."""
    if not isinstance(state, Mapping) or state.get("etag") != etag:
        return True
    if state.get("pending"):
        return False  # queued for the GPU task, which reports back itself
    error = state.get("error")
    # A recorded failure is final for bad input; a retryable one (an outage) never reaches the document.
    return isinstance(error, Mapping) and error.get("code") == "backend_unavailable"


def reconcile(s3: S3Client, sqs: SQSClient, index: ImageIndex, *, bucket: str, queues: Mapping[str, str],
              written_at: Callable[[str], str | None] = lambda _key: None,
              region: str = "us-east-1") -> ReconcileReport:
    """Compare the originals bucket with the index and queue what is missing (``queues``: stage -> URL).

    ``written_at(key)``: when the object was first written, if known (restored objects carry their restore
    time in S3), so documents keep their real upload time."""
    report = ReconcileReport()
    live: dict[str, str] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            live[obj["Key"]] = obj.get("ETag", "").strip('"')
            report.objects += 1
            doc = index.get(document_id(bucket, obj["Key"])) or {}
            for stage in CREATE_STAGES:
                if needs(doc.get(f"{stage}_state"), live[obj["Key"]]):
                    when = written_at(obj["Key"]) or obj["LastModified"].isoformat()
                    _send(sqs, queues[stage], object_event("Object Created", bucket, obj["Key"],
                                                           etag=live[obj["Key"]], size=obj.get("Size"), time=when,
                                                           region=region))
                    report.enqueued[stage] += 1
    for key in _indexed_keys(index, bucket):
        report.documents += 1
        if key not in live:
            _send(sqs, queues["remove"], object_event("Object Deleted", bucket, key, region=region))
            report.enqueued["remove"] += 1
    return report


def _indexed_keys(index: ImageIndex, bucket: str) -> Iterator[str]:
    cursor: str | None = None
    while True:
        result = index.search(SearchQuery(filters=Filters(), size=1000, cursor=cursor, sort="oldest"))
        for hit in result.hits:
            if hit.doc.get("bucket") == bucket and isinstance(hit.doc.get("key"), str):
                yield hit.doc["key"]
        if not result.next_cursor:
            return
        cursor = result.next_cursor


def _send(sqs: SQSClient, url: str, event: dict[str, Any]) -> None:
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps(event))
