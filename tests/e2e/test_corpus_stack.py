"""The bad-input corpus through the real local stack (`pixdex up`): every kind gets its typed reason on its
document and its messages in the dead-letter queues, or is processed with the expected properties; the good
images of the same upload complete; a message that is not an event is dead-lettered as it is."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pixdex.document import document_id
from tests.corpus import generate
from tests.corpus.outcomes import mismatches
from tests.e2e.conftest import RunningStack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _settled(stack: RunningStack, key: str) -> dict[str, Any] | None:
    status, doc = stack.get(f"/images/{document_id(stack.originals_bucket, key)}")
    if status != 200:
        return None
    # Done when both stages have run: processed, or failed on the last delivery (the stack runs with
    # --max-receive-count 2, so a bad image's state is final once both stages recorded an error).
    return doc if doc.get("compress_state") and doc.get("analyze_state") else None  # type: ignore[no-any-return]


def dlq_bodies(stack: RunningStack) -> dict[str, list[str]]:
    sqs = stack.client("sqs")
    out: dict[str, list[str]] = {}
    for url in sqs.list_queues()["QueueUrls"]:
        if not url.endswith("-dlq"):
            continue
        bodies: list[str] = []
        while True:
            got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=60).get("Messages", [])
            if not got:
                break
            bodies.extend(m["Body"] for m in got)
        out[url.rsplit("/", 1)[-1]] = bodies
    return out


def test_corpus_through_the_stack(stack: RunningStack, tmp_path: Path) -> None:
    manifest = generate.write(tmp_path / "corpus")
    s3, sqs = stack.client("s3"), stack.client("sqs")
    for entry in manifest.values():
        body = (tmp_path / "corpus").joinpath(*entry["key"].split("/")).read_bytes()
        s3.put_object(Bucket=stack.originals_bucket, Key=entry["key"], Body=body)
    compress_url = next(u for u in sqs.list_queues()["QueueUrls"] if u.endswith("-compress"))
    sqs.send_message(QueueUrl=compress_url, MessageBody="this is not an event {")

    docs: dict[str, dict[str, Any]] = {}

    def all_settled() -> bool:
        for entry in manifest.values():
            if entry["key"] not in docs and (doc := _settled(stack, entry["key"])) is not None:
                docs[entry["key"]] = doc
        return len(docs) == len(manifest)

    stack.wait_for(all_settled, timeout=420, what="every corpus object processed or failed")

    def derivative(key: str) -> bytes:
        return s3.get_object(Bucket=stack.derivatives_bucket, Key=key)["Body"].read()  # type: ignore[no-any-return]

    assert mismatches(manifest, docs.get, derivative) == []

    failing = sorted(e["key"] for e in manifest.values() if e["expect"] == "error")
    # Dead letters arrive just after the last failed delivery is recorded.
    def dead(stage: str) -> list[str]:
        got = [b for q, bodies in dlq_bodies(stack).items() if q.endswith(f"-{stage}-dlq") for b in bodies]
        dead_letters[stage].extend(got)
        return dead_letters[stage]

    dead_letters: dict[str, list[str]] = {"compress": [], "analyze": [], "remove": []}
    for stage, extra in (("compress", 1), ("analyze", 0)):
        stack.wait_for(lambda s=stage, n=extra: len(dead(s)) >= len(failing) + n,  # type: ignore[misc]
                       timeout=60, what=f"{stage} dead letters")
        keys = sorted(json.loads(b)["detail"]["object"]["key"] for b in dead_letters[stage] if b.startswith("{"))
        assert keys == failing, stage
    assert [b for b in dead_letters["compress"] if not b.startswith("{")] == ["this is not an event {"]
    assert dead("remove") == []

    # Nothing else was lost: every object has exactly one document, and the good ones are searchable.
    status, everything = stack.get("/search?size=100")
    assert status == 200 and everything["total"] == len(manifest)
    assert len({h["id"] for h in everything["hits"]}) == len(manifest)
    print(f"\ncorpus through the stack: {len(manifest)} objects in, {len(docs)} documents out, "
          f"{len(failing)} typed failures, dead letters {({k: len(v) for k, v in dead_letters.items()})}, "
          f"duplicates {everything['total'] - len({h['id'] for h in everything['hits']})}")
