"""Opaque keyset cursors, shared by every index backend.

A cursor carries the sort key of the last hit returned (``after``), an optional backend snapshot marker
(``pin``: the SQLite backend's highest insertion sequence at page 1, an OpenSearch point-in-time id) and a
fingerprint of the query that produced it. A cursor presented with a query of another shape (other text,
vector, filters or sort) is refused instead of silently paging through a different result list.

Cursors are not signed: they grant nothing. Every value in them is only ever bound as a query parameter,
and the tenant filter comes from the query, whose shape must match the fingerprint.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from pixdex.errors import InvalidRequestError
from pixdex.index.base import SearchQuery

CURSOR_VERSION = 1
# Long enough for any real sort key; a bound keeps hostile input from costing work.
MAX_CURSOR_CHARS = 2048

CursorValue = str | int | float


@dataclass(frozen=True)
class Cursor:
    shape: str
    after: tuple[CursorValue, ...]
    pin: int | str | None = None


def query_shape(query: SearchQuery) -> str:
    """A fingerprint of everything that decides the ordered hit list (not size or facets)."""
    vector: dict[str, Any] | None = None
    if query.vector is not None:
        vec = np.ascontiguousarray(np.asarray(query.vector.vector, dtype=np.float32).ravel())
        vector = {
            "field": query.vector.field,
            "k": query.vector.k,
            "min_similarity": query.vector.min_similarity,
            "sha256": hashlib.sha256(vec.tobytes()).hexdigest(),
        }
    shape = {
        "text": query.text,
        "vector": vector,
        "filters": dataclasses.asdict(query.filters),
        "sort": query.sort,
    }
    if query.match != "all":  # absent for "all", so cursors issued before the field existed stay valid
        shape["match"] = query.match
    canonical = json.dumps(shape, sort_keys=True, separators=(",", ":"), default=list)
    return hashlib.sha256(canonical.encode()).hexdigest()[:24]


def encode_cursor(cursor: Cursor) -> str:
    payload = {"v": CURSOR_VERSION, "s": cursor.shape, "a": list(cursor.after), "p": cursor.pin}
    raw = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(token: str, shape: str) -> Cursor:
    """Parse a cursor made by :func:`encode_cursor` for a query of the given shape.

    Raises InvalidRequestError for anything else: malformed, from another version, or from another query.
    """
    if not isinstance(token, str) or not token or len(token) > MAX_CURSOR_CHARS:
        raise InvalidRequestError("invalid cursor", field="cursor")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        payload = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise InvalidRequestError("invalid cursor", field="cursor") from None
    if not isinstance(payload, dict) or payload.get("v") != CURSOR_VERSION:
        raise InvalidRequestError("invalid cursor", field="cursor")
    after = payload.get("a")
    pin = payload.get("p")
    if (
        not isinstance(payload.get("s"), str)
        or not isinstance(after, list)
        or not all(_is_value(v) for v in after)
        or not (pin is None or (_is_value(pin) and not isinstance(pin, float)))
    ):
        raise InvalidRequestError("invalid cursor", field="cursor")
    if payload["s"] != shape:
        raise InvalidRequestError("cursor belongs to a different query", field="cursor")
    return Cursor(shape=payload["s"], after=tuple(after), pin=pin)


def _is_value(value: object) -> bool:
    # bool is an int subclass but never a sort key.
    return isinstance(value, str | int | float) and not isinstance(value, bool)
