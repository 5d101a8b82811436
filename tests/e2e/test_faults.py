"""Faults on the real local stack. Each test injects a real fault (a held index lock, a deleted object,
duplicated and reordered events, a poller process killed with SIGKILL, two pollers, a restart with messages
queued, a full filesystem) and prints its figures: messages in, documents out, dead letters, duplicates."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pixdex.document import document_id
from pixdex.local.processes import stop_process
from pixdex.local.reconcile import object_event
from tests import imagegen
from tests.e2e.conftest import REPO, RunningStack, start_stack, stop_stack
from tests.e2e.faults import IndexLock, figures, queue_url, record, settled

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _put_many(stack: RunningStack, prefix: str, n: int, w: int = 640, h: int = 480, seed: int = 0) -> list[str]:
    s3 = stack.client("s3")
    keys = [f"{prefix}/{i}.jpg" for i in range(n)]
    for i, key in enumerate(keys):
        s3.put_object(Bucket=stack.originals_bucket, Key=key, Body=imagegen.jpeg_bytes(w, h, seed=seed + i))
    return keys


def _all_processed(stack: RunningStack, keys: list[str]) -> bool:
    docs = [settled(stack, k) for k in keys]
    return all(d is not None and d["compress_state"]["error"] is None and d["analyze_state"]["error"] is None
               for d in docs)


def _no_dead_letters(fig_dlq: dict[str, list[str]]) -> bool:
    return all(not bodies for bodies in fig_dlq.values())


def test_index_unavailable_during_ingest(stack: RunningStack) -> None:
    """The index's write lock is held for longer than the stack's deliveries take (it runs with
    --max-receive-count 2; each delivery waits the 5 s busy timeout, then comes back after 1-2 s): the
    message is requeued without spending deliveries, and lands after recovery instead of in the DLQ."""
    keys: list[str] = []
    with IndexLock(stack.data_dir / "index.db"):
        keys = _put_many(stack, "outage", 1)
        time.sleep(25)
        held = [settled(stack, k) for k in keys]
    assert held == [None]  # nothing was written while the index was unavailable
    stack.wait_for(lambda: _all_processed(stack, keys), timeout=120, what="indexed after recovery")
    fig = figures(stack, "index unavailable 25 s", messages_in=2 * len(keys), keys=keys)
    record(fig)
    assert fig.documents_out == 1 and fig.duplicates == 0 and _no_dead_letters(fig.dead_letters)


def test_deleted_duplicated_and_reordered_events(stack: RunningStack) -> None:
    s3, sqs = stack.client("s3"), stack.client("sqs")
    b = stack.originals_bucket
    # Deleted before processing: the event names an object that is gone by the time a function runs.
    gone = "events/deleted-before.jpg"
    # create v1 / delete / create v2 on one key, and create / delete on another, each also duplicated and
    # replayed out of order, straight into the function queues (as a redelivering EventBridge would).
    kept, dropped = "events/kept.jpg", "events/dropped.jpg"
    v1, v2 = imagegen.jpeg_bytes(300, 200, seed=31), imagegen.jpeg_bytes(500, 400, seed=32)
    e1 = s3.put_object(Bucket=b, Key=kept, Body=v1)["ETag"].strip('"')
    s3.delete_object(Bucket=b, Key=kept)
    e2 = s3.put_object(Bucket=b, Key=kept, Body=v2)["ETag"].strip('"')
    d1 = s3.put_object(Bucket=b, Key=dropped, Body=v1)["ETag"].strip('"')
    s3.delete_object(Bucket=b, Key=dropped)
    injected = [
        object_event("Object Created", b, kept, etag=e1), object_event("Object Created", b, kept, etag=e1),
        object_event("Object Deleted", b, kept), object_event("Object Deleted", b, kept),
        object_event("Object Created", b, kept, etag=e2), object_event("Object Created", b, kept, etag=e2),
        object_event("Object Created", b, dropped, etag=d1), object_event("Object Deleted", b, dropped),
        object_event("Object Created", b, dropped, etag=d1),
        object_event("Object Created", b, gone, etag="0" * 32), object_event("Object Deleted", b, gone),
    ]
    random.Random(7).shuffle(injected)
    urls = {s: queue_url(stack, f"-{s}") for s in ("compress", "analyze", "remove")}
    for event in injected:
        stages = ["remove"] if event["detail-type"] == "Object Deleted" else ["compress", "analyze"]
        for s in stages:
            sqs.send_message(QueueUrl=urls[s], MessageBody=json.dumps(event))

    def converged() -> bool:
        doc = settled(stack, kept)
        depths = [int(sqs.get_queue_attributes(QueueUrl=u, AttributeNames=["All"])["Attributes"][a])
                  for u in urls.values()
                  for a in ("ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible")]
        return doc is not None and doc["compress_state"]["etag"] == e2 and not any(depths)

    stack.wait_for(converged, timeout=120, what="events drained and the newest version indexed")
    doc = settled(stack, kept)
    assert doc is not None
    assert (doc["width"], doc["analyze_state"]["etag"], doc["compress_state"]["error"]) == (500, e2, None)
    assert doc["derivatives"]["preview"]["width"] == 500
    for key in (dropped, gone):
        assert stack.get(f"/images/{document_id(b, key)}")[0] == 404, key
        prefix = f"{document_id(b, key)}/"
        assert s3.list_objects_v2(Bucket=stack.derivatives_bucket, Prefix=prefix).get("KeyCount", 0) == 0
    fig = figures(stack, "deleted/duplicated/reordered events", messages_in=5 + len(injected), keys=[kept])
    record(fig)
    assert fig.documents_out == 1 and fig.duplicates == 0 and _no_dead_letters(fig.dead_letters)


def _worker(stack: RunningStack, function: str, visibility: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pixdex.local.worker", "--data", str(stack.data_dir), "--function", function,
         "--visibility-timeout", str(visibility)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _lines(proc: subprocess.Popen[str], into: list[str]) -> threading.Thread:
    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            into.append(line)

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    return t


@pytest.fixture
def workers() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        stop_process(p, wait_s=20)


def test_poller_killed_mid_batch_and_two_pollers(stack: RunningStack, workers: list[subprocess.Popen[str]]) -> None:
    """A second compress poller (its own process) takes batches beside the stack's; it is SIGKILLed while it
    holds a batch, then restarted. Its messages come back after its visibility timeout; every image is
    indexed once, with nothing dead-lettered."""
    first_out: list[str] = []
    first = _worker(stack, "compress", visibility=10)
    workers.append(first)
    _lines(first, first_out)
    deadline = time.monotonic() + 60
    while not any("polling" in line for line in first_out) and time.monotonic() < deadline:
        time.sleep(0.1)
    keys = [f"kill/{i}.jpg" for i in range(10)]
    # Uploaded from a thread, so the worker (which competes with the stack's own poller) can be caught
    # holding a batch whichever message it gets.
    uploader = threading.Thread(target=_put_many, args=(stack, "kill", 10, 1600, 1200, 40), daemon=True)
    uploader.start()

    def holding() -> int:
        """Messages the worker has received and not yet finished (0 between batches)."""
        lines = list(first_out)
        got = [int(x.split(" received ")[1].split()[0]) for x in lines if "compress received" in x]
        done = sum("compress finished" in x for x in lines)
        return sum(got[done:])

    deadline = time.monotonic() + 180
    while holding() == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    in_flight = holding()
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    assert in_flight > 0, "".join(first_out)[-2000:]
    uploader.join(timeout=120)
    finished_before_kill = sum("compress finished" in line for line in first_out)

    # Restarted, and now two pollers per queue for compress and analyze (this process and the stack's own).
    second_out: list[str] = []
    for function in ("compress", "analyze"):
        w = _worker(stack, function, visibility=30)
        workers.append(w)
        _lines(w, second_out)
    stack.wait_for(lambda: _all_processed(stack, keys), timeout=240, what="all indexed after the kill")
    handled = [json.loads(line) for line in second_out if line.startswith("{") and '"object handled"' in line]
    processed_twice = [k for k in keys for stage in ("compress", "analyze")
                       if sum(1 for h in handled if h.get("key") == k and h.get("stage") == stage
                              and h.get("outcome") == "processed") > 1]
    fig = figures(stack, "poller SIGKILLed mid-batch, then two pollers", messages_in=2 * len(keys), keys=keys)
    fig.extra.update({"messages held by the killed poller": in_flight,
                      "its batches finished before the kill": finished_before_kill,
                      "outcomes logged by the restarted pollers": len(handled)})
    fig.duplicates += len(processed_twice)
    record(fig)
    assert fig.documents_out == len(keys) and fig.duplicates == 0 and _no_dead_letters(fig.dead_letters)


def test_restart_with_messages_queued(tmp_path: Path) -> None:
    """`pixdex up` stopped while messages wait: on the next start, reconciliation re-derives them."""
    data = tmp_path / "data"
    first = start_stack(data)
    try:
        # The index is held locked, so nothing can be finished before the stop: all the work is in the queues.
        with IndexLock(data / "index.db"):
            keys = _put_many(first, "queued", 8, w=1200, h=900, seed=60)
            time.sleep(2)
            done_before_stop = sum(settled(first, k) is not None for k in keys)
            stop_stack(first)
    finally:
        if first.proc.poll() is None:
            stop_stack(first)
    second = start_stack(data)
    # Printed right after the API line.
    reconciled = second.wait_for(lambda: next((x for x in second.output if x.startswith("reconciled")), None),
                                 timeout=30, what="the reconcile line")
    try:
        second.wait_for(lambda: _all_processed(second, keys), timeout=240, what="queued work done after restart")
        fig = figures(second, "stopped with 8 uploads queued", messages_in=2 * len(keys), keys=keys)
        fig.extra["settled before the stop"] = done_before_stop
        fig.extra["on restart"] = reconciled.strip()
        record(fig)
        assert fig.documents_out == len(keys) and fig.duplicates == 0 and _no_dead_letters(fig.dead_letters)
    finally:
        stop_stack(second)
    # The second start found the 8 originals and re-queued all of their work.
    assert reconciled.strip() == "reconciled 8 originals with 0 documents: re-queued 8 compress, 8 analyze"


def test_disk_full_for_the_embedded_index(tmp_path: Path) -> None:
    """The index lives on a 16 MB tmpfs that is then filled: writes fail with SQLITE_FULL, messages are
    requeued; once space is freed every image is indexed."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], capture_output=True,
                             text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here ({mounted.stderr.strip()}); "
                    "tests/integration/test_index_disk_full.py covers the index side with max_page_count")
    stack = None
    try:
        stack = start_stack(tmp_path / "data", "--index-url", f"sqlite:///{mnt}/index.db")
        filler = mnt / "filler"
        with filler.open("wb") as f:
            try:
                while True:
                    f.write(b"\0" * (1 << 16))
                    f.flush()
            except OSError:
                pass
        keys = _put_many(stack, "full", 4, seed=80)
        time.sleep(10)
        assert [settled(stack, k) for k in keys] == [None] * 4
        filler.unlink()
        stack.wait_for(lambda: _all_processed(stack, keys), timeout=120, what="indexed after space freed")
        fig = figures(stack, "disk full (16 MB tmpfs filled) for 10 s", messages_in=2 * len(keys), keys=keys)
        record(fig)
        assert fig.documents_out == len(keys) and fig.duplicates == 0 and _no_dead_letters(fig.dead_letters)
    finally:
        if stack is not None:
            stop_stack(stack)
        subprocess.run(["umount", "-l", str(mnt)], check=False)
