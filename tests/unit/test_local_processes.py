"""stop_process: asked processes get their time, stubborn ones are terminated, then killed."""

from __future__ import annotations

import signal
import subprocess
import sys

from pixdex.local.processes import stop_process

SLEEPER = "import time; print('ready', flush=True); time.sleep(60)"
# Ignores SIGINT and SIGTERM: only SIGKILL ends it.
STUBBORN = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "signal.signal(signal.SIGINT, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)")
# Exits cleanly when its stdin closes (a lifeline, as the OpenSearch node's launcher has).
LIFELINE = "import sys; print('ready', flush=True); sys.stdin.read(); sys.exit(3)"


def _start(code: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"  # its signal handlers are set
    return proc


def test_a_process_asked_to_stop_exits_on_its_own() -> None:
    proc = _start(LIFELINE)
    assert proc.stdin is not None
    assert stop_process(proc, ask=proc.stdin.close, wait_s=10) == 3


def test_without_asking_it_is_terminated() -> None:
    assert stop_process(_start(SLEEPER)) == -signal.SIGTERM


def test_a_process_that_ignores_signals_is_killed() -> None:
    proc = _start(STUBBORN)
    status = stop_process(proc, ask=lambda: proc.send_signal(signal.SIGINT), wait_s=0.2, terminate_s=0.2)
    assert status == -signal.SIGKILL


def test_an_exited_process_is_only_reaped() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(5)"])
    proc.wait()

    def ask() -> None:
        raise AssertionError("asked a process that has exited")

    assert stop_process(proc, ask=ask) == 5
