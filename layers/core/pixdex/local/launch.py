"""``pixdex up`` in a child process, as a user starts it: free loopback ports, the addresses it prints,
its output drained (the stack logs every failed object; an unread pipe fills at 64 KB and blocks it), and
a clean stop. The load benchmark and the end-to-end tests both run the stack this way."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3

from pixdex.local.processes import stop_process
from pixdex.local.stack import LOCAL_CREDENTIALS, free_port

# What `pixdex up` prints once it is serving, in this order; "API" comes last.
ADDRESS_LINES = ("AWS endpoint ", "originals bucket ", "derivatives bucket ", "API ")


class StackStartError(RuntimeError):
    """``pixdex up`` exited or stayed silent before printing its API address."""


@dataclass
class UpProcess:
    api: str
    aws_endpoint: str
    originals_bucket: str
    derivatives_bucket: str
    data_dir: Path
    proc: subprocess.Popen[str]
    output: list[str] = field(default_factory=list)
    drain: threading.Thread | None = None

    def client(self, service: str) -> Any:
        factory: Any = boto3.client  # the stubs type only literal service names
        return factory(service, endpoint_url=self.aws_endpoint, region_name="us-east-1", **LOCAL_CREDENTIALS)

    def stop(self, timeout_s: float = 60.0) -> str:
        """SIGINT (the stack stops its pollers and syncs its mirror), then terminate, then kill; returns
        everything the stack printed."""
        stop_process(self.proc, ask=lambda: self.proc.send_signal(signal.SIGINT), wait_s=timeout_s)
        if self.drain is not None:
            self.drain.join(timeout=10)
        return "".join(self.output)


def launch(data_dir: Path, *extra: str, env: dict[str, str] | None = None, startup_s: float = 180.0,
           cwd: Path | None = None) -> UpProcess:
    """Starts ``pixdex up --data DATA_DIR`` with ``extra`` arguments and returns once it has printed its
    addresses (it prints the API's last, when the stack serves)."""
    api_port, aws_port = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pixdex.cli", "up", "--data", str(data_dir), "--api-port", str(api_port),
         "--aws-port", str(aws_port), *extra],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )
    found: dict[str, str] = {}
    output: list[str] = []
    deadline = time.monotonic() + startup_s
    assert proc.stdout is not None
    while time.monotonic() < deadline and "API" not in found:
        line = proc.stdout.readline()
        if not line:
            raise StackStartError(f"pixdex up exited with {proc.wait()}:\n{''.join(output[-30:])}")
        output.append(line)
        for prefix in ADDRESS_LINES:
            if line.startswith(prefix):
                found[prefix.strip()] = line[len(prefix):].strip()
    if "API" not in found:
        stop_process(proc)
        raise StackStartError(f"pixdex up did not print its API address within {startup_s:.0f} s")
    up = UpProcess(api=found["API"], aws_endpoint=found["AWS endpoint"], originals_bucket=found["originals bucket"],
                   derivatives_bucket=found["derivatives bucket"], data_dir=data_dir, proc=proc, output=output)

    def drain() -> None:
        for line in proc.stdout or []:
            output.append(line)

    up.drain = threading.Thread(target=drain, daemon=True)
    up.drain.start()
    return up
