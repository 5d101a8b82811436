"""The official OpenSearch REST API specification as a request validator for tests.

The specification (OpenAPI 3.1, YAML split into ``namespaces/*.yaml`` and ``schemas/*.yaml`` that refer to
each other with relative ``$ref``) lives in ``../shared/opensearch-api-spec`` next to the repository.
Every file is registered with :mod:`referencing` under its ``file://`` URI, so a relative reference
resolves against the file that holds it, exactly as the authors wrote it; schemas are validated with
JSON Schema 2020-12 (the dialect of OpenAPI 3.1).

Strict objects: the specification lists the keys of almost every object but rarely closes it
(``additionalProperties: false``), so a misspelt key (``"mtach"``) would pass. Real clusters refuse
unknown keys, so the loader closes every object schema that is complete on its own with
``unevaluatedProperties: false``. A schema that is only a part of a composition (an ``allOf`` member,
or a branch of an ``anyOf``/``oneOf`` whose parent declares properties of its own) stays open, since
its siblings evaluate the other keys; ``unevaluatedProperties`` on the composing parent sees through
all of them.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urldefrag

import yaml
from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import ValidationError, best_match
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from pixdex.index.requests import Request

REPO = Path(__file__).resolve().parents[1]
SPEC_ROOT = REPO.parent / "shared" / "opensearch-api-spec" / "spec"
SKIP_REASON = f"the OpenSearch API specification is not at {SPEC_ROOT} (../shared/opensearch-api-spec)"

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_PARAM = re.compile(r"\{([^}]+)\}")


def _memo_validator() -> Any:
    """Draft 2020-12 where a ``$ref`` that held for an instance is not evaluated again for an equal
    instance. The spec's ``Property`` is a oneOf of ~50 mapping types that each re-check the shared base
    (with its nested ``fields``); without this one text field took over a second to validate."""
    passed: set[tuple[int, str]] = set()

    def ref(validator: Any, ref: str, instance: Any, schema: Mapping[str, Any]) -> Iterator[ValidationError]:
        key = (id(schema), json.dumps(instance, sort_keys=True, default=str))
        if key in passed:
            return
        failed = False
        for error in validator._validate_reference(ref=ref, instance=instance):
            failed = True
            yield error
        if not failed:
            passed.add(key)

    return validators.extend(Draft202012Validator, {"$ref": ref})


class SpecError(AssertionError):
    """A request that the specification does not allow."""


@dataclass(frozen=True)
class Operation:
    uri: str  # the namespace file
    method: str
    endpoint: str
    spec: Mapping[str, Any]


class OpenSearchSpec:
    def __init__(self, root: Path = SPEC_ROOT) -> None:
        if not root.is_dir():
            raise FileNotFoundError(SKIP_REASON)
        self.root = root
        self._docs: dict[str, Any] = {}
        for path in sorted(root.rglob("*.yaml")):
            with path.open(encoding="utf-8") as fh:
                self._docs[path.resolve().as_uri()] = yaml.load(fh, Loader=_LOADER)  # noqa: S506 - a SafeLoader (C or Python)
        self._close_objects()
        self.registry: Registry[Any] = Registry().with_resources(
            (uri, DRAFT202012.create_resource(doc)) for uri, doc in self._docs.items()
        )
        # The schema dicts live as long as this object, so the memo's id() keys stay valid.
        self._validator_class = _memo_validator()
        self.operations: dict[tuple[str, str], Operation] = {}
        for uri, doc in self._docs.items():
            if "/namespaces/" not in uri:
                continue
            for endpoint, item in (doc.get("paths") or {}).items():
                for method, op in item.items():
                    if isinstance(op, Mapping) and "operationId" in op:
                        self.operations[(method.upper(), endpoint)] = Operation(uri, method.upper(), endpoint, op)

    # -- validation ----------------------------------------------------------------------------------

    def validate(self, request: Request) -> None:
        """Check the method and path, the path and query parameters, and the body of a request."""
        op = self.operations.get((request.method, request.endpoint))
        if op is None:
            raise SpecError(f"{request.method} {request.endpoint} is not an operation of the specification")
        declared: dict[str, tuple[str, Mapping[str, Any]]] = {}
        base = f"{op.uri}#/paths/{_escape(op.endpoint)}/{op.method.lower()}/parameters"
        for i, node in enumerate(op.spec.get("parameters", [])):
            where, param = self._deref(f"{base}/{i}", node)
            declared[f"{param['in']}:{param['name']}"] = (where, param)
        for name in _PARAM.findall(request.endpoint):
            if name not in request.path_params:
                raise SpecError(f"{request.endpoint}: path parameter {name!r} has no value")
        for name, value in request.path_params.items():
            where, param = declared.get(f"path:{name}", ("", {}))
            if not param:
                raise SpecError(f"{request.endpoint}: {name!r} is not a path parameter")
            self._check_param(where, name, value)
        for name, value in request.params.items():
            where, param = declared.get(f"query:{name}", ("", {}))
            if not param:
                raise SpecError(f"{request.method} {request.endpoint}: unknown query parameter {name!r}")
            self._check_param(where, name, value)
        self._check_body(op, request)

    def validate_schema(self, ref: str, instance: Any) -> None:
        """Validate against a schema named relative to the spec root, e.g.
        ``schemas/_core.bulk.yaml#/components/schemas/UpdateAction``."""
        path, _, pointer = ref.partition("#")
        uri = (self.root / path).resolve().as_uri()
        self._check(f"{uri}#{pointer}", instance, ref)

    def schema_errors(self, ref: str, instance: Any) -> list[str]:
        try:
            self.validate_schema(ref, instance)
        except SpecError as exc:
            return [str(exc)]
        return []

    def _check_body(self, op: Operation, request: Request) -> None:
        body_spec = op.spec.get("requestBody")
        if body_spec is None:
            if request.body is not None:
                raise SpecError(f"{request.method} {request.endpoint} takes no body")
            return
        pointer = self._pointer_of(op, body_spec)
        body = self._resolve(pointer)
        if body.get("required") and request.body is None:
            raise SpecError(f"{request.method} {request.endpoint} needs a body")
        if request.body is None:
            return
        content_type = "application/x-ndjson" if request.ndjson else "application/json"
        content = body.get("content") or {}
        if content_type not in content:
            raise SpecError(f"{request.endpoint}: body must be one of {sorted(content)}, not {content_type}")
        schema_pointer = f"{pointer}/content/{_escape(content_type)}/schema"
        self._check(schema_pointer, json.loads(json.dumps(request.body)), f"{request.method} {request.endpoint}")
        if request.endpoint.endswith("/_bulk"):
            self._check_bulk_lines(request.body)

    def _check_bulk_lines(self, lines: list[Any]) -> None:
        """The bulk body schema accepts any object per line; check each action and its payload."""
        bulk = (self.root / "schemas" / "_core.bulk.yaml").resolve().as_uri()
        i = 0
        while i < len(lines):
            action = lines[i]
            self._check(f"{bulk}#/components/schemas/OperationContainer", action, f"bulk line {i}")
            (kind,) = action.keys()
            if kind == "delete":
                i += 1
                continue
            if i + 1 >= len(lines):
                raise SpecError(f"bulk action {kind!r} at line {i} has no payload")
            if kind == "update":
                self._check(f"{bulk}#/components/schemas/UpdateAction", lines[i + 1], f"bulk line {i + 1}")
            elif not isinstance(lines[i + 1], dict):
                raise SpecError(f"bulk line {i + 1} must be a document object")
            i += 2

    def _check_param(self, where: str, name: str, value: str) -> None:
        """Query and path values are text on the wire: a value passes if it, or what it spells (a
        boolean, an integer, a comma-separated list), fits the parameter's schema."""
        candidates: list[Any] = [value, value.split(",")]
        if value in ("true", "false"):
            candidates.append(value == "true")
        if re.fullmatch(r"-?\d+", value):
            candidates.append(int(value))
        errors = []
        for candidate in candidates:
            try:
                self._check(f"{where}/schema", candidate, f"parameter {name}")
                return
            except SpecError as exc:
                errors.append(str(exc))
        raise SpecError(errors[0])

    def _check(self, uri_with_pointer: str, instance: Any, what: str) -> None:
        validator = self._validator(uri_with_pointer)
        # is_valid stops at each branch's first error; collecting every error of every oneOf branch
        # (iter_errors) is only worth it to explain a failure.
        if validator.is_valid(instance):
            return
        error = best_match(validator.iter_errors(instance))
        if error is not None:
            raise SpecError(f"{what}: {_describe(error)}")

    @functools.lru_cache(maxsize=512)  # noqa: B019 - one spec object per test session
    def _validator(self, uri_with_pointer: str) -> Any:
        return self._validator_class({"$ref": uri_with_pointer}, registry=self.registry)

    # -- loading -------------------------------------------------------------------------------------

    def _pointer_of(self, op: Operation, node: Mapping[str, Any]) -> str:
        ref = node.get("$ref")
        if ref is None:
            raise SpecError(f"{op.endpoint}: inline request bodies are not expected in this spec")
        return _join(op.uri, ref)

    def _resolve(self, uri_with_pointer: str) -> Any:
        uri, fragment = urldefrag(uri_with_pointer)
        node: Any = self._docs[uri]
        for part in fragment.lstrip("/").split("/") if fragment else []:
            node = node[part.replace("~1", "/").replace("~0", "~")]
        return node

    def _deref(self, where: str, node: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]]:
        """The node a ``$ref`` chain ends at, with its own URI and pointer."""
        while "$ref" in node:
            where = _join(where, node["$ref"])
            node = self._resolve(where)
        return where, node

    def _close_objects(self) -> None:
        # Parts: composition members, and everything a part is in turn composed of (the branches of an
        # anyOf inside an allOf member only ever see some of the keys).
        parts: set[int] = set()
        work: list[tuple[str, Any]] = []
        for uri, doc in self._docs.items():
            for node, pointer in _walk(doc, ""):
                work += [(f"{uri}#{pointer}", m) for m in _composition_members(node)]
        while work:
            where, node = work.pop()
            if isinstance(node, Mapping) and "$ref" in node:
                where = _join(where, node["$ref"])
                node = self._resolve(where)
            if not isinstance(node, dict) or id(node) in parts:
                continue
            parts.add(id(node))
            work += [(where, m) for key in ("allOf", "anyOf", "oneOf") for m in node.get(key) or []]
        closing: list[tuple[dict[str, Any], set[str]]] = []
        for uri, doc in self._docs.items():
            for node, pointer in _walk(doc, ""):
                if (
                    isinstance(node, dict)
                    and ("properties" in node or "allOf" in node)
                    and node.get("type", "object") == "object"
                    and id(node) not in parts
                ):
                    keys = self._keys(f"{uri}#{pointer}", node, set())
                    if keys:
                        closing.append((node, keys))
        # Closed by additionalProperties over every key any part declares (cheap to evaluate, unlike
        # unevaluatedProperties); the parts' own schemas still check the values.
        for node, keys in closing:
            node["properties"] = {**dict.fromkeys(sorted(keys), True), **(node.get("properties") or {})}
            node["additionalProperties"] = False

    def _keys(self, where: str, node: Any, seen: set[str]) -> set[str] | None:
        """Every property name the schema (with its composition parts) declares; None if it is open."""
        if not isinstance(node, Mapping):
            return set()
        if "$ref" in node:
            target = _join(where, node["$ref"])
            if target in seen:
                return set()
            return self._keys(target, self._resolve(target), seen | {target})
        if node.get("additionalProperties", False) is not False or "patternProperties" in node \
                or "propertyNames" in node or node.get("unevaluatedProperties", False) is not False:
            return None
        keys = set(node.get("properties") or {})
        branches = list(node.get("allOf") or []) + list(node.get("anyOf") or []) + list(node.get("oneOf") or [])
        for i, member in enumerate(branches):
            found = self._keys(f"{where}/member{i}" if "$ref" not in member else where, member, seen)
            if found is None:
                return None
            keys |= found
        return keys


