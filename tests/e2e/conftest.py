"""Starts the real local stack (`pixdex up`) as a user would, on free loopback ports."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pixdex.document import document_id
from pixdex.local.launch import UpProcess, launch

REPO = Path(__file__).resolve().parents[2]


@dataclass
class RunningStack(UpProcess):
    """``pixdex up`` as the tests drive it: HTTP calls to its API and waits on what it processed."""

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
    up = launch(data_dir, "--max-receive-count", "2", *extra, env=env_extra, startup_s=startup_s, cwd=REPO)
    return RunningStack(**vars(up))


def stop_stack(stack: RunningStack) -> str:
    return stack.stop(timeout_s=30)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[RunningStack]:
    running = start_stack(tmp_path / "data")
    yield running
    stop_stack(running)
