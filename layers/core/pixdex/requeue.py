"""Outage retries that do not spend a message's deliveries.

SQS counts every receive against the redrive policy's maxReceiveCount, so an index or storage outage longer
than a few retries would dead-letter good images. A record that fails with a *retryable* error (the backend
is unavailable: nothing is wrong with the image) is therefore sent again to its own queue with a growing
delay and the received copy is reported done. Bad input (non-retryable errors) keeps the normal path:
failed item, retried, dead-lettered. After ``MAX_OUTAGE_RETRIES`` requeues (about two hours of outage) the
record also takes the normal path, so nothing circulates forever.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, Protocol

from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

ATTRIBUTE: Final = "pixdex-outage-retries"
MAX_OUTAGE_RETRIES: Final = 16
MAX_DELAY_SECONDS: Final = 900  # SQS's DelaySeconds limit


def outage_delay(attempt: int) -> int:
    """Seconds before requeue number ``attempt`` (1-based) is delivered: 1, 2, 4, ... up to 15 minutes."""
    return int(min(MAX_DELAY_SECONDS, 2 ** (attempt - 1)))


def outage_retries(record: SQSRecord) -> int:
    """How many times this message was already requeued for an outage."""
    attrs: dict[str, Any] = record.raw_event.get("messageAttributes") or {}
    value = attrs.get(ATTRIBUTE) or {}
    try:
        return int(value.get("stringValue") or 0)
    except (TypeError, ValueError):
        return 0


class Requeuer(Protocol):
    def requeue(self, record: SQSRecord, *, attempt: int, delay_seconds: int) -> None: ...


class SqsRequeuer:
    """Sends the record's body back to the queue it came from (named by the record's eventSourceARN)."""

    def __init__(self, sqs: SQSClient) -> None:
        self.sqs = sqs
        self._urls: dict[str, str] = {}

    def requeue(self, record: SQSRecord, *, attempt: int, delay_seconds: int) -> None:
        self.sqs.send_message(
            QueueUrl=self._url(record.event_source_arn),
            MessageBody=record.body,
            DelaySeconds=delay_seconds,
            MessageAttributes={ATTRIBUTE: {"DataType": "Number", "StringValue": str(attempt)}},
        )

    def _url(self, arn: str) -> str:
        if arn not in self._urls:
            # arn:aws:sqs:<region>:<account>:<name>
            _, _, _, _, account, name = arn.split(":", 5)
            self._urls[arn] = self.sqs.get_queue_url(QueueName=name, QueueOwnerAWSAccountId=account)["QueueUrl"]
        return self._urls[arn]
