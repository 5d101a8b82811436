"""The query function's HTTP API: powertools' APIGatewayHttpResolver with request validation.

Routes declare typed, bounded parameters, so bad input is a 422 naming the field before any backend is
touched, and the OpenAPI document is generated from the same declarations. Identity comes only from the
authorizer context that API Gateway puts in the event, never from anything the client sends."""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response, content_types
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from aws_lambda_powertools.event_handler.openapi.params import Body, Path, Query
from aws_lambda_powertools.metrics import MetricUnit
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from pixdex import __version__, hashing, imaging
from pixdex.document import DEFAULT_TENANT, document_id
from pixdex.duplicates import parse_signals
from pixdex.errors import (
    CapabilityDisabledError,
    ForbiddenError,
    ImageTooLargeError,
    InvalidRequestError,
    NotFoundError,
    PixdexError,
)
from pixdex.handlers import is_index_error
from pixdex.index.base import Filters
from pixdex.query import SearchRequest, SearchService, parse_facets, split_list
from pixdex.runtime import Runtime
from pixdex.settings import Settings

if TYPE_CHECKING:
    from pixdex.models.analysis import ImageAnalyzer

MAX_QUERY_LENGTH = 512
MAX_CURSOR_LENGTH = 2048
MAX_HAMMING_RADIUS = 24
ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
_TENANT_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Decode sizes: the classifier needs little; OCR and faces read better from more pixels.
_MODEL_SIDE = 512
_RECOGNIZE_SIDE = 1280
_VECTOR_KEYS = frozenset({"image_vector", "crop_vector", "caption_vector", "clip_vector", "face_vectors"})
# Lambda's synchronous payload limit is 6 MB; an inline image must fit in it with its base64 overhead.
MAX_INLINE_IMAGE_BYTES = 4 * 1024 * 1024
UPLOAD_TYPES = ("image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp", "image/tiff",
                "image/heic", "image/heif", "image/avif")

SortParam = Literal["relevance", "newest", "oldest"]
ModeParam = Literal["keyword", "semantic", "hybrid"]
ImageId = Annotated[str, Path(pattern=ID_PATTERN, description="image id")]
_Count = Field(None, ge=0, le=10**12)
_Date = Field(None, max_length=40, description="ISO 8601 date, or date-time with a zone")


class FilterParams(BaseModel):
    """Filters, facets and paging shared by every listing route."""

    model_config = ConfigDict(extra="ignore")

    format: str | None = Field(None, max_length=200, description="any of these formats, comma-separated")
    labels: str | None = Field(None, max_length=1000, description="all of these labels, comma-separated")
    camera: str | None = Field(None, max_length=500, description="any of these cameras, comma-separated")
    min_width: int | None = _Count
    max_width: int | None = _Count
    min_height: int | None = _Count
    max_height: int | None = _Count
    min_bytes: int | None = _Count
    max_bytes: int | None = _Count
    taken_after: str | None = _Date
    taken_before: str | None = _Date
    uploaded_after: str | None = _Date
    uploaded_before: str | None = _Date
    has_text: bool | None = None
    min_faces: int | None = Field(None, ge=0, le=1000)
    max_faces: int | None = Field(None, ge=0, le=1000)
    facets: str | None = Field(None, max_length=100, description="format,labels,camera,year")
    size: int = Field(20, ge=1, le=100)
    cursor: str | None = Field(None, max_length=MAX_CURSOR_LENGTH)

    def to_request(self, tenant: str, q: str | None = None, sort: SortParam = "relevance") -> SearchRequest:
        filters = Filters(
            tenant=tenant,
            formats=tuple(f.lower() for f in split_list(self.format, name="format")),
            labels=tuple(label.lower() for label in split_list(self.labels, name="labels")),
            cameras=split_list(self.camera, name="camera"),
            min_width=self.min_width, max_width=self.max_width,
            min_height=self.min_height, max_height=self.max_height,
            min_bytes=self.min_bytes, max_bytes=self.max_bytes,
            taken_after=_date(self.taken_after, "taken_after"),
            taken_before=_date(self.taken_before, "taken_before", end=True),
            uploaded_after=_date(self.uploaded_after, "uploaded_after"),
            uploaded_before=_date(self.uploaded_before, "uploaded_before", end=True),
            has_text=self.has_text, min_faces=self.min_faces, max_faces=self.max_faces,
        )
        return SearchRequest(q=q, filters=filters, facets=parse_facets(self.facets), size=self.size,
                             cursor=self.cursor, sort=sort)


