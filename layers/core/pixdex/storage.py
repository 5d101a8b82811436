"""Object storage on S3 through boto3. Honours AWS_ENDPOINT_URL (moto locally, S3 in AWS)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote, unquote

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from pixdex.errors import BackendUnavailableError, NotFoundError
from pixdex.presign import Credentials, Presigner

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from pixdex.settings import Settings

_MISSING_CODES = frozenset({"404", "NoSuchKey", "NotFound", "NoSuchBucket"})


@dataclass(frozen=True)
class ObjectHead:
    bucket: str
    key: str
    size: int
    etag: str
    version_id: str | None
    content_type: str | None
    last_modified: str | None


def s3_client(settings: Settings, session: boto3.session.Session | None = None) -> S3Client:
    """One client per container: created once by the runtime and reused across invocations."""
    return (session or boto3.session.Session()).client(
        "s3",
        endpoint_url=settings.aws_endpoint_url,
        region_name=settings.aws_region,
        config=Config(retries={"mode": "standard", "max_attempts": 5}, signature_version="s3v4"),
    )


def s3_store(settings: Settings) -> S3Store:
    """An S3Store whose presigned URLs are signed by pixdex.presign from the same credential chain."""
    session = boto3.session.Session()

    def credentials() -> Credentials:
        found = session.get_credentials()
        if found is None:
            raise BackendUnavailableError("no AWS credentials found to sign URLs with")
        frozen = found.get_frozen_credentials()  # refreshes expiring role credentials as needed
        if not frozen.access_key or not frozen.secret_key:
            raise BackendUnavailableError("incomplete AWS credentials: cannot sign URLs")
        return Credentials(frozen.access_key, frozen.secret_key, frozen.token)

    presigner = Presigner(region=settings.aws_region, endpoint_url=settings.aws_endpoint_url, credentials=credentials)
    return S3Store(s3_client(settings, session), presigner=presigner)


class ObjectStore(Protocol):
    """The object-storage port. S3Store is the real adapter; FolderStore keeps objects in a local folder
    for in-process runs (`pixdex ingest --in-process`) with the same layout the local stack persists."""

    def head(self, bucket: str, key: str) -> ObjectHead | None: ...

    def get(self, bucket: str, key: str, *, max_bytes: int | None = None) -> tuple[bytes, ObjectHead]: ...

    def put(self, bucket: str, key: str, data: bytes, *, content_type: str,
            metadata: dict[str, str] | None = None, cache_control: str | None = None) -> str: ...

    def delete(self, bucket: str, key: str) -> None: ...

    def delete_prefix(self, bucket: str, prefix: str) -> int: ...

    def list_keys(self, bucket: str, prefix: str = "") -> list[str]: ...

    def presigned_get(self, bucket: str, key: str, ttl_seconds: int) -> str: ...

    def presigned_post(self, bucket: str, key: str, *, content_type: str, max_bytes: int,
                       ttl_seconds: int) -> dict[str, Any]: ...


class S3Store:
    def __init__(self, client: S3Client, *, presigner: Presigner | None = None) -> None:
        self._s3 = client
        self._presigner = presigner

    def head(self, bucket: str, key: str) -> ObjectHead | None:
        """Metadata of an object, or None if it does not exist (deleted since the event was sent)."""
        try:
            r = self._s3.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if _is_missing(exc):
                return None
            raise _unavailable("head", bucket, key, exc) from exc
        except BotoCoreError as exc:
            raise _unavailable("head", bucket, key, exc) from exc
        version = r.get("VersionId")
        return ObjectHead(
            bucket=bucket,
            key=key,
            size=int(r.get("ContentLength", 0)),
            etag=r.get("ETag", "").strip('"'),
            version_id=None if version in (None, "null") else version,
            content_type=r.get("ContentType"),
            last_modified=r["LastModified"].isoformat() if "LastModified" in r else None,
        )

    def get(self, bucket: str, key: str, *, max_bytes: int | None = None) -> tuple[bytes, ObjectHead]:
        """Read an object. With max_bytes, read at most one byte more so oversize input is detected
        without pulling a huge object into memory."""
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if max_bytes is not None:
            kwargs["Range"] = f"bytes=0-{max_bytes}"
        try:
            r = self._s3.get_object(**kwargs)
            data = r["Body"].read()
        except ClientError as exc:
            if _is_missing(exc):
                raise NotFoundError(f"s3://{bucket}/{key} does not exist", bucket=bucket, key=key) from exc
            if exc.response.get("Error", {}).get("Code") == "InvalidRange":
                # An empty object cannot satisfy any range; it is a valid (empty) read.
                return b"", self._require_head(bucket, key)
            raise _unavailable("get", bucket, key, exc) from exc
        except BotoCoreError as exc:
            raise _unavailable("get", bucket, key, exc) from exc
        version = r.get("VersionId")
        size = int(r.get("ContentRange", "/").rsplit("/", 1)[-1] or 0) if "ContentRange" in r else len(data)
        head = ObjectHead(
            bucket=bucket,
            key=key,
            size=size,
            etag=r.get("ETag", "").strip('"'),
            version_id=None if version in (None, "null") else version,
            content_type=r.get("ContentType"),
            last_modified=r["LastModified"].isoformat() if "LastModified" in r else None,
        )
        return data, head

    def put(self, bucket: str, key: str, data: bytes, *, content_type: str,
            metadata: dict[str, str] | None = None, cache_control: str | None = None) -> str:
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key, "Body": data, "ContentType": content_type}
        if metadata:
            kwargs["Metadata"] = metadata
        if cache_control:
            kwargs["CacheControl"] = cache_control
        try:
            r = self._s3.put_object(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise _unavailable("put", bucket, key, exc) from exc
        return r.get("ETag", "").strip('"')

    def delete(self, bucket: str, key: str) -> None:
        try:
            self._s3.delete_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if not _is_missing(exc):
                raise _unavailable("delete", bucket, key, exc) from exc
        except BotoCoreError as exc:
            raise _unavailable("delete", bucket, key, exc) from exc

    def delete_prefix(self, bucket: str, prefix: str) -> int:
        """Delete every object under a prefix; returns how many were deleted."""
        deleted = 0
        try:
            paginator = self._s3.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
                keys: list[Any] = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if keys:
                    self._s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
                    deleted += len(keys)
        except (ClientError, BotoCoreError) as exc:
            raise _unavailable("delete_prefix", bucket, prefix, exc) from exc
        return deleted

    def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        keys: list[str] = []
        try:
            for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                keys.extend(o["Key"] for o in page.get("Contents", []))
        except (ClientError, BotoCoreError) as exc:
            raise _unavailable("list", bucket, prefix, exc) from exc
        return keys

    def presigned_get(self, bucket: str, key: str, ttl_seconds: int) -> str:
        if self._presigner is not None:
            return self._presigner.url(bucket, key, ttl_seconds)
        return self._s3.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=ttl_seconds
        )

    def presigned_post(self, bucket: str, key: str, *, content_type: str, max_bytes: int,
                       ttl_seconds: int) -> dict[str, Any]:
        """A browser-style POST policy: S3 itself enforces the key, content type and size range, so large
        images go straight to the bucket and never through API Gateway."""
        post = self._s3.generate_presigned_post(
            Bucket=bucket,
            Key=key,
            Fields={"Content-Type": content_type},
            Conditions=[{"Content-Type": content_type}, ["content-length-range", 1, max_bytes]],
            ExpiresIn=ttl_seconds,
        )
        return {"url": post["url"], "fields": post["fields"]}

    def _require_head(self, bucket: str, key: str) -> ObjectHead:
        head = self.head(bucket, key)
        if head is None:
            raise NotFoundError(f"s3://{bucket}/{key} does not exist", bucket=bucket, key=key)
        return head


class FolderStore:
    """Objects as files: <root>/<bucket>/<url-quoted key>, content type beside it in <file>.meta.json.

    S3 keys reach 1024 bytes of UTF-8 and quoting triples non-ASCII ones, but a file name holds 255 bytes:
    a key whose quoted name is longer is stored under ``%%<sha256 of the key>`` with the key in its meta file."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, bucket: str, key: str) -> Path:
        name = quote(key, safe="")
        if len(name) > _MAX_QUOTED_NAME:
            name = _HASHED_PREFIX + hashlib.sha256(key.encode()).hexdigest()
        return self.root / bucket / name

    def head(self, bucket: str, key: str) -> ObjectHead | None:
        path = self._path(bucket, key)
        if not path.is_file():
            return None
        data = path.read_bytes()
        meta = _read_meta(path)
        return ObjectHead(
            bucket=bucket, key=key, size=len(data),
            etag=hashlib.md5(data, usedforsecurity=False).hexdigest(),
            version_id=None, content_type=meta.get("content_type"),
            last_modified=datetime.fromtimestamp(path.stat().st_mtime, UTC).isoformat(timespec="seconds"),
        )

    def get(self, bucket: str, key: str, *, max_bytes: int | None = None) -> tuple[bytes, ObjectHead]:
        head = self.head(bucket, key)
        if head is None:
            raise NotFoundError(f"{bucket}/{key} does not exist", bucket=bucket, key=key)
        data = self._path(bucket, key).read_bytes()
        return (data if max_bytes is None else data[: max_bytes + 1]), head

    def put(self, bucket: str, key: str, data: bytes, *, content_type: str,
            metadata: dict[str, str] | None = None, cache_control: str | None = None) -> str:
        path = self._path(bucket, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
        meta: dict[str, str] = {"content_type": content_type}
        if path.name.startswith(_HASHED_PREFIX):
            meta["key"] = key
        path.with_name(path.name + ".meta.json").write_text(json.dumps(meta))
        return hashlib.md5(data, usedforsecurity=False).hexdigest()

    def delete(self, bucket: str, key: str) -> None:
        path = self._path(bucket, key)
        path.unlink(missing_ok=True)
        path.with_name(path.name + ".meta.json").unlink(missing_ok=True)

    def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        folder = self.root / bucket
        if not folder.is_dir():
            return []
        names = (self._key_of(f) for f in folder.iterdir() if not f.name.endswith((".meta.json", ".tmp")))
        return sorted(k for k in names if k is not None and k.startswith(prefix))

    @staticmethod
    def _key_of(path: Path) -> str | None:
        if not path.name.startswith(_HASHED_PREFIX):
            return unquote(path.name)
        key = _read_meta(path).get("key")
        return key if isinstance(key, str) else None

    def delete_prefix(self, bucket: str, prefix: str) -> int:
        doomed = self.list_keys(bucket, prefix)
        for key in doomed:
            self.delete(bucket, key)
        return len(doomed)

    def presigned_get(self, bucket: str, key: str, ttl_seconds: int) -> str:
        return self._path(bucket, key).resolve().as_uri()

    def presigned_post(self, bucket: str, key: str, *, content_type: str, max_bytes: int,
                       ttl_seconds: int) -> dict[str, Any]:
        raise NotImplementedError("a folder store takes files directly: use `pixdex ingest --in-process`")


# quote() writes "%" only before two hex digits, so a name starting "%%" can never be a quoted key.
_HASHED_PREFIX = "%%"
_MAX_QUOTED_NAME = 200


def _read_meta(path: Path) -> dict[str, Any]:
    meta = path.with_name(path.name + ".meta.json")
    try:
        loaded = json.loads(meta.read_text())
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _is_missing(exc: ClientError) -> bool:
    err = exc.response.get("Error", {})
    return str(err.get("Code")) in _MISSING_CODES or exc.response.get("ResponseMetadata", {}).get(
        "HTTPStatusCode"
    ) == 404


def _unavailable(op: str, bucket: str, key: str, exc: Exception) -> BackendUnavailableError:
    return BackendUnavailableError(f"S3 {op} s3://{bucket}/{key} failed: {exc}", bucket=bucket, key=key)
