"""The search-cluster backend: OpenSearch (AWS domain, Serverless collection, self-managed) by default,
Elasticsearch 8+ through the dialect in :mod:`pixdex.index.elasticsearch`.

Connection: one URL. ``https://...es.amazonaws.com`` (a domain) and ``https://...aoss.amazonaws.com``
(a Serverless collection) are signed with SigV4 from boto3's credential chain (services ``es`` and
``aoss``); ``http(s)://user:pass@host`` uses basic auth; anything else goes unauthenticated. Requests go
through opensearch-py's low-level urllib3 connection (pooled, kept alive); connections are cached per
process, so a Lambda container reuses them across invocations. 429 and 5xx answers and connection
failures are retried with exponential backoff and full jitter (honouring Retry-After); whatever still
fails becomes a typed pixdex error.

Index: a versioned physical index (``pixdex-images-v1``) behind an alias (``pixdex-images``), created by
:meth:`ClusterIndex.ensure` from :mod:`pixdex.index.mapping`; ``pixdex reindex`` moves the alias.

Semantics match the embedded backend (the shared behaviour suite runs against both):
- upserts are partial and replace whole top-level fields (a painless ``putAll``; see ``update_mode``);
- keyword search needs every word in some text field, the last word also as a prefix;
- listing and keyword pages are keyset-paged with ``search_after`` on (sort key, id). Every page is
  pinned to documents created before page 1 (an internal creation time), and from page 2 on runs in a
  point in time, so documents added, changed or removed meanwhile do not shift the pages;
- vector search is efficient filtered k-NN; scores are cosine similarities; facets of a vector search
  count its k hits;
- near-duplicates are exact within d < 8 bits (byte pigeonhole), and use Hamming k-NN (OpenSearch
  2.16+) or a filtered scan beyond.
"""

from __future__ import annotations

import html
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC
from typing import Any, Final, Literal, Protocol
from urllib.parse import unquote, urlparse

import numpy as np
import numpy.typing as npt

from pixdex.document import HIGHLIGHT_FIELDS, VECTOR_FIELDS
from pixdex.errors import BackendUnavailableError, IndexMappingError, InvalidRequestError, PixdexError
from pixdex.index import requests as rq
from pixdex.index.base import (
    MAX_PAGE_SIZE,
    FacetBucket,
    Filters,
    Hit,
    SearchQuery,
    SearchResult,
    check_range,
    instant_us,
    parse_instant,
    validate_query,
)
from pixdex.index.cursor import Cursor, CursorValue, decode_cursor, encode_cursor, query_shape
from pixdex.index.mapping import (
    ID_FIELD,
    MAPPING_VERSION,
    PHASH_PARTS,
    UPDATED_FIELD,
    IndexShape,
    KnnSettings,
    hamming,
    initial_dims,
    physical_name,
    prepare_fields,
    read_shape,
    strip_internal,
)
from pixdex.index.vectors import phash_to_int, unit_vector

Engine = Literal["opensearch", "elasticsearch", "auto"]
Refresh = Literal["wait_for", "true", "false"]
AwsService = Literal["es", "aoss"]

RETRY_STATUSES: Final = frozenset({429, 500, 502, 503, 504})
# Item statuses of a bulk response worth sending again: overload, and a version conflict that outlived
# retry_on_conflict.
RETRY_ITEM_STATUSES: Final = RETRY_STATUSES | {409}
# Bulk requests stay well under every engine's limit (Serverless: 10 MiB).
BULK_MAX_BYTES: Final = 5 * 1024 * 1024
BULK_MAX_ITEMS: Final = 500
SCAN_PAGE: Final = 1000
# Ids per _mget: a vector read of this many 1280-d documents is ~15 MB of JSON.
MGET_CHUNK: Final = 500
# Sort key of documents without uploaded_at in vector results: last when newest first.
UNDATED_MS: Final = -(2**62)
MAX_KNN_K: Final = 10_000
# A k-NN search asking for more than this many times its page size ranks on doc values (see _knn).
RANK_ON_DOC_VALUES_FACTOR: Final = 4
HIGHLIGHT_PRE: Final = "<mark>"
HIGHLIGHT_POST: Final = "</mark>"


# -- connection --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterOptions:
    """How to reach and use one index on a search cluster. Built by the caller from Settings."""

    url: str
    alias: str = "pixdex-images"
    engine: Engine = "auto"
    region: str = "us-east-1"
    # SigV4 service; None: derived from the host (…es.amazonaws.com -> es, …aoss.amazonaws.com -> aoss).
    aws_service: AwsService | None = None
    timeout_s: float = 10.0
    max_retries: int = 3
    backoff_s: float = 0.2
    backoff_max_s: float = 5.0
    # None: wait_for (a write is searchable when the call returns), false on Serverless (no refresh there).
    refresh: Refresh | None = None
    # script: replace whole top-level fields (painless). merge: plain partial "doc" updates, for clusters
    # with scripting disabled; object-valued fields then merge key by key.
    update_mode: rq.UpdateMode = "script"
    point_in_time: bool = True
    pit_keep_alive: str = "2m"
    knn: KnnSettings = field(default_factory=KnnSettings)
    vector_dims: Mapping[str, int] = field(default_factory=dict)
    pool_maxsize: int = 10
    verify_certs: bool = True
    ca_certs: str | None = None

    def __post_init__(self) -> None:
        if urlparse(self.url).scheme not in ("http", "https"):
            raise ValueError(f"index URL must be http(s)://…, got {self.url!r}")
        if self.max_retries < 0 or self.timeout_s <= 0:
            raise ValueError("max_retries must be >= 0 and timeout_s > 0")


@dataclass(frozen=True)
class Target:
    """The parts of an index URL; the password never appears in repr or errors."""

    scheme: str
    host: str
    port: int
    prefix: str
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)

    @property
    def display(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}{self.prefix}"


