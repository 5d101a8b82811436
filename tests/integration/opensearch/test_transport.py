"""The transport over real loopback HTTP: auth headers, SigV4 signatures, retries, connection reuse.

A small scripted HTTP server stands in for the cluster where the point is what the client sends or how it
reacts to answers no emulator gives on demand (429, 503, dropped connections).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from pixdex.errors import BackendUnavailableError, IndexMappingError
from pixdex.index import requests as rq
from pixdex.index.opensearch import (
    AwsService,
    Client,
    ClusterIndex,
    ClusterOptions,
    RetryPolicy,
    close_connections,
    connect,
    parse_target,
)
from tests.integration.opensearch.conftest import free_port


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    client_port: int


@dataclass
class Script:
    """Answers in order (status, body, headers); the last one repeats."""

    answers: list[tuple[int, Any, dict[str, str]]]
    seen: list[Seen] = field(default_factory=list)

    def next(self) -> tuple[int, Any, dict[str, str]]:
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


@pytest.fixture
def server() -> Iterator[Callable[[list[tuple[int, Any, dict[str, str]]]], tuple[str, Script]]]:
    servers: list[ThreadingHTTPServer] = []

    def start(answers: list[tuple[int, Any, dict[str, str]]]) -> tuple[str, Script]:
        script = Script(list(answers))

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a cluster does

            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                script.seen.append(
                    Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body,
                         self.client_address[1])
                )
                status, payload, headers = script.next()
                raw = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(raw)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(raw)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _answer  # noqa: N815

            def log_message(self, format: str, *args: Any) -> None:
                return

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}", script

    yield start
    close_connections()
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


OK: tuple[int, Any, dict[str, str]] = (200, {"acknowledged": True}, {})


def client_for(url: str, sleeps: list[float], **options: Any) -> Client:
    transport = connect(ClusterOptions(url=url, **options), credentials=options.pop("credentials", None))
    return Client(transport, retry=RetryPolicy(max_retries=3, base_s=0.01, cap_s=0.5), sleep=sleeps.append)


def test_basic_auth_comes_from_the_url(server: Any) -> None:
    url, script = server([OK])
    host = url.removeprefix("http://")
    sleeps: list[float] = []
    client = client_for(f"http://pix%40dex:s%3Acret@{host}/prefix", sleeps)
    client.call(rq.info())
    seen = script.seen[0]
    assert seen.path == "/prefix/"
    assert seen.headers["authorization"] == "Basic cGl4QGRleDpzOmNyZXQ="  # pix@dex:s:cret
    target = parse_target(f"http://pix%40dex:s%3Acret@{host}/prefix")
    assert "s:cret" not in repr(target) and "s:cret" not in target.display


@pytest.mark.parametrize("service", ["es", "aoss"])
def test_sigv4_signs_method_path_query_and_body(server: Any, service: AwsService) -> None:
    url, script = server([OK])
    credentials = Credentials("AKIDEXAMPLE", "secret-example", "session-token")
    client = Client(connect(ClusterOptions(url=url, aws_service=service, region="eu-west-1"),
                            credentials=credentials))
    request = rq.bulk(rq.update_lines("pixdex-images", "a b/c", {"x": 1}, created_ms=1, mode="script"), "wait_for")
    client.call(request)
    seen = script.seen[0]
    auth = seen.headers["authorization"]
    day = seen.headers["x-amz-date"][:8]
    assert auth.startswith(f"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/{day}/eu-west-1/{service}/")
    assert seen.headers["x-amz-security-token"] == "session-token"
    assert seen.headers["x-amz-content-sha256"] == hashlib.sha256(seen.body).hexdigest()
    # Recompute the signature for the request exactly as it arrived: it must match.
    again = AWSRequest(method=seen.method, url=f"{url}{seen.path}", data=seen.body,
                       headers={"host": seen.headers["host"], "x-amz-date": seen.headers["x-amz-date"],
                                "x-amz-security-token": "session-token"})
    again.context["timestamp"] = seen.headers["x-amz-date"]
    signer = SigV4Auth(credentials, service, "eu-west-1")
    expected = signer.signature(signer.string_to_sign(again, signer.canonical_request(again)), again)
    assert auth.endswith(f"Signature={expected}")


def test_aws_hosts_are_signed_without_configuration() -> None:
    from pixdex.index.opensearch import aws_endpoint

    assert aws_endpoint("search-pix-abc123.eu-west-1.es.amazonaws.com") == ("es", "eu-west-1")
    assert aws_endpoint("abc123def.us-east-2.aoss.amazonaws.com") == ("aoss", "us-east-2")
    assert aws_endpoint("localhost") is None


def test_overload_is_retried_with_backoff_honouring_retry_after(server: Any) -> None:
    busy = (429, {"error": {"type": "es_rejected_execution_exception", "reason": "queue full"}}, {"retry-after": "0.2"})
    url, script = server([busy, (503, {"error": "unavailable"}, {}), OK])
    sleeps: list[float] = []
    response = client_for(url, sleeps).call(rq.info())
    assert response.status == 200 and len(script.seen) == 3
    assert sleeps[0] >= 0.2 and 0 <= sleeps[1] <= 0.02


def test_persistent_failure_becomes_backend_unavailable(server: Any) -> None:
    url, script = server([(503, {"error": {"type": "cluster_block_exception", "reason": "red"}}, {})])
    sleeps: list[float] = []
    with pytest.raises(BackendUnavailableError, match="503"):
        client_for(url, sleeps).call(rq.info())
    assert len(script.seen) == 4 and len(sleeps) == 3


def test_unreachable_cluster_is_retried_then_unavailable() -> None:
    sleeps: list[float] = []
    client = client_for(f"http://127.0.0.1:{free_port()}", sleeps, timeout_s=1.0)
    with pytest.raises(BackendUnavailableError, match="unreachable after 4 attempts"):
        client.call(rq.info())
    assert len(sleeps) == 3


def test_connections_are_reused(server: Any) -> None:
    url, script = server([OK])
    sleeps: list[float] = []
    assert connect(ClusterOptions(url=url)) is connect(ClusterOptions(url=url))
    client = client_for(url, sleeps)
    for _ in range(5):
        client.call(rq.info())
    assert len({seen.client_port for seen in script.seen}) == 1


def test_bulk_retries_only_the_refused_items_and_types_mapping_errors(server: Any) -> None:
    def item(status: int, error: dict[str, str] | None = None) -> dict[str, Any]:
        outcome: dict[str, Any] = {"_index": "pixdex-images-v1", "status": status}
        if error:
            outcome["error"] = error
        return {"update": outcome}

    mapping = {"type": "mapper_parsing_exception", "reason": "failed to parse field [width]"}
    overloaded = {"type": "es_rejected_execution_exception", "reason": "queue full"}
    first = {"errors": True, "items": [item(200), item(400, mapping), item(429, overloaded)]}
    second = {"errors": False, "items": [item(201)]}
    url, script = server([(200, first, {}), (200, second, {})])
    sleeps: list[float] = []
    index = ClusterIndex(client_for(url, sleeps), alias="pixdex-images")
    index._physical = "pixdex-images-v1"
    from pixdex.index.mapping import IndexShape

    index._shape = IndexShape(dims={"caption_vector": 384})
    results = index.upsert_many([("a", {"width": 1}), ("b", {"width": 2}), ("c", {"width": 3})])
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], IndexMappingError) and "mapper_parsing_exception" in str(results[1])
    resent = [json.loads(line) for line in script.seen[1].body.decode().splitlines()]
    assert [line["update"]["_id"] for line in resent[::2]] == ["c"]
    assert len(sleeps) == 1


def test_requests_sent_to_the_opensearch_emulator_are_checked(osmem_index: Any) -> None:
    from tests.opensearch_spec import SKIP_REASON

    index = osmem_index(update_mode="merge")
    transport = index.client.transport
    # pytest imports conftest under its own module name, so compare by behaviour, not by class identity.
    if not hasattr(transport, "violations"):
        pytest.skip(SKIP_REASON)
    index.upsert("a", {"name_text": "checked"})
    assert index.search(rq_query("checked")).total == 1
    assert transport.violations == []
    index.client.send(rq.search(index.alias, {"query": {"mtach": {"name_text": "x"}}}))
    assert len(transport.violations) == 1 and "mtach" in transport.violations[0]
    transport.violations.clear()


def rq_query(text: str) -> Any:
    from pixdex.index.base import SearchQuery

    return SearchQuery(text=text)
