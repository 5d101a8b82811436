"""pixdex.presign must produce exactly botocore's presigned URLs, only faster."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
from botocore.config import Config

from pixdex.presign import Credentials, Presigner


@pytest.mark.parametrize(("region", "endpoint", "token"), [
    ("us-east-1", None, None),
    ("eu-west-1", None, "session/token+="),
    ("us-east-1", "http://127.0.0.1:4566", None),
    ("ap-southeast-2", "https://s3.example.internal:9000/base", "t"),
])
@pytest.mark.parametrize(("bucket", "key"), [
    ("my-bucket", "a b/c+d%2F ü.jpg"),
    ("bk", "x/y.webp"),
    ("dotted.bucket.name", "AQ_QhgPWqpvBS1YykT0moOYm/thumbnail.webp"),
    ("my-bucket", "~tilde/(parens)*star!'quote.png"),
])
def test_matches_botocore(region: str, endpoint: str | None, token: str | None, bucket: str, key: str) -> None:
    s3 = boto3.client("s3", region_name=region, endpoint_url=endpoint, aws_access_key_id="AKID",
                      aws_secret_access_key="SECRET/x+y", aws_session_token=token,
                      config=Config(signature_version="s3v4"))
    reference = urlsplit(s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key},
                                                   ExpiresIn=900))
    query = parse_qs(reference.query)
    now = datetime.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    presigner = Presigner(region=region, endpoint_url=endpoint,
                          credentials=lambda: Credentials("AKID", "SECRET/x+y", token))
    mine = urlsplit(presigner.url(bucket, key, 900, now=now))
    assert (mine.scheme, mine.netloc, mine.path) == (reference.scheme, reference.netloc, reference.path)
    assert parse_qs(mine.query) == query
