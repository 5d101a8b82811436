"""The local API Gateway stand-in hands the query handler one request at a time, as one Lambda container does."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pixdex.local.gateway import Gateway


def test_concurrent_requests_reach_the_handler_one_at_a_time() -> None:
    inside = 0
    most = 0
    lock = threading.Lock()

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        nonlocal inside, most
        with lock:
            inside += 1
            most = max(most, inside)
        time.sleep(0.02)  # long enough for the other threads' requests to arrive meanwhile
        with lock:
            inside -= 1
        return {"statusCode": 200, "headers": {"content-type": "application/json"},
                "body": json.dumps({"path": event["rawPath"]})}

    gateway = Gateway("127.0.0.1", 0, handler, [("GET", "/search")])
    server = threading.Thread(target=gateway.serve_forever, daemon=True)
    server.start()
    try:
        def get(i: int) -> bytes:
            with urllib.request.urlopen(f"{gateway.url}/search?i={i}", timeout=30) as resp:  # noqa: S310  # loopback
                return resp.read()

        with ThreadPoolExecutor(max_workers=8) as pool:
            bodies = list(pool.map(get, range(24)))
    finally:
        gateway.shutdown()
        gateway.server_close()
    assert bodies == [b'{"path": "/search"}'] * 24
    assert most == 1
