"""API Gateway's stand-in: HTTP requests on 127.0.0.1 -> HTTP API (payload v2) events -> the query handler."""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from pixdex.local.functions import Handler, LocalContext
from pixdex.local.template import LOCAL_ACCOUNT_ID
from pixdex.site import StaticSite

log = logging.getLogger("pixdex.local.gateway")

# API Gateway's own limit on an HTTP API request body.
MAX_BODY_BYTES = 10 * 1024 * 1024
_TEXT_TYPES = ("application/json", "text/", "application/x-www-form-urlencoded")


class Route:
    def __init__(self, method: str, path: str) -> None:
        self.method = method
        self.path = path
        self.route_key = f"{method} {path}"
        names = re.findall(r"\{([^}/+]+)\+?\}", path)
        pattern = re.sub(r"\{[^}/]+\+\}", "(.+)", path)
        pattern = re.sub(r"\{[^}/]+\}", "([^/]+)", pattern)
        self.names = names
        self.regex = re.compile(f"^{pattern}$")

    def match(self, method: str, path: str) -> dict[str, str] | None:
        if self.method not in ("ANY", method):
            return None
        m = self.regex.match(path)
        if not m:
            return None
        return {n: unquote(v) for n, v in zip(self.names, m.groups(), strict=True)}


def build_event(*, method: str, raw_path: str, raw_query: str, headers: dict[str, str], body: bytes,
                route: Route, path_params: dict[str, str], source_ip: str, domain: str) -> dict[str, Any]:
    query = {k: ",".join(v) for k, v in parse_qs(raw_query, keep_blank_values=True).items()}
    content_type = headers.get("content-type", "")
    is_text = any(content_type.startswith(t) for t in _TEXT_TYPES)
    now = time.time()
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route.route_key,
        "rawPath": raw_path,
        "rawQueryString": raw_query,
        "headers": headers,
        "requestContext": {
            "accountId": LOCAL_ACCOUNT_ID,
            "apiId": "local",
            "domainName": domain,
            "domainPrefix": domain.split(".")[0],
            "http": {
                "method": method, "path": raw_path, "protocol": "HTTP/1.1", "sourceIp": source_ip,
                "userAgent": headers.get("user-agent", ""),
            },
            "requestId": str(uuid.uuid4()),
            "routeKey": route.route_key,
            "stage": "$default",
            "time": datetime.now(UTC).strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "timeEpoch": int(now * 1000),
        },
        "isBase64Encoded": False,
    }
    if "cookie" in headers:
        event["cookies"] = [c.strip() for c in headers["cookie"].split(";")]
    if query:
        event["queryStringParameters"] = query
    if path_params:
        event["pathParameters"] = path_params
    if body:
        if is_text:
            event["body"] = body.decode("utf-8", errors="replace")
        else:
            event["body"] = base64.b64encode(body).decode()
            event["isBase64Encoded"] = True
    return event


class Gateway(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str, port: int, handler: Handler, routes: Sequence[tuple[str, str]],
                 function_name: str = "query", site: StaticSite | None = None) -> None:
        self.lambda_handler = handler
        # The web page, at the paths no API route takes (CloudFront serves it from the site bucket in AWS).
        self.site = site
        # One invocation at a time, as in one Lambda container: the handler's resolver (powertools) keeps the
        # current request on its module-level app, and concurrent calls from these threads mixed requests
        # up (KeyError '_route' -> 500 under `pixdex bench load`). Connections are still accepted in parallel.
        self.invoke_lock = threading.Lock()
        self.routes = [Route(m, p) for m, p in routes]
        self.function_name = function_name
        super().__init__((host, port), _RequestHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"


class _RequestHandler(BaseHTTPRequestHandler):
    server: Gateway
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _handle(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("content-length") or 0)
        if length > MAX_BODY_BYTES:
            self._reply(413, {"content-type": "application/json"}, b'{"message":"Request Entity Too Large"}')
            return
        body = self.rfile.read(length) if length else b""
        method = self.command.upper()
        for route in self.server.routes:
            params = route.match(method, parts.path)
            if params is not None:
                break
        else:
            site = self.server.site
            asset = site.get(parts.path) if site is not None and method in ("GET", "HEAD") else None
            if site is not None and asset is not None:
                self._reply(200, site.headers(asset), asset.body)
                return
            self._reply(404, {"content-type": "application/json"}, b'{"message":"Not Found"}')
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        event = build_event(
            method=method, raw_path=parts.path, raw_query=parts.query, headers=headers, body=body,
            route=route, path_params=params, source_ip=self.client_address[0],
            domain=headers.get("host", "127.0.0.1"),
        )
        try:
            with self.server.invoke_lock:
                resp = self.server.lambda_handler(event, LocalContext(function_name=self.server.function_name))
        except Exception:
            log.exception("query handler raised")
            self._reply(500, {"content-type": "application/json"}, b'{"message":"Internal Server Error"}')
            return
        self._send_lambda_response(resp)

    def _send_lambda_response(self, resp: Any) -> None:
        if not isinstance(resp, dict) or "statusCode" not in resp:
            # HTTP API payload v2 treats a bare value as a 200 JSON body.
            self._reply(200, {"content-type": "application/json"}, json.dumps(resp).encode())
            return
        raw = resp.get("body") or ""
        data = base64.b64decode(raw) if resp.get("isBase64Encoded") else str(raw).encode()
        headers = {k.lower(): str(v) for k, v in (resp.get("headers") or {}).items()}
        for k, values in (resp.get("multiValueHeaders") or {}).items():
            headers[k.lower()] = ", ".join(values)
        self._reply(int(resp["statusCode"]), headers, data, cookies=resp.get("cookies") or [])

    def _reply(self, status: int, headers: dict[str, str], body: bytes, cookies: Sequence[str] = ()) -> None:
        self.send_response(status)
        for k, v in headers.items():
            if k not in ("content-length", "connection"):
                self.send_header(k, v)
        for c in cookies:
            self.send_header("set-cookie", c)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle  # noqa: N815
