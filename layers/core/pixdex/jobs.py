"""Bulk and heavy work on the GPU batch task (functions/heavy): the port and its AWS Batch adapter."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Protocol

from pixdex.errors import BackendUnavailableError

# One Batch job's command line must stay small; more keys than this go through a manifest in S3.
MAX_INLINE_KEYS = 50


class JobSubmitter(Protocol):
    def submit(self, *, bucket: str, keys: Sequence[str] = (), prefix: str | None = None,
               manifest: str | None = None, array_size: int = 1, name: str = "pixdex-heavy") -> str:
        """Queue a heavy job over some objects; returns the job id."""
        ...


def heavy_command(*, bucket: str, keys: Sequence[str] = (), prefix: str | None = None,
                  manifest: str | None = None) -> list[str]:
    """The container command of the heavy task (see pixdex.heavy) for a set of objects."""
    if len(keys) > MAX_INLINE_KEYS:
        raise ValueError(f"at most {MAX_INLINE_KEYS} keys inline; write a manifest for more")
    cmd = ["python", "-m", "pixdex.heavy", "--bucket", bucket]
    for key in keys:
        cmd += ["--key", key]
    if prefix is not None:
        cmd += ["--prefix", prefix]
    if manifest is not None:
        cmd += ["--manifest", manifest]
    return cmd


class BatchJobs:
    def __init__(self, client: Any, *, queue: str, definition: str) -> None:
        self._batch = client
        self.queue = queue
        self.definition = definition

    def submit(self, *, bucket: str, keys: Sequence[str] = (), prefix: str | None = None,
               manifest: str | None = None, array_size: int = 1, name: str = "pixdex-heavy") -> str:
        request: dict[str, Any] = {
            # Batch job names allow letters, digits, hyphens and underscores only.
            "jobName": re.sub(r"[^A-Za-z0-9_-]", "-", name)[:128],
            "jobQueue": self.queue,
            "jobDefinition": self.definition,
            "containerOverrides": {
                "command": heavy_command(bucket=bucket, keys=keys, prefix=prefix, manifest=manifest),
                # Array children learn their index from Batch, but not the array's size.
                "environment": [{"name": "PIXDEX_ARRAY_SIZE", "value": str(array_size)}],
            },
        }
        if array_size > 1:
            request["arrayProperties"] = {"size": array_size}
        try:
            return str(self._batch.submit_job(**request)["jobId"])
        except Exception as exc:  # botocore errors: the caller's retry decides
            raise BackendUnavailableError(f"could not submit the heavy job: {exc}") from exc