def parse_target(url: str) -> Target:
    parts = urlparse(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("index URL must look like http(s)://[user:pass@]host[:port][/prefix]")
    port = parts.port or (443 if parts.scheme == "https" else 9200)
    return Target(
        scheme=parts.scheme,
        host=parts.hostname,
        port=port,
        prefix=parts.path.rstrip("/"),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


def aws_endpoint(host: str) -> tuple[AwsService, str | None] | None:
    """(service, region) of an AWS endpoint host, None for any other host."""
    labels = host.lower().split(".")
    if host.lower().endswith(".aoss.amazonaws.com"):
        return "aoss", labels[-4] if len(labels) >= 5 else None
    if ".es.amazonaws.com" in host.lower():
        i = labels.index("es")
        return "es", labels[i - 1] if i >= 2 else None
    if host.lower().endswith(".on.aws") and "aos" in labels:
        i = labels.index("aos")
        return "es", labels[i + 1] if i + 1 < len(labels) - 2 else None
    return None


@dataclass(frozen=True)
class Response:
    status: int
    body: Any
    retry_after: float | None = None


class TransportError(Exception):
    """No HTTP answer: connection refused or reset, TLS failure, timeout."""


class Transport(Protocol):
    def perform(self, request: rq.Request) -> Response: ...

    def close(self) -> None: ...


# Passed as opensearch-py's ``ignore``: statuses are judged by the Client, not by the connection.
_EVERY_STATUS: Final = range(100, 600)


class HttpTransport:
    """opensearch-py's pooled urllib3 connection to one host; speaks plain HTTP+JSON to either engine."""

    def __init__(self, target: Target, options: ClusterOptions, http_auth: Any) -> None:
        from opensearchpy import Urllib3HttpConnection

        if http_auth is None and target.username is not None:
            http_auth = (target.username, target.password or "")
        self.target = target
        self._conn = Urllib3HttpConnection(
            host=target.host,
            port=target.port,
            use_ssl=target.scheme == "https",
            url_prefix=target.prefix,
            timeout=options.timeout_s,
            http_auth=http_auth,
            pool_maxsize=options.pool_maxsize,
            verify_certs=options.verify_certs,
            ca_certs=options.ca_certs,
            ssl_show_warn=options.verify_certs,
        )

    def perform(self, request: rq.Request) -> Response:
        from opensearchpy.exceptions import ConnectionError as OsConnectionError

        try:
            status, headers, raw = self._conn.perform_request(
                request.method,
                request.path,
                params=dict(request.params) or None,
                body=request.encoded_body(),
                ignore=_EVERY_STATUS,
                headers={"content-type": request.content_type},
            )
        except OsConnectionError as exc:  # also ConnectionTimeout and SSLError
            raise TransportError(f"{request.method} {self.target.display}{request.path}: {exc.info}") from None
        return Response(status, _json_or_text(raw), _retry_after(headers.get("retry-after")))

    def close(self) -> None:
        self._conn.close()


_TRANSPORTS: dict[tuple[Any, ...], Transport] = {}
_TRANSPORTS_LOCK = threading.Lock()


def connect(
    options: ClusterOptions,
    *,
    credentials: Any = None,
    variant: str = "http",
    make: Callable[[], Transport] | None = None,
) -> Transport:
    """A transport for the options' URL, shared by every index object of this process with the same
    endpoint and auth (pooled connections survive across Lambda invocations of one container).

    ``make`` builds another kind of transport for the same endpoint (a dialect's own client, e.g.
    :func:`pixdex.index.elasticsearch.connect_official`), cached under ``variant``; by default the pooled
    urllib3 connection, signed with SigV4 for AWS endpoints.
    """
    target = parse_target(options.url)
    service, region = _sigv4(target, options)
    key = (
        target.scheme, target.host, target.port, target.prefix, target.username, target.password, service,
        region, options.timeout_s, options.pool_maxsize, options.verify_certs, options.ca_certs,
        id(credentials) if credentials is not None else None, variant,
    )
    with _TRANSPORTS_LOCK:
        transport = _TRANSPORTS.get(key)
        if transport is None:
            if make is not None:
                transport = make()
            else:
                auth = _aws_auth(service, region, credentials) if service is not None and region else None
                transport = HttpTransport(target, options, auth)
            _TRANSPORTS[key] = transport
        return transport


def signing_service(options: ClusterOptions) -> AwsService | None:
    """The SigV4 service the options' URL is signed for (None: basic auth or none)."""
    return _sigv4(parse_target(options.url), options)[0]


def close_connections() -> None:
    """Close every cached connection (tests, process shutdown)."""
    with _TRANSPORTS_LOCK:
        for transport in _TRANSPORTS.values():
            transport.close()
        _TRANSPORTS.clear()


def _sigv4(target: Target, options: ClusterOptions) -> tuple[AwsService | None, str | None]:
    detected = aws_endpoint(target.host)
    if options.aws_service is not None:
        return options.aws_service, (detected[1] if detected and detected[1] else options.region)
    if detected is None or target.username is not None:
        return None, None
    return detected[0], detected[1] or options.region


def _aws_auth(service: AwsService, region: str, credentials: Any) -> Any:
    from opensearchpy import Urllib3AWSV4SignerAuth

    if credentials is None:
        import boto3

        credentials = boto3.Session(region_name=region).get_credentials()
    if credentials is None:
        raise BackendUnavailableError(
            f"no AWS credentials to sign requests to the {service} endpoint", service=service
        )
    # The signer asks refreshable credentials for a frozen copy on every request.
    return Urllib3AWSV4SignerAuth(credentials, region, service)


def _json_or_text(raw: str) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


# -- sending -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 3
    base_s: float = 0.2
    cap_s: float = 5.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Full jitter: a uniform wait below the exponential bound, at least what the server asked."""
        bound = min(self.cap_s, self.base_s * (2**attempt))
        wait = random.uniform(0.0, bound)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.cap_s))
        return wait


class Client:
    """Sends built requests with retries and turns failures into typed pixdex errors."""

    def __init__(
        self,
        transport: Transport,
        *,
        retry: RetryPolicy | None = None,
        engine: str = "opensearch",
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.transport = transport
        self.retry = retry or RetryPolicy()
        self.engine = engine
        self.sleep = sleep

    def send(self, request: rq.Request) -> Response:
        """The answer, after retrying overload, server errors and connection failures."""
        attempt = 0
        while True:
            try:
                response = self.transport.perform(request)
            except TransportError as exc:
                if attempt >= self.retry.max_retries:
                    raise BackendUnavailableError(
                        f"{self.engine} unreachable after {attempt + 1} attempts: {exc}"
                    ) from None
                self.sleep(self.retry.delay(attempt))
                attempt += 1
                continue
            if response.status in RETRY_STATUSES and attempt < self.retry.max_retries:
                self.sleep(self.retry.delay(attempt, response.retry_after))
                attempt += 1
                continue
            return response

    def call(
        self,
        request: rq.Request,
        *,
        refused: type[PixdexError] = InvalidRequestError,
        allow: Sequence[int] = (),
    ) -> Response:
        response = self.send(request)
        if 200 <= response.status < 300 or response.status in allow:
            return response
        raise self.error(response, request, refused)

    def error(self, response: Response, request: rq.Request, refused: type[PixdexError]) -> PixdexError:
        kind, reason = error_of(response.body)
        where = f"{request.method} {request.endpoint}"
        status = response.status
        if status in RETRY_STATUSES:
            return BackendUnavailableError(f"{self.engine} answered {status} to {where}: {reason}", status=status)
        if status in (401, 403):
            return BackendUnavailableError(
                f"{self.engine} refused the credentials ({status}) for {where}: {reason}", status=status
            )
        if kind == "index_not_found_exception":
            return BackendUnavailableError(f"{self.engine} index missing ({where}): call ensure() first")
        return refused(f"{self.engine} refused {where} ({status} {kind}): {reason}", status=status, type=kind)


def error_of(body: Any) -> tuple[str, str]:
    """(type, reason) of an error answer, as precise as the body allows."""
    if isinstance(body, Mapping):
        err = body.get("error", body)
        if isinstance(err, Mapping):
            kind = str(err.get("type", "error"))
            reason = str(err.get("reason", ""))
            caused = err.get("caused_by")
            if isinstance(caused, Mapping) and caused.get("reason"):
                reason = f"{reason} ({caused.get('type')}: {caused.get('reason')})"
            return kind, reason[:500]
        if err is not None:
            return "error", str(err)[:500]
    return "error", str(body)[:500]


# -- the index -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Pin:
    """What page 1 saw: documents created at or before ``created_ms``; from page 2 on, a point in time."""

    created_ms: int
    pit: str | None = None

    def encode(self) -> int | str:
        return self.created_ms if self.pit is None else f"{self.created_ms}.{self.pit}"

    @classmethod
    def decode(cls, raw: object) -> _Pin:
        if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0:
            return cls(raw)
        if isinstance(raw, str):
            head, dot, pit = raw.partition(".")
            if dot and head.isdigit() and pit:
                return cls(int(head), pit)
        raise InvalidRequestError("invalid cursor", field="cursor")


@dataclass
class _Ranked:
    score: float
    id: str
    doc: dict[str, Any]
    sort_ms: int = 0


class ClusterIndex:
    """:class:`pixdex.index.base.ImageIndex` on an OpenSearch or Elasticsearch cluster."""

    def __init__(
        self,
        client: Client,
        *,
        alias: str,
        dialect: rq.OpenSearchDialect | None = None,
        knn: KnnSettings | None = None,
        vector_dims: Mapping[str, int] | None = None,
        refresh: Refresh | None = "wait_for",
        update_mode: rq.UpdateMode = "script",
        point_in_time: bool = True,
        pit_keep_alive: str = "2m",
        serverless: bool = False,
        version: rq.ClusterVersion | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.alias = alias
        self.dialect = dialect or rq.OpenSearchDialect()
        self.knn = knn or KnnSettings()
        self.vector_dims = dict(vector_dims or {})
        self.refresh: str | None = None if refresh in (None, "false") else refresh
        self.update_mode = update_mode
        self.point_in_time = point_in_time
        self.pit_keep_alive = pit_keep_alive
        self.serverless = serverless
        self.version = version
        self._clock = clock
        self._lock = threading.RLock()
        self._physical: str | None = None
        self._shape: IndexShape | None = None
        self._closed = False

    # -- lifecycle -----------------------------------------------------------------------------------

    def ensure(self) -> None:
        """Create ``<alias>-v1`` behind the alias if the alias does not exist; read the live mapping."""
        with self._lock:
            self._check_open()
            if self.version is None and not self.serverless:
                self.version = rq.ClusterVersion.parse(self.client.call(rq.info()).body or {})
            physical = self.resolve_alias()
            if physical is None:
                if self.client.send(rq.index_exists(self.alias)).status == 200:
                    raise IndexMappingError(
                        f"{self.alias!r} is an index, not an alias: pixdex keeps a versioned index "
                        "behind an alias; reindex it into a new name or pick another index name",
                        index=self.alias,
                    )
                self.create_version(1, alias=True)
                physical = self.resolve_alias()
                if physical is None:
                    raise BackendUnavailableError(f"alias {self.alias!r} did not appear after creating its index")
            self._physical = physical
            self._load_shape()

    def create_version(self, version: int, *, alias: bool) -> str:
        """Create ``<alias>-v<version>`` with the current mapping (behind the alias if asked)."""
        name = physical_name(self.alias, version)
        request = self.dialect.create_index(
            name,
            alias=self.alias if alias else None,
            dims=initial_dims(self.vector_dims),
            knn=self.knn,
            phash_bits=self.knn.hamming and not self.serverless and self.dialect.supports_hamming(self.version),
            serverless=self.serverless,
        )
        response = self.client.send(request)
        kind, _ = error_of(response.body)
        # Another process created it first: the same mapping, nothing to do.
        if not (200 <= response.status < 300) and kind != "resource_already_exists_exception":
            raise self.client.error(response, request, IndexMappingError)
        return name

    def resolve_alias(self) -> str | None:
        """The physical index the alias writes to, None when there is no such alias."""
        response = self.client.call(rq.get_alias(self.alias), allow=(404,))
        if response.status == 404 or not isinstance(response.body, Mapping):
            return None
        indexes: dict[str, Mapping[str, Any]] = {
            str(name): (entry.get("aliases") or {}).get(self.alias) or {}
            for name, entry in response.body.items()
            if isinstance(entry, Mapping) and self.alias in (entry.get("aliases") or {})
        }
        if not indexes:
            return None
        if len(indexes) == 1:
            return next(iter(indexes))
        writers = [name for name, spec in indexes.items() if spec.get("is_write_index")]
        if len(writers) != 1:
            raise IndexMappingError(f"alias {self.alias!r} points at {sorted(indexes)} with no single write index")
        return writers[0]

    def close(self) -> None:
        # The transport is shared by the process; only this object stops.
        self._closed = True

    def __enter__(self) -> ClusterIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def drop(self) -> None:
        """Delete every index behind the alias (tests and ``pixdex reindex --drop``)."""
        response = self.client.call(rq.get_alias(self.alias), allow=(404,))
        if response.status == 200 and isinstance(response.body, Mapping):
            for name in response.body:
                self.client.call(rq.delete_index(name), allow=(404,), refused=IndexMappingError)
        self._physical = None
        self._shape = None

    # -- writes --------------------------------------------------------------------------------------

    def upsert(self, doc_id: str, fields: Mapping[str, Any]) -> None:
        result = self.upsert_many([(doc_id, fields)])[0]
        if result is not None:
            raise result

    def upsert_many(self, items: Sequence[tuple[str, Mapping[str, Any]]]) -> list[Exception | None]:
        shape = self._ready()
        results: list[Exception | None] = [None] * len(items)
        try:
            shape = self._map_new_vector_fields(items, shape)
        except PixdexError as exc:
            return [exc] * len(items)
        now = self._now_ms()
        pending: list[tuple[int, list[dict[str, Any]]]] = []
        for pos, (doc_id, fields) in enumerate(items):
            try:
                doc = prepare_fields(doc_id, fields, shape.dims, phash_bits=shape.phash_bits)
            except PixdexError as exc:
                results[pos] = exc
                continue
            doc[UPDATED_FIELD] = now
            pending.append(
                (pos, rq.update_lines(self.alias, doc_id, doc, created_ms=now, mode=self.update_mode))
            )
        for chunk in _chunks(pending):
            self._bulk(chunk, results)
        return results

    def write_lines(self, pending: Sequence[tuple[int, list[dict[str, Any]]]]) -> list[Exception | None]:
        """Send prepared bulk line pairs (reindex copies); one result per pair. A ``create`` of a document
        that already exists counts as done: it only ever fills gaps."""
        results: list[Exception | None] = [None] * len(pending)
        numbered = [(i, lines) for i, (_, lines) in enumerate(pending)]
        for chunk in _chunks(numbered):
            self._bulk(chunk, results)
        return results

    def delete(self, doc_id: str) -> bool:
        self._ready()
        if not isinstance(doc_id, str) or not doc_id:
            return False
        request = rq.delete_doc(self.alias, doc_id, self.refresh)
        response = self.client.call(request, allow=(404,), refused=IndexMappingError)
        if response.status == 404:
            if isinstance(response.body, Mapping) and response.body.get("result") == "not_found":
                return False
            raise self.client.error(response, request, IndexMappingError)
        return True

    def _bulk(self, pending: list[tuple[int, list[dict[str, Any]]]], results: list[Exception | None]) -> None:
        attempt = 0
        while pending:
            lines = [line for _, pair in pending for line in pair]
            try:
                response = self.client.call(rq.bulk(lines, self.refresh), refused=IndexMappingError)
            except PixdexError as exc:
                for pos, _ in pending:
                    results[pos] = exc
                return
            items = (response.body or {}).get("items") or []
            if len(items) != len(pending):
                mismatch = BackendUnavailableError(f"bulk answer has {len(items)} items for {len(pending)} documents")
                for pos, _ in pending:
                    results[pos] = mismatch
                return
            again: list[tuple[int, list[dict[str, Any]]]] = []
            for (pos, pair), item in zip(pending, items, strict=True):
                outcome = next(iter(item.values())) if isinstance(item, Mapping) and item else {}
                status = int(outcome.get("status", 500))
                if 200 <= status < 300 or (status == 409 and "create" in pair[0]):
                    results[pos] = None
                elif status in RETRY_ITEM_STATUSES and attempt < self.client.retry.max_retries:
                    again.append((pos, pair))
                else:
                    results[pos] = self._item_error(pair[0], status, outcome.get("error"))
            if again:
                self.client.sleep(self.client.retry.delay(attempt))
                attempt += 1
            pending = again

    def _item_error(self, action: Mapping[str, Any], status: int, error: Any) -> PixdexError:
        kind, reason = error_of({"error": error})
        doc_id = next(iter(action.values())).get("_id")
        if status in RETRY_ITEM_STATUSES:
            return BackendUnavailableError(f"{self.dialect.name} kept refusing {doc_id!r} ({status} {kind}): {reason}")
        if kind in self.dialect.mapping_errors or status == 400:
            return IndexMappingError(f"{self.dialect.name} refused {doc_id!r} ({kind}): {reason}", id=doc_id)
        return BackendUnavailableError(f"{self.dialect.name} failed {doc_id!r} ({status} {kind}): {reason}")

    def _map_new_vector_fields(
        self, items: Sequence[tuple[str, Mapping[str, Any]]], shape: IndexShape
    ) -> IndexShape:
        """Map vector fields without a dimension yet (an optional CLIP pair) from the first vector given."""
        wanted: dict[str, int] = {}
        for _, fields in items:
            if not isinstance(fields, Mapping):
                continue
            for name in VECTOR_FIELDS:
                value = fields.get(name)
                if value is None or name in shape.dims or name in wanted:
                    continue
                try:
                    wanted[name] = int(unit_vector(value, field=name).size)
                except PixdexError:
                    continue  # the item fails on its own in prepare_fields
        if not wanted:
            return shape
        with self._lock:
            assert self._physical is not None
            for name, dim in wanted.items():
                request = self.dialect.add_vector_field(self.alias, name, dim, self.knn)
                response = self.client.send(request)
                if not 200 <= response.status < 300:
                    # Usually another writer mapped it first, maybe with another dimension: re-read.
                    kind, _ = error_of(response.body)
                    if kind not in self.dialect.mapping_errors:
                        raise self.client.error(response, request, IndexMappingError)
            return self._load_shape()

    # -- reads ---------------------------------------------------------------------------------------

    def get(self, doc_id: str) -> dict[str, Any] | None:
        source = self._get_source(doc_id, excludes=rq.SOURCE_EXCLUDES)
        return None if source is None else strip_internal(source)

    def get_vectors(self, doc_id: str) -> dict[str, npt.NDArray[np.float32]]:
        source = self._get_source(doc_id, includes=tuple(VECTOR_FIELDS))
        if source is None:
            return {}
        return {
            name: np.asarray(value, dtype=np.float32)
            for name, value in source.items()
            if name in VECTOR_FIELDS and value is not None
        }

    def get_vectors_many(self, doc_ids: Sequence[str],
                         fields: Sequence[str]) -> dict[str, dict[str, npt.NDArray[np.float32]]]:
        """One ``_mget`` per chunk of ids instead of a GET per document: a duplicates query reads the
        vectors of dozens of candidates."""
        self._ready()
        wanted = tuple(f for f in dict.fromkeys(fields) if f in VECTOR_FIELDS)
        out: dict[str, dict[str, npt.NDArray[np.float32]]] = {doc_id: {} for doc_id in dict.fromkeys(doc_ids)}
        ids = [doc_id for doc_id in out if isinstance(doc_id, str) and doc_id]
        if not wanted:
            return out
        for start in range(0, len(ids), MGET_CHUNK):
            response = self.client.call(rq.mget(self.alias, ids[start : start + MGET_CHUNK], includes=wanted))
            for doc in response.body.get("docs") or []:
                source = doc.get("_source") if doc.get("found") else None
                if isinstance(source, Mapping) and doc.get("_id") in out:
                    out[doc["_id"]] = {name: np.asarray(value, dtype=np.float32) for name, value in source.items()
                                       if name in wanted and value is not None}
        return out

    def _get_source(
        self, doc_id: str, *, includes: Sequence[str] = (), excludes: Sequence[str] = ()
    ) -> dict[str, Any] | None:
        self._ready()
        if not isinstance(doc_id, str) or not doc_id:
            return None
        request = rq.get_doc(self.alias, doc_id, includes=includes, excludes=excludes)
        response = self.client.call(request, allow=(404,))
        body = response.body if isinstance(response.body, Mapping) else {}
        if response.status == 404:
            if body.get("found") is False:
                return None
            raise self.client.error(response, request, InvalidRequestError)
        return dict(body.get("_source") or {}) if body.get("found") else None

    def count(self, filters: Filters | None = None) -> int:
        self._ready()
        response = self.client.call(rq.count(self.alias, rq.bool_query(filters or Filters())))
        return int(response.body["count"])

    def stats(self) -> dict[str, Any]:
        shape = self._ready()
        return {
            "backend": self.dialect.name,
            "alias": self.alias,
            "index": self._physical,
            "engine_version": ".".join(map(str, self.version.number)) if self.version else None,
            "mapping_version": shape.mapping_version,
            "documents": self.count(),
            "vectors": {name: {"dim": dim} for name, dim in shape.dims.items()},
            "phash_knn": shape.phash_bits,
            "knn_engine": self.dialect.knn_engine(self.knn),
            "update_mode": self.update_mode,
        }

    def search(self, query: SearchQuery) -> SearchResult:
        validate_query(query)
        self._ready()
        shape = query_shape(query)
        cursor = decode_cursor(query.cursor, shape) if query.cursor else None
        pin = _Pin.decode(cursor.pin) if cursor is not None else _Pin(self._now_ms())
        if query.vector is not None:
            return self._knn(query, shape, cursor, pin)
        text_q = None
        if query.text is not None:
            text_q = rq.text_query(query.text, query.match)
            if text_q is None:
                return SearchResult(hits=[], total=0, facets={f: [] for f in query.facets})
        return self._paged(query, shape, cursor, pin, text_q)

    def near_duplicates(
        self, phash: str, max_distance: int, filters: Filters | None = None, size: int = 20
    ) -> list[Hit]:
        phash_to_int(phash)
        if not isinstance(max_distance, int) or isinstance(max_distance, bool) or not 0 <= max_distance <= 64:
            raise InvalidRequestError("max_distance must be an integer from 0 to 64", field="max_distance")
        check_range("size", size, 1, MAX_PAGE_SIZE)
        shape = self._ready()
        filters = filters or Filters()
        if max_distance < PHASH_PARTS:
            ranked = self._hash_scan(phash, max_distance, filters, rq.phash_candidates_query(phash, max_distance))
        elif shape.phash_bits:
            ranked = self._hash_knn(phash, max_distance, filters, size)
        else:
            ranked = self._hash_scan(phash, max_distance, filters, rq.exists_query("phash"))
        ranked = ranked[:size]
        docs = self._docs([doc_id for _, doc_id in ranked])
        return [
            Hit(id=doc_id, score=1.0 - d / 64.0, source="hash", doc=docs[doc_id], distance=d)
            for d, doc_id in ranked
            if doc_id in docs
        ]

    # -- search modes --------------------------------------------------------------------------------

    def _paged(
        self,
        q: SearchQuery,
        shape: str,
        cursor: Cursor | None,
        pin: _Pin,
        text_q: dict[str, Any] | None,
    ) -> SearchResult:
        keyword = text_q is not None
        by_score = keyword and q.sort == "relevance"
        query = rq.bool_query(
            q.filters, must=[text_q] if text_q is not None else (), extra_filters=[rq.pin_clause(pin.created_ms)]
        )
        pit = (pin.pit, self.pit_keep_alive) if pin.pit else None
        after: list[CursorValue] | None = None
        if cursor is not None:
            after = _after_values(cursor, by_score)
            if by_score:
                after = self._fresh_boundary(query, after, pit)
        body = rq.search_body(
            query=query,
            sort=rq.sort_clause(q.sort, by_score=keyword),
            size=q.size + 1,
            search_after=after,
            aggs=rq.facet_aggs(q.facets, q.facet_size) if q.facets else None,
            with_highlight=keyword,
            track_scores=keyword,
            pit=pit,
        )
        result = self._run_search(body)
        raw_hits = result["hits"]["hits"]
        page = raw_hits[: q.size]
        pit_id = _pit_of(result) or pin.pit
        next_cursor = None
        if len(raw_hits) > q.size:
            if pit_id is None and self.point_in_time:
                pit_id = self._open_pit()
            next_pin = _Pin(pin.created_ms, pit_id)
            next_cursor = encode_cursor(Cursor(shape, tuple(page[-1]["sort"]), next_pin.encode()))
        elif pit_id is not None:
            self._close_pit(pit_id)
        hits = [
            Hit(
                id=str(h["_id"]),
                score=float(h.get("_score") or 0.0) if keyword else 1.0,
                source="keyword" if keyword else "filter",
                doc=strip_internal(h.get("_source") or {}),
                highlights=_highlights(h.get("highlight")) if keyword else {},
            )
            for h in page
        ]
        facets = parse_facets(result.get("aggregations") or {}, q.facets, q.facet_size)
        return SearchResult(hits=hits, total=_total(result), facets=facets, next_cursor=next_cursor)

    def _fresh_boundary(
        self, query: dict[str, Any], after: list[CursorValue], pit: tuple[str, str] | None
    ) -> list[CursorValue]:
        """The boundary document's score now: corpus statistics move scores between pages (and page 2
        runs in a point in time opened after page 1), so the old score could skip or repeat hits."""
        body = rq.search_body(
            query={"bool": {"must": [query], "filter": [rq.ids_query([str(after[1])])]}},
            sort=None,
            size=1,
            source=False,
            pit=pit,
        )
        body.pop("track_total_hits")
        hits = self._run_search(body)["hits"]["hits"]
        if hits and hits[0].get("_score") is not None:
            return [float(hits[0]["_score"]), after[1]]
        return after

    def _knn(self, q: SearchQuery, shape: str, cursor: Cursor | None, pin: _Pin) -> SearchResult:
        vq = q.vector
        assert vq is not None  # checked by the caller
        vector = unit_vector(vq.vector, field="vector", on_error=InvalidRequestError)
        empty = SearchResult(hits=[], total=0, facets={f: [] for f in q.facets})
        dim = self._dims().get(vq.field)
        if dim is None:
            return empty
        if vector.size != dim:
            raise InvalidRequestError(
                f"query vector has dimension {vector.size}; {vq.field} has {dim}",
                field="vector", expected=dim, got=int(vector.size),
            )
        filter_query = rq.bool_query(q.filters, extra_filters=[rq.pin_clause(pin.created_ms)])
        # Many hits for one page (semantic and similar rank 1000 for totals and facets): rank them on doc
        # values and read only the page's documents, instead of 1000 stored documents per search.
        by_values = vq.k > RANK_ON_DOC_VALUES_FACTOR * q.size
        request = self.dialect.knn_search(
            self.alias,
            field_name=vq.field,
            vector=vector.astype(np.float64).tolist(),
            k=vq.k,
            filter_query=filter_query,
            knn=self.knn,
            version=self.version,
            source=not by_values,
            docvalue_fields=rq.RANKING_FIELDS if by_values else (),
        )
        raw_hits = self.client.call(request).body["hits"]["hits"][: vq.k]
        ranked: list[_Ranked] = []
        for h in raw_hits:
            similarity = self.dialect.cosine(float(h["_score"]), self.knn)
            if vq.min_similarity is not None and similarity < vq.min_similarity:
                continue
            doc = rq.ranking_doc(h.get("fields") or {}) if by_values else strip_internal(h.get("_source") or {})
            ranked.append(_Ranked(similarity, str(h["_id"]), doc, _upload_ms(doc)))
        if q.sort == "relevance":
            ranked.sort(key=lambda r: (-r.score, r.id))
        else:
            ranked.sort(key=lambda r: (r.sort_ms, r.id), reverse=q.sort == "newest")
        start = _resume_position(ranked, cursor, q.sort) if cursor is not None else 0
        page = ranked[start : start + q.size]
        next_cursor = None
        if start + q.size < len(ranked) and page:
            last = page[-1]
            after: tuple[CursorValue, ...] = (
                (last.score, last.id) if q.sort == "relevance" else (last.sort_ms, last.id)
            )
            next_cursor = encode_cursor(Cursor(shape, after, pin.encode()))
        if by_values and page:
            stored = self._docs([r.id for r in page])
            # A document deleted since the ranking drops out of its page, as on the embedded index.
            page = [replace(r, doc=stored[r.id]) for r in page if r.id in stored]
        hits = [Hit(id=r.id, score=r.score, source="vector", doc=r.doc) for r in page]
        facets = facets_from_docs([r.doc for r in ranked], q.facets, q.facet_size)
        return SearchResult(hits=hits, total=len(ranked), facets=facets, next_cursor=next_cursor)

    def _hash_scan(
        self, phash: str, max_distance: int, filters: Filters, candidates: dict[str, Any]
    ) -> list[tuple[int, str]]:
        """Exact: every candidate's stored hash is compared on the client."""
        query = rq.bool_query(filters, extra_filters=[candidates])
        found: list[tuple[int, str]] = []
        for hit in self._scan(query, ["phash"]):
            stored = (hit.get("_source") or {}).get("phash")
            if not isinstance(stored, str):
                continue
            d = hamming(phash, stored)
            if d <= max_distance:
                found.append((d, str(hit["_id"])))
        found.sort()
        return found

    def _hash_knn(self, phash: str, max_distance: int, filters: Filters, size: int) -> list[tuple[int, str]]:
        """Hamming k-NN, widened until the nearest ``size`` (ties by id) are certain to be among the hits."""
        filter_query = rq.bool_query(filters, extra_filters=[rq.exists_query("phash")])
        k = min(max(size * 2, size + 16), MAX_KNN_K)
        while True:
            request = self.dialect.hamming_search(
                self.alias, phash=phash, k=k, filter_query=filter_query, version=self.version
            )
            hits = self.client.call(request).body["hits"]["hits"]
            scored = sorted(
                (hamming(phash, h["_source"]["phash"]), str(h["_id"]))
                for h in hits
                if isinstance((h.get("_source") or {}).get("phash"), str)
            )
            within = [s for s in scored if s[0] <= max_distance]
            if len(hits) < k or k >= MAX_KNN_K or not scored:
                return within
            farthest = scored[-1][0]
            needed = within[size - 1][0] if len(within) >= size else max_distance
            # Everything nearer than the farthest hit is present; ties at that distance may not be.
            if farthest > needed:
                return within
            k = min(k * 4, MAX_KNN_K)

    def _scan(self, query: dict[str, Any], source: list[str]) -> Iterator[dict[str, Any]]:
        after: list[Any] | None = None
        while True:
            body = rq.search_body(
                query=query, sort=[{ID_FIELD: {"order": "asc"}}], size=SCAN_PAGE, search_after=after, source=source
            )
            body.pop("track_total_hits")
            hits = self._run_search(body)["hits"]["hits"]
            yield from hits
            if len(hits) < SCAN_PAGE:
                return
            after = hits[-1]["sort"]

    def _docs(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        if not ids:
            return {}
        body = rq.search_body(query=rq.ids_query(ids), sort=None, size=len(ids))
        body.pop("track_total_hits")
        hits = self._run_search(body)["hits"]["hits"]
        return {str(h["_id"]): strip_internal(h.get("_source") or {}) for h in hits}

    def _run_search(self, body: dict[str, Any]) -> dict[str, Any]:
        request = rq.search(self.alias, body)
        response = self.client.send(request)
        if 200 <= response.status < 300:
            result: dict[str, Any] = response.body
            return result
        kind, _ = error_of(response.body)
        if "pit" in body and (kind in ("search_context_missing_exception", "illegal_argument_exception")
                              or response.status == 404):
            raise InvalidRequestError("cursor expired: run the search again", field="cursor")
        raise self.client.error(response, request, InvalidRequestError)

    def _open_pit(self) -> str | None:
        """A point in time for the next pages, or None: the creation pin alone then keeps them stable
        against additions (not against updates and deletes).

        The page itself has been answered, so a refusal here must not fail it. Every page 1 with more
        hits opens one, and a node holds at most ``search.max_open_pit_context`` (300 by default) for
        their keep-alive: a busy API reaches that limit (429 "too many Point In Time contexts"), and so
        does an overloaded node. Those are tried once, not retried: waiting would not free a context.
        """
        request = self.dialect.create_pit(self.alias, self.pit_keep_alive)
        try:
            response = self.client.transport.perform(request)
        except TransportError:
            return None
        if 200 <= response.status < 300 and isinstance(response.body, Mapping):
            return self.dialect.pit_id(response.body)
        if response.status not in RETRY_STATUSES:
            # No point in time on this cluster at all: stop asking.
            self.point_in_time = False
        return None

    def _close_pit(self, pit_id: str) -> None:
        # Best effort: an unclosed point in time expires after its keep-alive anyway.
        self.client.send(self.dialect.delete_pit(pit_id))

    # -- helpers -------------------------------------------------------------------------------------

    def _ready(self) -> IndexShape:
        self._check_open()
        shape = self._shape
        if shape is None:
            self.ensure()
            shape = self._shape
        assert shape is not None
        return shape

    def _dims(self) -> Mapping[str, int]:
        return self._ready().dims

    def _load_shape(self) -> IndexShape:
        assert self._physical is not None
        response = self.client.call(rq.get_mapping(self._physical), refused=IndexMappingError)
        body: Mapping[str, Any] = response.body if isinstance(response.body, Mapping) else {}
        entry: Mapping[str, Any] = body.get(self._physical) or next(iter(body.values()), {})
        shape = read_shape(entry, self.dialect.vector_type, self.dialect.dim_key)
        if shape.mapping_version > MAPPING_VERSION:
            raise IndexMappingError(
                f"index {self._physical} has mapping version {shape.mapping_version}, newer than this "
                f"code understands ({MAPPING_VERSION})",
                index=self._physical,
            )
        if shape.mapping_version < MAPPING_VERSION:
            raise IndexMappingError(
                f"index {self._physical} has mapping version {shape.mapping_version}; this code needs "
                f"{MAPPING_VERSION}: run `pixdex reindex`",
                index=self._physical,
            )
        self._shape = shape
        return shape

    def _check_open(self) -> None:
        if self._closed:
            raise BackendUnavailableError("index is closed", alias=self.alias)

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    @property
    def physical(self) -> str | None:
        return self._physical

    def attach(self, physical: str) -> IndexShape:
        """Address one physical index directly (reindex targets) and read its mapping."""
        with self._lock:
            self._physical = physical
            return self._load_shape()


# -- result parsing (pure) ---------------------------------------------------------------------------


def parse_facets(aggs: Mapping[str, Any], names: Sequence[str], size: int) -> dict[str, list[FacetBucket]]:
    out: dict[str, list[FacetBucket]] = {}
    for name in names:
        if name == "year":
            counts: Counter[str] = Counter()
            for bucket in (aggs.get("year_taken") or {}).get("buckets", []):
                counts[str(bucket["key_as_string"])] += int(bucket["doc_count"])
            for bucket in ((aggs.get("year_uploaded") or {}).get("years") or {}).get("buckets", []):
                counts[str(bucket["key_as_string"])] += int(bucket["doc_count"])
            pairs = sorted(((v, c) for v, c in counts.items() if c > 0), key=lambda vc: (-vc[1], vc[0]))
        else:
            pairs = [(str(b["key"]), int(b["doc_count"])) for b in (aggs.get(name) or {}).get("buckets", [])]
        out[name] = [FacetBucket(value=v, count=c) for v, c in pairs[:size]]
    return out


def facets_from_docs(
    docs: Sequence[Mapping[str, Any]], names: Sequence[str], size: int
) -> dict[str, list[FacetBucket]]:
    """Facets of an in-memory result set (the k hits of a vector search), counted like the aggregations."""
    out: dict[str, list[FacetBucket]] = {}
    for name in names:
        counts: Counter[str] = Counter()
        for doc in docs:
            if name == "labels":
                labels = doc.get("labels")
                if isinstance(labels, list):
                    counts.update({str(x) for x in labels})
            elif name == "year":
                year = _doc_year(doc)
                if year is not None:
                    counts[str(year)] += 1
            else:
                value = doc.get(name)
                if isinstance(value, str):
                    counts[value] += 1
        pairs = sorted(counts.items(), key=lambda vc: (-vc[1], vc[0]))[:size]
        out[name] = [FacetBucket(value=v, count=c) for v, c in pairs]
    return out


def _doc_year(doc: Mapping[str, Any]) -> int | None:
    for name in ("taken_at", "uploaded_at"):
        value = doc.get(name)
        if value is not None:
            try:
                return parse_instant(value, name, IndexMappingError).astimezone(UTC).year
            except PixdexError:
                return None
    return None


def _upload_ms(doc: Mapping[str, Any]) -> int:
    value = doc.get("uploaded_at")
    if value is None:
        return UNDATED_MS
    try:
        return instant_us(value, "uploaded_at", IndexMappingError) // 1000
    except PixdexError:
        return UNDATED_MS


def _highlights(raw: Any) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    if not isinstance(raw, Mapping):
        return out
    for name in HIGHLIGHT_FIELDS:
        fragments = [f for f in raw.get(name) or [] if isinstance(f, str) and rq.MARK_OPEN in f]
        if fragments:
            out[name] = [_render(fragments[0])]
    return out


def _render(fragment: str) -> str:
    """HTML-escaped text with the engine's match markers as <mark> tags, safe to render as-is."""
    escaped = html.escape(fragment, quote=False)
    return escaped.replace(rq.MARK_OPEN, HIGHLIGHT_PRE).replace(rq.MARK_CLOSE, HIGHLIGHT_POST)


def _pit_of(result: Mapping[str, Any]) -> str | None:
    """The point in time id a search answered with (it may change between pages; the latest counts)."""
    value = result.get("pit_id") or result.get("id")
    return value if isinstance(value, str) and value else None


def _total(result: Mapping[str, Any]) -> int:
    total = result["hits"].get("total")
    if isinstance(total, Mapping):
        return int(total.get("value", 0))
    return int(total or 0)


def _after_values(cursor: Cursor, by_score: bool) -> list[CursorValue]:
    after = cursor.after
    if len(after) != 2 or not isinstance(after[1], str):
        raise InvalidRequestError("invalid cursor", field="cursor")
    if by_score and not isinstance(after[0], int | float):
        raise InvalidRequestError("invalid cursor", field="cursor")
    if not by_score and not isinstance(after[0], int):
        raise InvalidRequestError("invalid cursor", field="cursor")
    return list(after)


def _resume_position(ranked: list[_Ranked], cursor: Cursor, sort: str) -> int:
    """Index of the first hit after the cursor's boundary in an in-memory ranking."""
    after = _after_values(cursor, sort == "relevance")
    key, after_id = after[0], str(after[1])
    for i, r in enumerate(ranked):
        if r.id == after_id:
            return i + 1
    if sort == "relevance":
        boundary = (-float(key), after_id)
        return next((i for i, r in enumerate(ranked) if (-r.score, r.id) > boundary), len(ranked))
    ms = int(key)
    if sort == "newest":
        return next((i for i, r in enumerate(ranked) if (r.sort_ms, r.id) < (ms, after_id)), len(ranked))
    return next((i for i, r in enumerate(ranked) if (r.sort_ms, r.id) > (ms, after_id)), len(ranked))


def _chunks(
    pending: Sequence[tuple[int, list[dict[str, Any]]]],
) -> Iterator[list[tuple[int, list[dict[str, Any]]]]]:
    chunk: list[tuple[int, list[dict[str, Any]]]] = []
    size = 0
    for entry in pending:
        entry_bytes = sum(len(json.dumps(line, separators=(",", ":"))) + 1 for line in entry[1])
        if chunk and (len(chunk) >= BULK_MAX_ITEMS or size + entry_bytes > BULK_MAX_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(entry)
        size += entry_bytes
    if chunk:
        yield chunk
