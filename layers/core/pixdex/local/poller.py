"""The Lambda service's stand-in for SQS event source mappings: poll, invoke, delete or retry.

Mirrors the real behaviour: a batch goes to the handler in the SQS event shape; items named in
batchItemFailures (or the whole batch if the handler raises) stay on the queue and come back after a
visibility timeout; the queue's redrive policy moves them to the dead-letter queue after maxReceiveCount.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from typing import TYPE_CHECKING, Any

from pixdex.local.functions import Handler, LocalContext

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

log = logging.getLogger("pixdex.local.poller")


class QueuePoller(threading.Thread):
    def __init__(self, *, name: str, sqs: SQSClient, queue_url: str, queue_arn: str, handler: Handler,
                 batch_size: int, region: str, stop: threading.Event, retry_delay_seconds: int = 1,
                 visibility_timeout: int | None = None) -> None:
        super().__init__(name=f"poller-{name}", daemon=True)
        self.function_name = name
        self.sqs = sqs
        self.queue_url = queue_url
        self.queue_arn = queue_arn
        self.handler = handler
        self.batch_size = max(1, min(batch_size, 10))
        self.region = region
        self.stop_event = stop
        # Locally a failed item comes back after a short, growing delay instead of the full visibility
        # timeout, so retries and dead-lettering take seconds.
        self.retry_delay_seconds = retry_delay_seconds
        # None: the queue's own visibility timeout, as Lambda uses it.
        self.visibility_timeout = visibility_timeout
        self.idle = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.poll_once(wait_seconds=1)
            except Exception:  # the poller must outlive any single bad batch, as Lambda's does
                log.exception("poll failed for %s", self.function_name)
                self.stop_event.wait(1)

    def poll_once(self, wait_seconds: int = 0) -> int:
        extra: dict[str, Any] = {}
        if self.visibility_timeout is not None:
            extra["VisibilityTimeout"] = self.visibility_timeout
        resp = self.sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=self.batch_size,
            WaitTimeSeconds=wait_seconds,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
            **extra,
        )
        messages = resp.get("Messages", [])
        if not messages:
            self.idle.set()
            return 0
        self.idle.clear()
        log.info("%s received %d messages", self.function_name, len(messages))
        event = {"Records": [self._record(m) for m in messages]}
        failed: set[str]
        try:
            result = self.handler(event, LocalContext(function_name=self.function_name))
            failed = {f["itemIdentifier"] for f in (result or {}).get("batchItemFailures", [])}
        except Exception:
            log.exception("handler %s raised; the whole batch will be retried", self.function_name)
            failed = {m["MessageId"] for m in messages}
        done = [m for m in messages if m["MessageId"] not in failed]
        for i in range(0, len(done), 10):
            self.sqs.delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[{"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(done[i:i + 10])],
            )
        for m in messages:
            if m["MessageId"] in failed:
                count = int(m.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
                self.sqs.change_message_visibility(
                    QueueUrl=self.queue_url, ReceiptHandle=m["ReceiptHandle"],
                    VisibilityTimeout=self.retry_delay_seconds * count,
                )
        log.info("%s finished %d messages (%d failed)", self.function_name, len(messages), len(failed))
        return len(messages)

    def _record(self, m: Any) -> dict[str, Any]:
        return {
            "messageId": m["MessageId"],
            "receiptHandle": m["ReceiptHandle"],
            "body": m["Body"],
            "attributes": m.get("Attributes", {}),
            "messageAttributes": _lambda_attributes(m.get("MessageAttributes", {})),
            "md5OfBody": m.get("MD5OfBody") or hashlib.md5(m["Body"].encode(), usedforsecurity=False).hexdigest(),
            "eventSource": "aws:sqs",
            "eventSourceARN": self.queue_arn,
            "awsRegion": self.region,
        }


def _lambda_attributes(attrs: dict[str, Any]) -> dict[str, Any]:
    """ReceiveMessage's attribute shape ({"StringValue", "DataType"}) as Lambda's SQS event carries it
    ({"stringValue", "dataType", ...})."""
    out: dict[str, Any] = {}
    for name, a in attrs.items():
        out[name] = {
            "stringValue": a.get("StringValue"),
            "binaryValue": a.get("BinaryValue"),
            "stringListValues": a.get("StringListValues", []),
            "binaryListValues": a.get("BinaryListValues", []),
            "dataType": a.get("DataType"),
        }
    return out
