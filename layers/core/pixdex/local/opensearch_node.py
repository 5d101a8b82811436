"""A real single OpenSearch node on 127.0.0.1, built from the official artifacts on Maven Central.

``tools/opensearch-node`` is a small Maven module (a pom and one launcher class) that puts OpenSearch core,
its transport-netty4, lang-painless and analysis-common modules and the k-NN plugin on one classpath and
starts a node: single-node discovery, HTTP on a given port (0 picks one), a data folder. Served pairing:
OpenSearch 2.19.6 with k-NN 2.19.1.0 on Java 17 (3.5.0's k-NN needs the transport-grpc SPI jar, which is
not on Maven Central). The k-NN zip carries no faiss/nmslib native libraries, so indexes on this node must
use the Lucene engine (``PIXDEX_KNN_ENGINE=lucene``); a faiss mapping would kill the JVM on first write.

The node reads its stdin as a lifeline: when the process that started it dies, the pipe closes and the
node shuts down, so a crashed test run or ``pixdex up`` never leaves a JVM behind.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Final

from pixdex.local.processes import stop_process

READY_PREFIX: Final = "PIXDEX_OPENSEARCH_URL "
LAUNCHER_CLASS: Final = "dev.pixdex.opensearchnode.Launcher"
# A 2-core, shared development machine: a bounded heap leaves room for the models and the tests.
DEFAULT_HEAP: Final = ("-Xms512m", "-Xmx1g")
KNN_ENGINE: Final = "lucene"


class NodeError(RuntimeError):
    """The node could not be built or did not come up; the message says where to look."""


def project_dir(start: Path | None = None) -> Path:
    """tools/opensearch-node of the checkout this package runs from."""
    candidates = [start] if start is not None else []
    candidates.append(Path(__file__).resolve().parents[4])
    candidates.append(Path.cwd())
    for root in candidates:
        folder = root / "tools" / "opensearch-node"
        if (folder / "pom.xml").is_file():
            return folder
    raise NodeError("tools/opensearch-node/pom.xml not found: run from the pixdex checkout")


def build(folder: Path, *, mvn: str = "mvn", timeout_s: float = 900.0) -> str:
    """The launcher's classpath, building the module first if its sources changed (Maven caches the
    artifacts in ~/.m2, so only the first build downloads)."""
    target = folder / "target"
    classpath_file = target / "classpath.txt"
    sources = [folder / "pom.xml", *sorted((folder / "src").rglob("*.java"))]
    newest_source = max(p.stat().st_mtime for p in sources)
    knn_jars = list((target / "knn").glob("opensearch-knn-*.jar"))
    fresh = classpath_file.is_file() and bool(knn_jars) and classpath_file.stat().st_mtime >= newest_source
    if not fresh:
        if shutil.which(mvn) is None:
            raise NodeError(f"{mvn!r} not found: Maven is needed to build tools/opensearch-node")
        # Maven's own Java (the default JDK, 17) compiles for the node's Java 17 runtime.
        try:
            result = subprocess.run(
                [mvn, "-B", "-q", "package"], cwd=folder, capture_output=True, text=True, timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise NodeError(f"mvn package in {folder} did not finish in {timeout_s:.0f} s") from None
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).splitlines()[-30:])
            raise NodeError(f"mvn package failed in {folder}:\n{tail}")
        # Maven leaves unchanged outputs alone: mark this build as the one matching the sources.
        classpath_file.touch()
    deps = classpath_file.read_text().strip()
    return os.pathsep.join([str(target / "classes"), deps, str(target / "knn" / "*")])


class OpenSearchNode:
    """One node process. ``start()`` returns when it answers with a yellow or green cluster; ``stop()``
    shuts it down cleanly (then terminates, then kills)."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int = 0,
        java: str = "java",
        heap: tuple[str, ...] = DEFAULT_HEAP,
        folder: Path | None = None,
        mvn: str = "mvn",
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port
        self.java = java
        self.heap = heap
        self.folder = folder or project_dir()
        self.mvn = mvn
        self.log_path = self.data_dir / "node.log"
        self.url: str | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self, timeout_s: float = 180.0) -> str:
        classpath = build(self.folder, mvn=self.mvn)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        start_at = self._log.tell()
        command = [
            self.java, *self.heap, "-XX:+UseSerialGC", "-Djava.awt.headless=true", "-Dfile.encoding=UTF-8",
            "-cp", classpath, LAUNCHER_CLASS,
            "--data", str(self.data_dir / "node"), "--port", str(self.port), "--stdin-lifeline",
        ]
        try:
            self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=self._log, stderr=subprocess.STDOUT)
        except OSError as exc:
            self.stop()
            raise NodeError(f"cannot run {self.java!r} (Java 17 is needed): {exc}") from None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise NodeError(f"OpenSearch node exited ({self.proc.returncode}) while starting; see {self.log_path}")
            url = self._ready_url(start_at)
            if url is not None:
                self.url = url
                break
            time.sleep(0.25)
        else:
            self.stop()
            raise NodeError(f"OpenSearch node not ready after {timeout_s:.0f} s; see {self.log_path}")
        self._wait_healthy(deadline)
        return self.url

    def _ready_url(self, offset: int) -> str | None:
        with self.log_path.open("rb") as f:
            f.seek(offset)
            for raw in f:
                line = raw.decode("utf-8", "replace").strip()
                if line.startswith(READY_PREFIX):
                    return line[len(READY_PREFIX):]
        return None

    def _wait_healthy(self, deadline: float) -> None:
        assert self.url is not None
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                # The URL is the node's own http://127.0.0.1 line, never user input.
                health = f"{self.url}/_cluster/health?wait_for_status=yellow&timeout=5s"
                with urllib.request.urlopen(health, timeout=10) as r:  # noqa: S310
                    status = json.loads(r.read()).get("status")
                if status in ("yellow", "green"):
                    return
                last = f"status {status}"
            except (urllib.error.URLError, OSError, ValueError) as exc:
                last = str(exc)
            time.sleep(0.5)
        self.stop()
        raise NodeError(f"OpenSearch node at {self.url} not healthy ({last}); see {self.log_path}")

    def stop(self, timeout_s: float = 30.0) -> None:
        proc = self.proc
        if proc is not None:
            stdin = proc.stdin
            # Closing the lifeline makes the node close itself.
            stop_process(proc, ask=stdin.close if stdin is not None else None, wait_s=timeout_s)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> OpenSearchNode:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
