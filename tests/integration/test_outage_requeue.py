"""Outages do not spend deliveries: a record whose index is unavailable is sent back to its queue with a delay
and reported done; bad input still fails its item; after MAX_OUTAGE_RETRIES the outage takes the normal path."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError
from moto import mock_aws

from pixdex import requeue
from pixdex.local.functions import LocalContext
from tests import imagegen
from tests.conftest import REPO, load_function

CTX = LocalContext(function_name="test")


@pytest.fixture
def aws(aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[dict[str, Any]]:
    # The index "file" is a directory: SQLite cannot open it, as when its disk or volume is gone.
    (tmp_path / "gone.db").mkdir()
    monkeypatch.setenv("PIXDEX_INDEX_URL", f"sqlite:///{tmp_path / 'gone.db'}")
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        sqs = boto3.client("sqs", region_name="us-east-1")
        for b in (aws_env["PIXDEX_ORIGINALS_BUCKET"], aws_env["PIXDEX_DERIVATIVES_BUCKET"]):
            s3.create_bucket(Bucket=b)
        url = sqs.create_queue(QueueName="pixdex-local-analyze")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        yield {"s3": s3, "sqs": sqs, "url": url, "arn": arn, "env": aws_env}


def _event(aws: dict[str, Any], key: str, body: bytes, retries: int | None = None) -> dict[str, Any]:
    bucket = aws["env"]["PIXDEX_ORIGINALS_BUCKET"]
    etag = aws["s3"].put_object(Bucket=bucket, Key=key, Body=body)["ETag"].strip('"')
    record = json.loads((REPO / "events" / "analyze.json").read_text())["Records"][0]
    detail = json.loads(record["body"])
    detail["detail"]["bucket"]["name"] = bucket
    detail["detail"]["object"].update({"key": key, "etag": etag})
    record.update({"body": json.dumps(detail), "eventSourceARN": aws["arn"], "messageId": key})
    if retries is not None:
        record["messageAttributes"] = {requeue.ATTRIBUTE: {"stringValue": str(retries), "dataType": "Number"}}
    return record


@pytest.mark.parametrize("function", ["analyze", "compress"])
def test_outage_requeues_without_failing(aws: dict[str, Any], function: str) -> None:
    handler = load_function(function)
    record = _event(aws, "a.jpg", imagegen.jpeg_bytes(64, 48))
    assert handler({"Records": [record]}, CTX) == {"batchItemFailures": []}
    got = aws["sqs"].receive_message(QueueUrl=aws["url"], MessageAttributeNames=["All"], WaitTimeSeconds=2)
    (copy,) = got["Messages"]
    assert copy["Body"] == record["body"]
    assert copy["MessageAttributes"][requeue.ATTRIBUTE]["StringValue"] == "1"


def test_outage_retries_are_bounded(aws: dict[str, Any]) -> None:
    handler = load_function("analyze")
    record = _event(aws, "a.jpg", imagegen.jpeg_bytes(64, 48), retries=requeue.MAX_OUTAGE_RETRIES)
    # The normal path: the item fails (powertools fails the invocation when every record failed).
    with pytest.raises(BatchProcessingError):
        handler({"Records": [record]}, CTX)
    assert "Messages" not in aws["sqs"].receive_message(QueueUrl=aws["url"])


def test_delays_grow_to_the_sqs_limit() -> None:
    assert [requeue.outage_delay(n) for n in (1, 2, 3, 10, 11, 16)] == [1, 2, 4, 512, 900, 900]
