"""The query function's HTTP API: powertools' APIGatewayHttpResolver with request validation.

Routes are declared with typed, bounded parameters, so bad input is a 422 naming the field before any
backend is touched; the OpenAPI document is generated from the same declarations."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Literal

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response, content_types
from aws_lambda_powertools.event_handler.openapi.params import Path, Query

from pixdex import __version__
from pixdex.errors import InvalidRequestError, PixdexError
from pixdex.index.base import Filters
from pixdex.query import SearchRequest, SearchService, parse_facets, split_list
from pixdex.runtime import Runtime

MAX_QUERY_LENGTH = 512
MAX_CURSOR_LENGTH = 2048
ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"

SortParam = Literal["relevance", "newest", "oldest"]
Int = Annotated[int | None, Query(ge=0, le=10**12)]
DateParam = Annotated[str | None, Query(max_length=40, description="ISO 8601 date or date-time")]


def create_app(runtime: Runtime, *, logger: Logger | None = None) -> APIGatewayHttpResolver:
    app = APIGatewayHttpResolver(enable_validation=True)
    log = logger or Logger(service="pixdex-query")

    def service() -> SearchService:
        # Built on first use so a cold start that only answers /health never opens the index.
        return SearchService(runtime.settings, runtime.index, runtime.store)

    @app.exception_handler(PixdexError)
    def _pixdex_error(exc: PixdexError) -> Response[str]:
        if exc.http_status >= 500:
            log.exception("request failed", error=exc.code)
        return Response(
            status_code=exc.http_status,
            content_type=content_types.APPLICATION_JSON,
            body=json.dumps(exc.to_dict(), default=str),
        )

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__}

    @app.get("/openapi.json")
    def openapi() -> Response[str]:
        return Response(
            status_code=200,
            content_type=content_types.APPLICATION_JSON,
            body=app.get_openapi_json_schema(title="pixdex", version=__version__),
        )

    @app.get("/search")
    def search(
        q: Annotated[str | None, Query(max_length=MAX_QUERY_LENGTH, description="keywords")] = None,
        format: Annotated[str | None, Query(max_length=200, description="comma-separated formats")] = None,  # noqa: A002
        labels: Annotated[str | None, Query(max_length=1000, description="all of these labels")] = None,
        camera: Annotated[str | None, Query(max_length=500, description="any of these cameras")] = None,
        min_width: Int = None,
        max_width: Int = None,
        min_height: Int = None,
        max_height: Int = None,
        min_bytes: Int = None,
        max_bytes: Int = None,
        taken_after: DateParam = None,
        taken_before: DateParam = None,
        uploaded_after: DateParam = None,
        uploaded_before: DateParam = None,
        has_text: Annotated[bool | None, Query()] = None,
        min_faces: Annotated[int | None, Query(ge=0, le=1000)] = None,
        max_faces: Annotated[int | None, Query(ge=0, le=1000)] = None,
        facets: Annotated[str | None, Query(max_length=100, description="format,labels,camera,year")] = None,
        sort: Annotated[SortParam, Query()] = "relevance",
        size: Annotated[int, Query(ge=1, le=100)] = 20,
        cursor: Annotated[str | None, Query(max_length=MAX_CURSOR_LENGTH)] = None,
    ) -> dict[str, Any]:
        filters = Filters(
            formats=tuple(f.lower() for f in split_list(format, name="format")),
            labels=tuple(label.lower() for label in split_list(labels, name="labels")),
            cameras=split_list(camera, name="camera"),
            min_width=min_width,
            max_width=max_width,
            min_height=min_height,
            max_height=max_height,
            min_bytes=min_bytes,
            max_bytes=max_bytes,
            taken_after=_date(taken_after, "taken_after"),
            taken_before=_date(taken_before, "taken_before", end=True),
            uploaded_after=_date(uploaded_after, "uploaded_after"),
            uploaded_before=_date(uploaded_before, "uploaded_before", end=True),
            has_text=has_text,
            min_faces=min_faces,
            max_faces=max_faces,
        )
        request = SearchRequest(
            q=q, filters=filters, facets=parse_facets(facets), size=size, cursor=cursor, sort=sort
        )
        return service().search(request)

    @app.get("/images/<image_id>")
    def image(image_id: Annotated[str, Path(pattern=ID_PATTERN)]) -> dict[str, Any]:
        return service().image(image_id)

    return app


def _date(raw: str | None, name: str, *, end: bool = False) -> str | None:
    """Accept a date or a date-time; a bare date as an upper bound means the end of that day."""
    if raw is None:
        return None
    try:
        if len(raw) == 10:
            day = datetime.fromisoformat(raw)
            return f"{raw}T23:59:59+00:00" if end else f"{day.date().isoformat()}T00:00:00+00:00"
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequestError(f"{name}: {raw!r} is not an ISO 8601 date", field=name) from None
    if parsed.tzinfo is None:
        raise InvalidRequestError(f"{name}: give a time zone (e.g. Z) with a date-time", field=name)
    return parsed.isoformat()


def create_lambda_handler(runtime: Runtime) -> Any:
    logger = Logger(service="pixdex-query")
    app = create_app(runtime, logger=logger)

    @logger.inject_lambda_context(correlation_id_path="requestContext.requestId")
    def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        return app.resolve(event, context)

    return lambda_handler