def _composition_members(node: Any) -> list[Any]:
    """Subschemas that are only parts of ``node``: the members of a real allOf composition, and the
    branches of its anyOf or oneOf when ``node`` declares properties of its own."""
    if not isinstance(node, dict):
        return []
    own = bool({"properties", "additionalProperties", "patternProperties"} & node.keys())
    members = list(node.get("allOf") or [])
    if len(members) == 1 and not own:
        # A lone allOf member is a wrapper (a $ref with a description), not a composition.
        members = []
    if own:
        members += list(node.get("anyOf") or []) + list(node.get("oneOf") or [])
    return members


def _walk(node: Any, pointer: str) -> Iterator[tuple[Any, str]]:
    # Parents are yielded before children, so a parent marks its members before they are visited.
    yield node, pointer
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, f"{pointer}/{_escape(str(key))}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{pointer}/{i}")


def _escape(part: str) -> str:
    return part.replace("~", "~0").replace("/", "~1")


def _join(base_uri: str, ref: str) -> str:
    base, _ = urldefrag(base_uri)
    if ref.startswith("#"):
        return base + ref
    path, _, fragment = ref.partition("#")
    target = (Path(base.removeprefix("file://")).parent / path).resolve().as_uri()
    return f"{target}#{fragment}"


def _describe(error: ValidationError) -> str:
    where = "/".join(str(p) for p in error.absolute_path) or "(root)"
    return f"at {where}: {error.message[:400]}"


@functools.lru_cache(maxsize=1)
def load_spec() -> OpenSearchSpec:
    return OpenSearchSpec()
