"""S3 object events as they arrive in SQS: EventBridge envelopes (the design's path) and, leniently, classic
S3 notifications. Real and emulated data differ (moto's TestEvent, URL-encoded keys, missing fields), so the
parser accepts absences and normalises; what it cannot read at all is a typed error and fails the item."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote_plus

from pixdex.errors import PixdexError

EventKind = Literal["created", "removed"]

_CREATED_TYPES = frozenset({"Object Created"})
_REMOVED_TYPES = frozenset({"Object Deleted"})


class InvalidEventError(PixdexError):
    """A message that is not an S3 object event pixdex understands."""

    code = "invalid_event"
    http_status = 400


@dataclass(frozen=True)
class ObjectEvent:
    kind: EventKind
    bucket: str
    key: str  # as received; may be URL-encoded (classic S3 notifications always are)
    size: int | None = None
    etag: str | None = None
    version_id: str | None = None
    sequencer: str | None = None
    time: str | None = None

    def key_candidates(self) -> list[str]:
        """Keys to try, most likely first. Classic notifications URL-encode keys ('red+flower.jpg');
        EventBridge and moto send them raw; a raw key may itself contain '+' or '%', so both are tried."""
        decoded = unquote_plus(self.key)
        return [self.key] if decoded == self.key else [self.key, decoded]


def parse_message(body: str | dict[str, Any]) -> list[ObjectEvent]:
    """Events in one SQS message body. Empty for S3 test events (nothing to do)."""
    if isinstance(body, str):
        try:
            payload = json.loads(body)
        except json.JSONDecodeError as exc:
            raise InvalidEventError(f"message body is not JSON: {exc.msg}") from None
    else:
        payload = body
    if not isinstance(payload, dict):
        raise InvalidEventError("message body is not a JSON object")
    if payload.get("Event") == "s3:TestEvent":
        return []
    if "detail-type" in payload:
        return [_from_eventbridge(payload)]
    if isinstance(payload.get("Records"), list):
        return [ev for rec in payload["Records"] if (ev := _from_record(rec)) is not None]
    raise InvalidEventError("message is neither an EventBridge S3 event nor an S3 notification")


def _from_eventbridge(payload: dict[str, Any]) -> ObjectEvent:
    detail_type = payload.get("detail-type")
    if detail_type in _CREATED_TYPES:
        kind: EventKind = "created"
    elif detail_type in _REMOVED_TYPES:
        kind = "removed"
    else:
        raise InvalidEventError(f"unsupported event type {detail_type!r}")
    detail = payload.get("detail") or {}
    bucket = (detail.get("bucket") or {}).get("name")
    obj = detail.get("object") or {}
    key = obj.get("key")
    if not bucket or not key:
        raise InvalidEventError("event has no bucket name or object key")
    return ObjectEvent(
        kind=kind,
        bucket=bucket,
        key=key,
        size=_int_or_none(obj.get("size")),
        etag=(obj.get("etag") or obj.get("eTag") or None),
        version_id=_version(obj.get("version-id")),
        sequencer=obj.get("sequencer"),
        time=payload.get("time"),
    )


def _from_record(rec: Any) -> ObjectEvent | None:
    if not isinstance(rec, dict):
        raise InvalidEventError("notification record is not an object")
    name = str(rec.get("eventName", ""))
    if name.startswith("ObjectCreated:"):
        kind: EventKind = "created"
    elif name.startswith("ObjectRemoved:"):
        kind = "removed"
    else:
        return None  # other S3 events (restore, tagging, ...) carry nothing for pixdex
    s3 = rec.get("s3") or {}
    bucket = (s3.get("bucket") or {}).get("name")
    obj = s3.get("object") or {}
    key = obj.get("key")
    if not bucket or not key:
        raise InvalidEventError("notification record has no bucket name or object key")
    return ObjectEvent(
        kind=kind,
        bucket=bucket,
        key=key,
        size=_int_or_none(obj.get("size")),
        etag=obj.get("eTag") or None,
        version_id=_version(obj.get("versionId")),
        sequencer=obj.get("sequencer"),
        time=rec.get("eventTime"),
    )


def _int_or_none(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _version(v: Any) -> str | None:
    return None if v in (None, "", "null") else str(v)
