from __future__ import annotations

import json
from pathlib import Path

import pytest

from pixdex.events import InvalidEventError, ObjectEvent, parse_message

EVENTS = Path(__file__).resolve().parents[2] / "events"


def test_sample_events_parse() -> None:
    for name, kind in (("compress.json", "created"), ("analyze.json", "created"), ("remove.json", "removed")):
        sqs_event = json.loads((EVENTS / name).read_text())
        [record] = sqs_event["Records"]
        [event] = parse_message(record["body"])
        assert event.kind == kind
        assert event.bucket.startswith("pixdex-local-originals")
        assert event.key == "demo/chelsea.png"


def test_moto_shape_with_missing_fields_and_raw_key() -> None:
    body = {"detail-type": "Object Created", "source": "aws.s3", "time": "2026-11-26T01:06:29Z",
            "detail": {"bucket": {"name": "b"}, "object": {"key": "a b/c+d.jpg", "eTag": "abc"}}}
    [ev] = parse_message(json.dumps(body))
    assert ev == ObjectEvent(kind="created", bucket="b", key="a b/c+d.jpg", etag="abc",
                             time="2026-11-26T01:06:29Z")
    # Raw key first, decoded form second: a real key may contain '+'.
    assert ev.key_candidates() == ["a b/c+d.jpg", "a b/c d.jpg"]


def test_classic_notification_keys_are_url_encoded() -> None:
    body = {"Records": [{"eventName": "ObjectCreated:Put", "eventTime": "2026-01-01T00:00:00Z",
                         "s3": {"bucket": {"name": "b"},
                                "object": {"key": "red+flower%2Fx.jpg", "size": 3, "eTag": "e", "sequencer": "0A"}}},
                        {"eventName": "ObjectRestore:Completed", "s3": {}}]}
    [ev] = parse_message(body)
    assert ev.kind == "created" and ev.size == 3 and ev.sequencer == "0A"
    assert ev.key_candidates()[-1] == "red flower/x.jpg"


def test_s3_test_event_is_nothing_to_do() -> None:
    assert parse_message(json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "b"})) == []


@pytest.mark.parametrize(
    "body",
    ["not json", "[]", json.dumps({"hello": 1}), json.dumps({"detail-type": "Object Restore Completed"}),
     json.dumps({"detail-type": "Object Created", "detail": {"bucket": {}}})],
)
def test_garbage_is_a_typed_error(body: str) -> None:
    with pytest.raises(InvalidEventError):
        parse_message(body)
