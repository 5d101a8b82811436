"""Contract: the OpenAPI document is valid, covers exactly the template's routes, every sample event is
answered as documented, and no input makes the API fail with a 5xx."""

from __future__ import annotations

import json
import re
import string
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moto import mock_aws
from openapi_spec_validator import validate

from pixdex.local.functions import LocalContext
from pixdex.local.template import read_stack
from tests import imagegen
from tests.conftest import REPO, load_function

CTX = LocalContext(function_name="query")
# What each sample answers once demo/chelsea.png is indexed (faces are off by default: no face 0).
EXPECTED = {"query-faces-search.json": 404, "query-delete.json": 202, "query-uploads.json": 201}


@pytest.fixture(scope="module")
def handler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    env = {"AWS_ACCESS_KEY_ID": "t", "AWS_SECRET_ACCESS_KEY": "t", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_REGION": "us-east-1", "PIXDEX_ORIGINALS_BUCKET": "pixdex-local-originals-123456789012-us-east-1",
           "PIXDEX_DERIVATIVES_BUCKET": "pixdex-local-derivatives-123456789012-us-east-1",
           "PIXDEX_DATA_DIR": str(tmp_path_factory.mktemp("data")), "POWERTOOLS_TRACE_DISABLED": "true",
           "POWERTOOLS_METRICS_NAMESPACE": "pixdex"}
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("AWS_ENDPOINT_URL", raising=False)
        for k, v in env.items():
            mp.setenv(k, v)
        with mock_aws():
            s3 = boto3.client("s3", region_name="us-east-1")
            s3.create_bucket(Bucket=env["PIXDEX_ORIGINALS_BUCKET"])
            s3.create_bucket(Bucket=env["PIXDEX_DERIVATIVES_BUCKET"])
            etag = s3.put_object(Bucket=env["PIXDEX_ORIGINALS_BUCKET"], Key="demo/chelsea.png",
                                 Body=imagegen.png_bytes(320, 240, seed=4))["ETag"].strip('"')
            for fn in ("compress", "analyze"):
                ev = json.loads((REPO / "events" / f"{fn}.json").read_text())
                body = json.loads(ev["Records"][0]["body"])
                body["detail"]["object"]["etag"] = etag
                ev["Records"][0]["body"] = json.dumps(body)
                assert load_function(fn)(ev, CTX) == {"batchItemFailures": []}
            yield load_function("query")


def _call(handler: Any, event: dict[str, Any]) -> tuple[int, Any]:
    resp = handler(event, CTX)
    return resp["statusCode"], json.loads(resp["body"]) if resp.get("body") else None


def _openapi(handler: Any) -> dict[str, Any]:
    status, spec = _call(handler, json.loads((REPO / "events" / "query-openapi.json").read_text()))
    assert status == 200
    return spec  # type: ignore[no-any-return]


def test_openapi_is_valid_and_matches_the_template(handler: Any) -> None:
    spec = _openapi(handler)
    validate(spec)
    documented = {(m.upper(), re.sub(r"\{[^}]+\}", "{}", p)) for p, ops in spec["paths"].items() for m in ops}
    routes = read_stack(REPO / "template.yaml").functions["query"].routes
    declared = {(m, re.sub(r"\{[^}]+\}", "{}", p)) for m, p in routes}
    assert documented == declared


@pytest.mark.parametrize("sample", sorted(p.name for p in (REPO / "events").glob("query-*.json")))
def test_every_sample_event_is_answered_as_documented(handler: Any, sample: str) -> None:
    event = json.loads((REPO / "events" / sample).read_text())
    status, body = _call(handler, event)
    assert status == EXPECTED.get(sample, 200), (sample, body)
    spec = _openapi(handler)
    path = next(p for p in spec["paths"] if re.fullmatch(re.sub(r"\{[^}]+\}", "[^/]+", p), event["rawPath"]))
    assert event["requestContext"]["http"]["method"].lower() in spec["paths"][path]


_text = st.text(alphabet=string.printable + "éü漢\x00", max_size=60)
_params = st.dictionaries(
    st.sampled_from(["q", "mode", "size", "cursor", "format", "labels", "camera", "min_width", "max_bytes",
                     "taken_after", "uploaded_before", "has_text", "min_faces", "facets", "sort", "min_score",
                     "max_distance", "face", "image_id", "min_similarity"]),
    st.one_of(_text, st.integers(-10**6, 10**13).map(str), st.sampled_from(["true", "false", "", "png,jpeg"])),
    max_size=6,
)
_paths = st.sampled_from(["/search", "/images/AQ_QhgPWqpvBS1YykT0moOYm", "/images/AQ_QhgPWqpvBS1YykT0moOYm/similar",
                          "/images/AQ_QhgPWqpvBS1YykT0moOYm/duplicates", "/images/nope/faces", "/faces/search",
                          "/stats", "/images/%00%2F..", "/search/image", "/classify", "/uploads"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=_paths, params=_params, body=st.one_of(st.none(), _text, st.binary(max_size=200),
                                                    st.dictionaries(_text, _text, max_size=3).map(json.dumps)))
def test_no_input_yields_a_server_error(handler: Any, path: str, params: dict[str, str], body: Any) -> None:
    base = json.loads((REPO / "events" / "query-search.json").read_text())
    method = "POST" if path in ("/search/image", "/classify", "/uploads") else "GET"
    base["rawPath"] = base["requestContext"]["http"]["path"] = path
    base["requestContext"]["http"]["method"] = method
    base["queryStringParameters"] = params or None
    base["rawQueryString"] = "&".join(f"{k}={v}" for k, v in params.items())
    if body is not None:
        base["body"] = body if isinstance(body, str) else body.hex()
    status, payload = _call(handler, base)
    assert status < 500, (path, params, body, payload)
    assert isinstance(payload, dict)