class ImageSource(BaseModel):
    """A query image given by reference or inline (base64); raw image bodies are accepted too."""

    model_config = ConfigDict(extra="forbid")

    image: str | None = Field(None, max_length=MAX_INLINE_IMAGE_BYTES * 4 // 3 + 4, description="base64 image")
    image_id: str | None = Field(None, pattern=ID_PATTERN)
    s3_key: str | None = Field(None, min_length=1, max_length=1024)


class UploadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    filename: str = Field(min_length=1, max_length=255, pattern=r"^[^/\\\x00-\x1f]+$")
    content_type: str = Field(max_length=100)


def create_app(runtime: Runtime, *, logger: Logger | None = None,
               metrics: Metrics | None = None) -> APIGatewayHttpResolver:
    app = APIGatewayHttpResolver(enable_validation=True)
    log = logger or Logger(service="pixdex-query")
    settings = runtime.settings

    def service() -> SearchService:
        # Built on first use so a cold start that only answers /health never opens the index.
        return SearchService(runtime.settings, runtime.index, runtime.store, runtime.embedder)

    def tenant() -> str:
        """The caller's tenant, from the JWT authorizer's claims (or a Lambda authorizer's context)."""
        if not settings.multi_tenant:
            return DEFAULT_TENANT
        authorizer = app.current_event.raw_event.get("requestContext", {}).get("authorizer") or {}
        claims = (authorizer.get("jwt") or {}).get("claims") or {}
        value = claims.get(settings.tenant_claim) or (authorizer.get("lambda") or {}).get("tenant")
        if not isinstance(value, str) or not _TENANT_RE.match(value):
            raise ForbiddenError(f"the token carries no valid {settings.tenant_claim!r} claim")
        return value

    def analyzer() -> ImageAnalyzer:
        found = runtime.analyzer
        if found is None:
            raise CapabilityDisabledError("image models are switched off in this deployment")
        return found

    def request_source() -> tuple[bytes | None, str | None, str | None, str | None]:
        """What image a request names: (inline bytes, indexed image id, bucket, key) — a raw image body, or
        JSON with exactly one of image (base64), image_id, s3_key. Nothing is fetched yet."""
        event = app.current_event
        body = event.body or ""
        ctype = (event.headers.get("content-type") or "").split(";")[0].strip().lower()
        if ctype.startswith("image/") or ctype == "application/octet-stream":
            return (base64.b64decode(body) if event.is_base64_encoded else body.encode("latin-1")), None, None, None
        try:
            text = base64.b64decode(body).decode() if event.is_base64_encoded else body
            source = ImageSource.model_validate_json(text or "{}")
        except (ValueError, binascii.Error) as exc:
            raise InvalidRequestError(f"body: expected an image or JSON with image, image_id or s3_key ({exc})",
                                      field="body") from None
        given = [n for n in ("image", "image_id", "s3_key") if getattr(source, n)]
        if len(given) != 1:
            raise InvalidRequestError("body: give exactly one of image, image_id, s3_key", field="body")
        if source.image is not None:
            try:
                return base64.b64decode(source.image, validate=True), None, None, None
            except binascii.Error:
                raise InvalidRequestError("image: not valid base64", field="image") from None
        who = tenant()
        if source.image_id is not None:
            doc = service().document(source.image_id, who)
            return None, source.image_id, doc["bucket"], doc["key"]
        key = str(source.s3_key)
        if settings.tenant_of_key(key) != who:
            raise NotFoundError(f"no object {key!r}", key=key)
        return None, None, settings.originals_bucket, key

    def load_image(data: bytes | None, bucket: str | None, key: str | None, max_side: int) -> Image.Image:
        if data is not None:
            return _decode_inline(data, max_side, settings)
        assert bucket is not None and key is not None
        stored, _ = runtime.store.get(bucket, key, max_bytes=settings.limits.max_bytes)
        return imaging.decode(stored, settings.limits, target_size=max_side).image

    def request_image(max_side: int) -> Image.Image:
        data, _, bucket, key = request_source()
        return load_image(data, bucket, key, max_side)

    @app.exception_handler(PixdexError)  # type: ignore[untyped-decorator]
    def _pixdex_error(exc: PixdexError) -> Response[str]:
        if exc.http_status >= 500:
            log.exception("request failed", error=exc.code)
        if metrics is not None and is_index_error(exc):
            metrics.add_metric(name="IndexErrors", unit=MetricUnit.Count, value=1)
        return _json(exc.http_status, exc.to_dict())

    @app.exception_handler(RequestValidationError)  # type: ignore[untyped-decorator]
    def _invalid(exc: RequestValidationError) -> Response[str]:
        fields = [
            {"field": ".".join(str(p) for p in err.get("loc", ())[1:] if p not in ("params", "body_params")),
             "reason": err.get("msg") or err.get("type")}
            for err in exc.errors()
        ]
        message = "; ".join(f"{f['field']}: {f['reason']}" for f in fields) or "invalid request"
        return _json(422, {"error": "invalid_request", "message": message, "fields": fields})

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__}

    @app.get("/openapi.json")
    def openapi() -> Response[str]:
        return Response(status_code=200, content_type=content_types.APPLICATION_JSON,
                        body=app.get_openapi_json_schema(title="pixdex", version=__version__))

    @app.get("/search")
    def search(
        params: Annotated[FilterParams, Query()],
        q: Annotated[str | None, Query(max_length=MAX_QUERY_LENGTH, description="keywords")] = None,
        mode: Annotated[ModeParam, Query(description="keyword (BM25), semantic (vectors) or both fused")] = "hybrid",
        sort: Annotated[SortParam, Query()] = "relevance",
        min_score: Annotated[float | None, Query(ge=-1.0, le=1000.0, description=(
            "keyword: lowest BM25 score; semantic and hybrid: lowest cosine similarity"))] = None,
    ) -> dict[str, Any]:
        request = replace(params.to_request(tenant(), q=q, sort=sort), mode=mode, min_score=min_score)
        return service().search(request)

    @app.get("/images/<image_id>")
    def image(image_id: ImageId) -> dict[str, Any]:
        return service().image(image_id, tenant())

    @app.delete("/images/<image_id>")
    def delete_image(image_id: ImageId) -> Response[str]:
        """Deletes the original; the remove function then deletes the derivatives and the document."""
        doc = service().document(image_id, tenant())
        runtime.store.delete(doc["bucket"], doc["key"])
        return _json(202, {"id": image_id, "status": "deleting"})

    @app.get("/images/<image_id>/similar")
    def similar(
        image_id: ImageId,
        params: Annotated[FilterParams, Query()],
        min_similarity: Annotated[float | None, Query(ge=-1.0, le=1.0)] = None,
    ) -> dict[str, Any]:
        request = params.to_request(tenant())
        return service().similar(image_id, tenant(), request, min_similarity=min_similarity)

    @app.get("/images/<image_id>/duplicates")
    def duplicates(
        image_id: ImageId,
        max_distance: Annotated[int | None, Query(ge=0, le=MAX_HAMMING_RADIUS, description=(
            "pHash Hamming radius that alone makes a copy (default PIXDEX_DUPLICATE_MAX_DISTANCE)"))] = None,
        min_similarity: Annotated[float | None, Query(ge=-1.0, le=1.0, description=(
            "image-vector cosine that alone makes a copy (default PIXDEX_DUPLICATE_MIN_SIMILARITY)"))] = None,
        signals: Annotated[str | None, Query(max_length=100, description=(
            "which signals count: any of sha256,phash,image_vector (default all)"))] = None,
        size: Annotated[int, Query(ge=1, le=100)] = 20,
    ) -> dict[str, Any]:
        """Exact copies (SHA-256) and near copies (pHash, image vector, or both together); each near hit says
        which signals matched, with its pHash distance and vector similarity."""
        return service().duplicates(image_id, tenant(), max_distance, size, min_similarity=min_similarity,
                                    signals=parse_signals(signals))

    @app.post("/uploads")
    def uploads(request: Annotated[UploadRequest, Body()]) -> Response[str]:
        """A presigned POST: the client uploads straight to the originals bucket within the policy's limits."""
        if request.content_type not in UPLOAD_TYPES:
            raise InvalidRequestError(f"content_type: expected one of {', '.join(UPLOAD_TYPES)}",
                                      field="content_type")
        who = tenant()
        # A fresh folder per upload: names never collide, and the key cannot escape the tenant's prefix.
        prefix = f"{who}/" if settings.multi_tenant else ""
        key = f"{prefix}uploads/{uuid.uuid4().hex}/{request.filename}"
        post = runtime.store.presigned_post(
            settings.originals_bucket, key, content_type=request.content_type,
            max_bytes=settings.max_upload_bytes, ttl_seconds=settings.presign_ttl_seconds,
        )
        return _json(201, {
            "id": document_id(settings.originals_bucket, key), "key": key, "method": "POST", **post,
            "max_bytes": settings.max_upload_bytes, "expires_in": settings.presign_ttl_seconds,
        })

    @app.post("/search/image")
    def search_by_image(params: Annotated[FilterParams, Query()]) -> dict[str, Any]:
        """Query by example: the images most similar to the one given (uploaded, by id, or by key)."""
        request = params.to_request(tenant())
        data, doc_id, bucket, key = request_source()
        # An indexed image already has its vector and hashes: no download, no model run.
        indexed = (runtime.index.get(doc_id) or {}) if doc_id else {}
        vectors = dict(runtime.index.get_vectors(doc_id)) if doc_id else {}
        vector, crop_vector = vectors.get("image_vector"), vectors.get("crop_vector")
        phash, sha256 = indexed.get("phash"), indexed.get("sha256")
        if vector is None:
            if data is None:
                assert bucket is not None and key is not None
                data, _ = runtime.store.get(bucket, key, max_bytes=settings.limits.max_bytes)
                image = imaging.decode(data, settings.limits, target_size=_MODEL_SIDE).image
            else:
                image = _decode_inline(data, _MODEL_SIDE, settings)
            # The query's own hashes let copies of it (resized, recompressed, recoloured) come first.
            phash, sha256 = hashing.phash(image), hashing.sha256_hex(data)
            vectors = analyzer().image_vectors(image)
            vector, crop_vector = vectors["image_vector"], vectors.get("crop_vector")
        return service().by_image(vector, request, phash=phash, sha256=sha256, exclude_id=doc_id,
                                  crop_vector=crop_vector)

    @app.post("/classify")
    def classify() -> dict[str, Any]:
        """Labels for an image, without indexing it."""
        result = analyzer().classify(request_image(_MODEL_SIDE))
        return {k: v for k, v in result.items() if k != "image_vector"}

    @app.post("/recognize")
    def recognize() -> dict[str, Any]:
        """Everything the analyze function would find in an image (labels, text, faces, safety), without
        indexing it. Vectors are not returned."""
        result = analyzer().recognize(request_image(_RECOGNIZE_SIDE))
        return {k: v for k, v in result.items() if k not in _VECTOR_KEYS}

    @app.get("/images/<image_id>/faces")
    def faces(image_id: ImageId) -> dict[str, Any]:
        doc = service().document(image_id, tenant())
        return {"id": image_id, "face_count": doc.get("face_count", 0), "faces": doc.get("faces", []),
                "analyzed": "faces" in (doc.get("models") or {}) or "face_count" in doc}

    @app.get("/faces/search")
    def face_search(
        image_id: Annotated[str, Query(pattern=ID_PATTERN)],
        face: Annotated[int, Query(ge=0, le=100, description="which face of that image")] = 0,
        min_similarity: Annotated[float, Query(ge=-1.0, le=1.0)] = 0.93,
        size: Annotated[int, Query(ge=1, le=100)] = 20,
    ) -> dict[str, Any]:
        """Images that contain the same person as face N of an image (cosine on 128-d face vectors)."""
        return service().same_person(image_id, tenant(), face, min_similarity, size)

    @app.get("/stats")
    def stats() -> dict[str, Any]:
        models = runtime.analyzer.model_versions if runtime.analyzer is not None else {}
        return {**service().stats(tenant()), "models": models, "version": __version__}

    return app


