"""The local gateway serves the web page at the paths no API route takes, and the API everywhere else."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from pixdex.local.gateway import Gateway
from pixdex.site import StaticSite


def _handler(event: dict[str, Any], _context: Any) -> dict[str, Any]:
    return {"statusCode": 200, "headers": {"content-type": "application/json"},
            "body": json.dumps({"route": event["routeKey"]})}


@pytest.fixture
def gateway() -> Iterator[Gateway]:
    gw = Gateway("127.0.0.1", 0, _handler, [("GET", "/search"), ("GET", "/images/{id}")],
                 site=StaticSite(connect_origins=("http://127.0.0.1:4566",)))
    thread = threading.Thread(target=gw.serve_forever, daemon=True)
    thread.start()
    yield gw
    gw.shutdown()
    gw.server_close()


def _fetch(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, method=method, data=b"{}" if method == "POST" else None)  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310  # loopback http
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def test_page_at_the_root_api_at_its_routes(gateway: Gateway) -> None:
    status, headers, body = _fetch(gateway.url + "/")
    assert status == 200 and headers["content-type"].startswith("text/html") and b"app.js" in body
    assert "script-src 'self'" in headers["content-security-policy"]
    status, headers, body = _fetch(gateway.url + "/app.js")
    assert status == 200 and headers["content-type"].startswith("text/javascript")
    assert json.loads(_fetch(gateway.url + "/config.json")[2]) == {"api": "", "auth": None}
    assert json.loads(_fetch(gateway.url + "/search")[2]) == {"route": "GET /search"}
    assert json.loads(_fetch(gateway.url + "/images/abc")[2]) == {"route": "GET /images/{id}"}
    status, headers, body = _fetch(gateway.url + "/app.js", "HEAD")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 0


@pytest.mark.parametrize(("path", "method"), [("/nothing.js", "GET"), ("/index.html", "POST"),
                                              ("/../pyproject.toml", "GET")])
def test_anything_else_is_not_found(gateway: Gateway, path: str, method: str) -> None:
    assert _fetch(gateway.url + path, method)[0] == 404
