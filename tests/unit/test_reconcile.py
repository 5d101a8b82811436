"""What start-up reconciliation re-queues for a stage, from the document's state and the object's ETag."""

from __future__ import annotations

import json

from pixdex.events import parse_message
from pixdex.local.reconcile import needs, object_event


def test_needs() -> None:
    assert needs(None, "e1")                                              # never processed
    assert needs({"etag": "e0", "error": None}, "e1")                     # an older version was
    assert not needs({"etag": "e1", "error": None}, "e1")                 # done
    assert not needs({"etag": "e1", "error": {"code": "bad_image"}}, "e1")  # bad input is final
    assert needs({"etag": "e1", "error": {"code": "backend_unavailable"}}, "e1")
    assert not needs({"etag": "e1", "error": None, "pending": "gpu"}, "e1")  # the GPU task reports back


def test_events_parse_like_eventbridge_ones() -> None:
    created = parse_message(json.dumps(
        object_event("Object Created", "b", "a b+c.jpg", etag="e1", size=3, time="2024-01-02T03:04:05Z")))
    assert [(e.kind, e.bucket, e.key, e.etag, e.size, e.time) for e in created] == [
        ("created", "b", "a b+c.jpg", "e1", 3, "2024-01-02T03:04:05Z")]
    (removed,) = parse_message(json.dumps(object_event("Object Deleted", "b", "k")))
    assert (removed.kind, removed.key) == ("removed", "k")


def test_events_carry_the_stacks_region() -> None:
    event = object_event("Object Created", "b", "k", region="eu-west-1")
    assert event["region"] == "eu-west-1" and event["resources"] == ["arn:aws:s3:::b"]
    assert object_event("Object Deleted", "b", "k")["region"] == "us-east-1"  # the local stack's default
