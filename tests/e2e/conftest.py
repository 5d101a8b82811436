"""Starts the real local stack (`pixdex up`) as a user would, on free loopback ports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest

from pixdex.document import document_id
from pixdex.local.processes import stop_process
from pixdex.local.stack import free_port

REPO = Path(__file__).resolve().parents[2]


@dataclass
class RunningStack:
    api: str
    aws_endpoint: str
    originals_bucket: str
    derivatives_bucket: str
    data_dir: Path
    proc: subprocess.Popen[str]
    output: list[str] = field(default_factory=list)
    drain: threading.Thread | None = None

    def client(self, service: str) -> Any:
        return boto3.client(service, endpoint_url=self.aws_endpoint, region_name="us-east-1",
                            aws_access_key_id="anything", aws_secret_access_key="anything")

    def get(self, path: str) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(self.api + path, timeout=30) as resp:  # noqa: S310  # loopback http
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def wait_for(self, predicate: Any, timeout: float = 90.0, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            if self.proc.poll() is not None:
                raise AssertionError(f"pixdex up exited with {self.proc.returncode} while waiting for {what}")
            time.sleep(0.25)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")

    def processed(self, doc_id: str) -> bool:
        """Both stages have recorded their state on the document."""
        status, doc = self.get(f"/images/{doc_id}")
        return status == 200 and bool(doc.get("compress_state")) and bool(doc.get("analyze_state"))

    def upload_and_wait(self, objects: dict[str, bytes], timeout: float = 90.0, where: str = "the index") -> None:
        """Uploads each object to the originals bucket and waits until both stages have processed it."""
        s3 = self.client("s3")
        for key, body in objects.items():
            s3.put_object(Bucket=self.originals_bucket, Key=key, Body=body)
        for key in objects:
            doc_id = document_id(self.originals_bucket, key)
            self.wait_for(lambda i=doc_id: self.processed(i), timeout=timeout, what=f"{key} indexed in {where}")


def start_stack(data_dir: Path, *extra: str, env_extra: dict[str, str] | None = None,
                startup_s: float = 120.0) -> RunningStack:
    api_port, aws_port = free_port(), free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pixdex.cli", "up", "--data", str(data_dir), "--api-port", str(api_port),
         "--aws-port", str(aws_port), "--max-receive-count", "2", *extra],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    lines: dict[str, str] = {}
    deadline = time.monotonic() + startup_s
    assert proc.stdout is not None
    while time.monotonic() < deadline and "API" not in lines:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"pixdex up exited early: {proc.wait()}")
        for prefix in ("AWS endpoint ", "originals bucket ", "derivatives bucket ", "API "):
            if line.startswith(prefix):
                lines[prefix.strip()] = line[len(prefix):].strip()
    assert "API" in lines, "pixdex up did not print its API line"
    running = RunningStack(api=lines["API"], aws_endpoint=lines["AWS endpoint"],
                           originals_bucket=lines["originals bucket"],
                           derivatives_bucket=lines["derivatives bucket"], data_dir=data_dir, proc=proc)
    # The stack logs every failed object to stdout: an undrained pipe fills (64 KB) and blocks its threads.
    running.output = []
    running.drain = threading.Thread(target=_drain, args=(proc, running.output), daemon=True)
    running.drain.start()
    return running


def _drain(proc: subprocess.Popen[str], into: list[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        into.append(line)


def stop_stack(stack: RunningStack) -> str:
    stop_process(stack.proc, ask=lambda: stack.proc.send_signal(signal.SIGINT), wait_s=30)
    if stack.drain is not None:
        stack.drain.join(timeout=10)
    return "".join(stack.output)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[RunningStack]:
    running = start_stack(tmp_path / "data")
    yield running
    stop_stack(running)
