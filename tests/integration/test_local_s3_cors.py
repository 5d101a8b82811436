"""The local stack's moto answers browser uploads with the bucket's own CORS rules, as S3 does: an allowed
page origin gets Access-Control-Allow-Origin on the presigned POST's answer, any other origin does not."""

from __future__ import annotations

import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from pixdex.local.stack import MotoServer, free_port

ALLOWED = "http://127.0.0.1:8000"


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    server = MotoServer(free_port(), Path(tmp_path_factory.mktemp("moto")) / "moto.log")
    server.start()
    try:
        yield boto3.client("s3", endpoint_url=server.url, region_name="us-east-1",
                           aws_access_key_id="local", aws_secret_access_key="local")
    finally:
        server.stop()


def _multipart(fields: dict[str, str], data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n'
                 "Content-Type: image/jpeg\r\n\r\n".encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def _post(url: str, body: bytes, ctype: str, origin: str) -> tuple[int, dict[str, str]]:
    req = urllib.request.Request(url, data=body, method="POST",  # noqa: S310  # loopback http
                                 headers={"content-type": ctype, "origin": origin})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}


@pytest.mark.parametrize(("origin", "allowed"), [(ALLOWED, True), ("https://elsewhere.example", False)])
def test_presigned_post_answer_carries_the_bucket_cors_rule(s3: Any, origin: str, allowed: bool) -> None:
    bucket = f"cors-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_cors(Bucket=bucket, CORSConfiguration={"CORSRules": [
        {"AllowedMethods": ["POST"], "AllowedOrigins": [ALLOWED], "AllowedHeaders": ["content-type"]}]})
    post = s3.generate_presigned_post(bucket, "up/a.jpg", ExpiresIn=60)
    body, ctype = _multipart(post["fields"], b"\xff\xd8 not really a jpeg")
    status, headers = _post(post["url"], body, ctype, origin)
    assert status == 204
    assert (headers.get("access-control-allow-origin") == origin) is allowed
    if not allowed:
        assert "access-control-allow-origin" not in headers