def create_lambda_handler(runtime: Runtime) -> Any:
    logger = Logger(service="pixdex-query")
    metrics = Metrics(namespace="pixdex", service="pixdex-query")
    tracer = Tracer(service="pixdex-query")
    app = create_app(runtime, logger=logger, metrics=metrics)

    @logger.inject_lambda_context(correlation_id_path="requestContext.requestId")
    @tracer.capture_lambda_handler
    @metrics.log_metrics
    def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        return app.resolve(event, context)

    return lambda_handler


def _decode_inline(data: bytes, max_side: int, settings: Settings) -> Image.Image:
    if len(data) > MAX_INLINE_IMAGE_BYTES:
        raise ImageTooLargeError(
            f"inline images are limited to {MAX_INLINE_IMAGE_BYTES} bytes; upload larger ones (POST /uploads) and "
            "pass s3_key", limit=MAX_INLINE_IMAGE_BYTES)
    return imaging.decode(data, settings.limits, target_size=max_side).image


def _json(status: int, body: Any) -> Response[str]:
    return Response(status_code=status, content_type=content_types.APPLICATION_JSON,
                    body=json.dumps(body, default=str))


def _date(raw: str | None, name: str, *, end: bool = False) -> str | None:
    """Accept a date or a date-time; a bare date as an upper bound means the end of that day."""
    if raw is None:
        return None
    try:
        if len(raw) == 10:
            day = datetime.fromisoformat(raw).date().isoformat()
            return f"{day}T23:59:59+00:00" if end else f"{day}T00:00:00+00:00"
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequestError(f"{name}: {raw!r} is not an ISO 8601 date", field=name) from None
    if parsed.tzinfo is None:
        raise InvalidRequestError(f"{name}: give a time zone (e.g. Z) with a date-time", field=name)
    return parsed.isoformat()
