"""Search-cluster emulators on loopback ports, for running the cluster backend over real HTTP.

- ``osmem-server`` (PyPI): an in-memory OpenSearch REST emulator (bulk, match, bool, terms
  aggregations, update, delete; no k-NN, no scripted updates).
- ``noida-db`` (PyPI): a local multi-database binary whose Elasticsearch 8 endpoint has dense_vector k-NN.

Both are started once per session on free ports and stopped at the end. Where one is missing the tests
that need it skip with the reason. Every request sent to the OpenSearch emulator is also checked against
the official OpenSearch API specification when ../shared/opensearch-api-spec is present, so the
behaviour run doubles as a contract test of the requests the backend really sends.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest

from pixdex.index import requests as rq
from pixdex.index.opensearch import (
    Client,
    ClusterIndex,
    ClusterOptions,
    Response,
    RetryPolicy,
    Transport,
    close_connections,
    connect,
)
from pixdex.index.requests import ClusterVersion, OpenSearchDialect
from pixdex.local.processes import stop_process
from tests.opensearch_spec import SKIP_REASON, SPEC_ROOT, OpenSearchSpec, SpecError, load_spec

STARTUP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Emulator:
    name: str
    url: str
    engine: str  # "opensearch" or "elasticsearch"


class SpecCheckingTransport:
    """Checks every request against the API specification before sending it on."""

    def __init__(self, inner: Transport, spec: OpenSearchSpec) -> None:
        self.inner = inner
        self.spec = spec
        self.violations: list[str] = []

    def perform(self, request: rq.Request) -> Response:
        try:
            self.spec.validate(request)
        except SpecError as exc:
            self.violations.append(f"{request.method} {request.endpoint}: {exc}")
        return self.inner.perform(request)

    def close(self) -> None:
        self.inner.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until_up(url: str, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"emulator exited with {process.returncode} before answering at {url}")
        try:
            with urllib.request.urlopen(url, timeout=1):  # noqa: S310 - our own http://127.0.0.1 URL
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    raise RuntimeError(f"emulator did not answer at {url} within {STARTUP_TIMEOUT_S} s")


@pytest.fixture(scope="session")
def osmem() -> Iterator[Emulator]:
    if find_spec("osmem_server") is None:
        pytest.skip("osmem-server is not installed (pip install osmem-server)")
    from osmem_server import OsmemError, OsmemServer

    try:
        server = OsmemServer.start(japanese=False)
    except OsmemError as exc:
        pytest.skip(f"osmem-server did not start: {exc}")
    try:
        yield Emulator("osmem", server.url, "opensearch")
    finally:
        close_connections()
        server.close()


@pytest.fixture(scope="session")
def noida(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    if find_spec("noida_db") is None:
        pytest.skip("noida-db is not installed (pip install noida-db)")
    binary = Path(str(find_spec("noida_db").origin)).parent / "noida-db"  # type: ignore[union-attr]
    if not binary.is_file():
        pytest.skip(f"noida-db has no binary for {sys.platform}")
    binary.chmod(0o755)
    data = tmp_path_factory.mktemp("noida")
    port = free_port()
    process = subprocess.Popen(
        [str(binary), "start", "--only", "elasticsearch", "--elasticsearch-port", str(port),
         "--host", "127.0.0.1", "--data-dir", str(data / "data")],
        cwd=data,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_until_up(url, process)
        except RuntimeError as exc:
            pytest.skip(f"noida-db did not start: {exc}")
        yield Emulator("noida", url, "elasticsearch")
    finally:
        close_connections()
        stop_process(process)
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture(scope="session")
def spec() -> OpenSearchSpec | None:
    return load_spec() if SPEC_ROOT.is_dir() else None


IndexFactory = Callable[..., ClusterIndex]


def make_factory(emulator: Emulator, spec: OpenSearchSpec | None) -> tuple[IndexFactory, list[ClusterIndex]]:
    made: list[ClusterIndex] = []

    def make(*, official_client: bool = False, check_spec: bool = True, **options: Any) -> ClusterIndex:
        opts = ClusterOptions(url=emulator.url, alias=f"pixdex-test-{uuid.uuid4().hex[:10]}", **options)
        transport: Transport = connect(opts)
        if official_client:
            from pixdex.index.elasticsearch import connect_official

            transport = connect_official(opts) or transport
        if emulator.engine == "opensearch" and spec is not None and check_spec:
            transport = SpecCheckingTransport(transport, spec)
        dialect: OpenSearchDialect
        if emulator.engine == "elasticsearch":
            from pixdex.index.elasticsearch import ElasticsearchDialect

            dialect = ElasticsearchDialect()
        else:
            dialect = OpenSearchDialect()
        index = ClusterIndex(
            Client(transport, retry=RetryPolicy(max_retries=2, base_s=0.01, cap_s=0.05), engine=dialect.name),
            alias=opts.alias,
            dialect=dialect,
            knn=opts.knn,
            refresh=opts.refresh or "wait_for",
            update_mode=opts.update_mode,
            point_in_time=opts.point_in_time,
        )
        index.ensure()
        made.append(index)
        return index

    return make, made


def finish(made: list[ClusterIndex]) -> None:
    """Drop what the test created; fail it if any request broke the API specification."""
    violations: list[str] = []
    for index in made:
        transport = index.client.transport
        if isinstance(transport, SpecCheckingTransport):
            violations += transport.violations
        index.drop()
        index.close()
    assert not violations, "requests outside the OpenSearch API specification:\n" + "\n".join(violations)


@pytest.fixture
def osmem_index(osmem: Emulator, spec: OpenSearchSpec | None) -> Iterator[IndexFactory]:
    make, made = make_factory(osmem, spec)
    yield make
    finish(made)


@pytest.fixture
def node_index(opensearch_node: str, spec: OpenSearchSpec | None) -> Iterator[IndexFactory]:
    """Indexes on the session's real OpenSearch node; every request is also checked against the spec."""
    make, made = make_factory(Emulator("opensearch-node", opensearch_node, "opensearch"), spec)
    yield make
    finish(made)


@pytest.fixture
def noida_index(noida: Emulator) -> Iterator[IndexFactory]:
    make, made = make_factory(noida, None)
    yield make
    finish(made)


__all__ = ["SKIP_REASON", "ClusterVersion", "Emulator", "SpecCheckingTransport", "free_port"]
