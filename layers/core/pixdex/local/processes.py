"""Stopping a child process for certain: ask, wait, terminate, wait, kill."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Any


def stop_process(proc: subprocess.Popen[Any], *, ask: Callable[[], None] | None = None, wait_s: float = 10.0,
                 terminate_s: float = 10.0) -> int:
    """Stop ``proc`` and return its exit status. ``ask`` asks it to stop on its own (SIGINT, a closed
    lifeline) and it gets ``wait_s`` to do so (without ``ask``: SIGTERM first); then SIGTERM and
    ``terminate_s``; then SIGKILL. A process that has already exited is only reaped."""
    if proc.poll() is not None:
        return proc.returncode
    steps: list[tuple[Callable[[], None], float]] = [(ask, wait_s)] if ask is not None else []
    steps.append((proc.terminate, terminate_s if ask is not None else wait_s))
    for signal_it, seconds in steps:
        signal_it()
        try:
            return proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            continue
    proc.kill()
    return proc.wait()
