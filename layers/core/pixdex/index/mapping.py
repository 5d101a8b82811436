"""The versioned search-cluster index: mapping, settings and the document shape sent to it.

Built from :mod:`pixdex.document`: every text field is analysed twice (English stemming with stop words for
recall, plain lowercase words in ``.std`` so stop words like "not" and prefixes of whole words still match)
and keeps a ``.keyword`` sub-field for exact filters and facets. Filter fields are keywords, numbers,
booleans and dates; ``gps`` is a geo_point; each vector field is a k-NN field (the dialect decides the
type: OpenSearch ``knn_vector`` with faiss HNSW, Elasticsearch ``dense_vector``). Unknown fields stay in
``_source`` but are not indexed (``dynamic: false``), so a stray field can never break the mapping.

Internal fields (prefix ``pixdex_``) are written next to the document and stripped from everything read
back: the document id as a sortable keyword, the creation and update times that pin paging and drive
reindex catch-up, and two encodings of the perceptual hash for Hamming search:
- ``pixdex_phash_parts``: the 8 bytes as position-tagged keywords. Two hashes within d < 8 bits share at
  least 8 - d bytes at the same position (each differing bit spoils at most one byte), so a terms query
  with ``minimum_should_match: 8 - d`` finds every candidate exactly; the client then computes the exact
  distance. This works on every engine and version and is the documented fallback.
- ``pixdex_phash_bits``: a 64-bit binary ``knn_vector`` in Hamming space (OpenSearch 2.16+ with faiss),
  used for wide searches (d >= 8) where the byte pigeonhole no longer prunes anything.

Changing anything here that an existing index cannot absorb with an additive put-mapping means bumping
:data:`MAPPING_VERSION` and running ``pixdex reindex``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal

import numpy as np

from pixdex.document import TEXT_FIELDS, TEXT_WEIGHTS, VECTOR_FIELDS
from pixdex.errors import IndexMappingError
from pixdex.index.base import parse_instant
from pixdex.index.vectors import phash_to_int, unit_vector

MAPPING_VERSION: Final = 1
META_KEY: Final = "pixdex"

ID_FIELD: Final = "pixdex_id"
CREATED_FIELD: Final = "pixdex_created"
UPDATED_FIELD: Final = "pixdex_updated"
PHASH_PARTS_FIELD: Final = "pixdex_phash_parts"
PHASH_BITS_FIELD: Final = "pixdex_phash_bits"
INTERNAL_PREFIX: Final = "pixdex_"
INTERNAL_FIELDS: Final = (ID_FIELD, CREATED_FIELD, UPDATED_FIELD, PHASH_PARTS_FIELD, PHASH_BITS_FIELD)
PHASH_PARTS: Final = 8

# Field boosts: the weights every backend uses (pixdex.document.TEXT_WEIGHTS).
TEXT_BOOSTS: Final[Mapping[str, float]] = TEXT_WEIGHTS

ENGLISH_ANALYZER: Final = "pixdex_english"
PLAIN_ANALYZER: Final = "pixdex_plain"
LOWERCASE_NORMALIZER: Final = "pixdex_lowercase"
# Longer values are kept in _source and searchable as text but not as one keyword term (Lucene's term
# limit is 32 KB; long OCR text is never a useful facet).
KEYWORD_IGNORE_ABOVE: Final = 256

FieldKind = Literal["keyword", "keyword_lower", "integer", "long", "float", "boolean", "date", "geo_point"]

# Indexed non-text fields and how they are typed. Everything else (derivatives, states, label scores,
# face boxes) is stored and returned but not indexed.
FIELD_KINDS: Final[Mapping[str, FieldKind]] = {
    "tenant": "keyword",
    "bucket": "keyword",
    "key": "keyword",
    "name": "keyword",
    "etag": "keyword",
    "version_id": "keyword",
    "sequencer": "keyword",
    "format": "keyword",
    "mode": "keyword",
    "camera": "keyword",
    "camera_make": "keyword",
    "camera_model": "keyword",
    "sha256": "keyword_lower",
    "phash": "keyword_lower",
    "width": "integer",
    "height": "integer",
    "frames": "integer",
    "orientation": "integer",
    "face_count": "integer",
    "bytes": "long",
    "nsfw_score": "float",
    "has_text": "boolean",
    "taken_at": "date",
    "uploaded_at": "date",
    "gps": "geo_point",
}

_INT_LIMITS: Final = {"integer": 2**31, "long": 2**63}
# OpenSearch's strict_date_optional_time, restricted to what Python's fromisoformat also reads, so both
# backends accept exactly the same dates.
_STRICT_DATE = re.compile(
    r"\d{4}-\d{2}-\d{2}(?:T\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?(?:Z|[+-]\d{2}:\d{2})?)?"
)
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class KnnSettings:
    """HNSW parameters of every vector field. ``m`` and ``ef_construction`` are fixed at index creation
    (changing them needs a reindex); ``ef_search`` is read at query time."""

    m: int = 16
    ef_construction: int = 128
    ef_search: int = 128
    engine: str = "faiss"
    # Vectors are unit-normalised before they are sent, so inner product is cosine similarity.
    space_type: str = "innerproduct"
    # Map the perceptual hash as a binary Hamming knn_vector where the cluster supports it.
    hamming: bool = True

    def __post_init__(self) -> None:
        for name in ("m", "ef_construction", "ef_search"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 2 <= value <= 4096:
                raise ValueError(f"knn {name} must be an integer from 2 to 4096, got {value!r}")
        if self.engine not in ("faiss", "lucene"):
            raise ValueError(f"knn engine must be faiss or lucene, got {self.engine!r}")
        if self.space_type not in ("innerproduct", "cosinesimil"):
            raise ValueError(f"knn space_type must be innerproduct or cosinesimil, got {self.space_type!r}")


@dataclass(frozen=True)
class IndexShape:
    """What the live index holds, as read back from its mapping: vector dimensions and hash encodings."""

    mapping_version: int = MAPPING_VERSION
    dims: Mapping[str, int] = field(default_factory=dict)
    phash_bits: bool = False


def physical_name(alias: str, version: int) -> str:
    return f"{alias}-v{version}"


def version_of(alias: str, physical: str) -> int | None:
    """The version N of a physical index ``<alias>-vN``, None for any other name."""
    prefix = f"{alias}-v"
    if physical.startswith(prefix) and physical[len(prefix):].isdigit():
        return int(physical[len(prefix):])
    return None


def analysis_settings() -> dict[str, Any]:
    return {
        "filter": {
            "pixdex_english_possessive": {"type": "stemmer", "language": "possessive_english"},
            "pixdex_english_stop": {"type": "stop", "stopwords": "_english_"},
            "pixdex_english_stemmer": {"type": "stemmer", "language": "english"},
        },
        "analyzer": {
            ENGLISH_ANALYZER: {
                "type": "custom",
                "tokenizer": "standard",
                "filter": [
                    "pixdex_english_possessive", "lowercase", "asciifolding",
                    "pixdex_english_stop", "pixdex_english_stemmer",
                ],
            },
            PLAIN_ANALYZER: {"type": "custom", "tokenizer": "standard", "filter": ["lowercase", "asciifolding"]},
        },
        "normalizer": {LOWERCASE_NORMALIZER: {"type": "custom", "filter": ["lowercase"]}},
    }


def text_property() -> dict[str, Any]:
    return {
        "type": "text",
        "analyzer": ENGLISH_ANALYZER,
        "fields": {
            "std": {"type": "text", "analyzer": PLAIN_ANALYZER},
            "keyword": {"type": "keyword", "ignore_above": KEYWORD_IGNORE_ABOVE},
        },
    }


def scalar_property(kind: FieldKind) -> dict[str, Any]:
    if kind == "keyword":
        return {"type": "keyword", "ignore_above": KEYWORD_IGNORE_ABOVE}
    if kind == "keyword_lower":
        return {"type": "keyword", "normalizer": LOWERCASE_NORMALIZER}
    if kind == "date":
        return {"type": "date", "format": "strict_date_optional_time||epoch_millis"}
    return {"type": kind}


def base_properties() -> dict[str, Any]:
    """Every property except the vector fields, which depend on the dialect."""
    props: dict[str, Any] = {name: text_property() for name in TEXT_FIELDS}
    props.update({name: scalar_property(kind) for name, kind in FIELD_KINDS.items()})
    props[ID_FIELD] = {"type": "keyword"}
    props[CREATED_FIELD] = {"type": "long"}
    props[UPDATED_FIELD] = {"type": "long"}
    props[PHASH_PARTS_FIELD] = {"type": "keyword"}
    return props


def opensearch_vector_property(dim: int, knn: KnnSettings) -> dict[str, Any]:
    return {
        "type": "knn_vector",
        "dimension": dim,
        "method": {
            "name": "hnsw",
            "engine": knn.engine,
            "space_type": knn.space_type,
            "parameters": {"m": knn.m, "ef_construction": knn.ef_construction},
        },
    }


def opensearch_phash_property(knn: KnnSettings) -> dict[str, Any]:
    return {
        "type": "knn_vector",
        "dimension": 64,
        "data_type": "binary",
        "method": {
            "name": "hnsw",
            "engine": knn.engine,
            "space_type": "hamming",
            "parameters": {"m": knn.m, "ef_construction": knn.ef_construction},
        },
    }


def mapping_meta() -> dict[str, Any]:
    return {META_KEY: {"mapping_version": MAPPING_VERSION}}


def initial_dims(overrides: Mapping[str, int] | None = None) -> dict[str, int]:
    """Dimensions mapped at creation: the fixed ones from document.py, then any configured override.
    Fields without a dimension (an optional CLIP pair) are mapped by the first vector written."""
    dims = {name: dim for name, dim in VECTOR_FIELDS.items() if dim is not None}
    for name, dim in (overrides or {}).items():
        if name not in VECTOR_FIELDS:
            raise ValueError(f"unknown vector field {name!r}")
        dims[name] = dim
    return dims


def read_shape(mapping: Mapping[str, Any], vector_type: str, dim_key: str) -> IndexShape:
    """The shape of a live index from its ``GET _mapping`` entry (``{"mappings": {...}}``)."""
    mappings = mapping.get("mappings", {})
    props = mappings.get("properties", {}) or {}
    meta = (mappings.get("_meta") or {}).get(META_KEY) or {}
    version = meta.get("mapping_version")
    if not isinstance(version, int):
        raise IndexMappingError("the index was not created by pixdex (no mapping version in _meta)")
    dims = {
        name: int(props[name][dim_key])
        for name in VECTOR_FIELDS
        if isinstance(props.get(name), Mapping) and props[name].get("type") == vector_type
    }
    return IndexShape(mapping_version=version, dims=dims, phash_bits=PHASH_BITS_FIELD in props)


# -- documents ------------------------------------------------------------------------------------


def prepare_fields(
    doc_id: str, fields: Mapping[str, Any], dims: Mapping[str, int], *, phash_bits: bool
) -> dict[str, Any]:
    """The partial document to send for ``fields``: checked field by field, vectors unit-normalised.

    Raises IndexMappingError for anything the index would refuse (or accept differently from the
    embedded backend), so a bad item fails alone and before any request. Vector fields without a
    mapped dimension are returned as-is in length; the caller maps them first.
    """
    check_doc_id(doc_id)
    if not isinstance(fields, Mapping) or not all(isinstance(k, str) for k in fields):
        raise IndexMappingError("document fields must be a mapping with string keys", id=doc_id)
    out: dict[str, Any] = {}
    for name, value in fields.items():
        if not name or name.startswith("_") or name.startswith(INTERNAL_PREFIX):
            raise IndexMappingError(f"field name {name!r} is reserved", field=name, id=doc_id)
        if name in VECTOR_FIELDS:
            out[name] = _vector(name, value, dims)
        elif name == "labels":
            out[name] = _labels(value)
        elif name in TEXT_FIELDS:
            out[name] = _text(name, value)
        elif name in FIELD_KINDS:
            out[name] = _scalar(name, FIELD_KINDS[name], value)
        else:
            out[name] = value
    if "phash" in fields:
        phash = out["phash"]
        out[PHASH_PARTS_FIELD] = None if phash is None else phash_parts(phash)
        if phash_bits:
            out[PHASH_BITS_FIELD] = None if phash is None else phash_bytes(phash)
    out[ID_FIELD] = doc_id
    try:
        json.dumps(out, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise IndexMappingError(f"document is not JSON: {exc}", id=doc_id) from None
    return out


def check_doc_id(doc_id: object) -> str:
    # OpenSearch limits _id to 512 bytes of UTF-8.
    if not isinstance(doc_id, str) or not doc_id or len(doc_id.encode()) > 512:
        raise IndexMappingError("document id must be 1..512 bytes of UTF-8", field="id")
    return doc_id


def strip_internal(source: Mapping[str, Any]) -> dict[str, Any]:
    """A stored ``_source`` as the port returns it: no internal fields, no vectors."""
    return {k: v for k, v in source.items() if not k.startswith(INTERNAL_PREFIX) and k not in VECTOR_FIELDS}


def phash_parts(phash: str) -> list[str]:
    value = phash_to_int(phash)
    return [f"{i}:{(value >> (56 - 8 * i)) & 0xFF:02x}" for i in range(PHASH_PARTS)]


def phash_bytes(phash: str) -> list[int]:
    """The hash as 8 signed bytes, most significant first: the input format of a binary knn_vector."""
    raw = phash_to_int(phash).to_bytes(8, "big")
    return [b - 256 if b > 127 else b for b in raw]


def hamming(a: str, b: str) -> int:
    return (phash_to_int(a) ^ phash_to_int(b)).bit_count()


def _vector(name: str, value: Any, dims: Mapping[str, int]) -> list[float] | None:
    if value is None:
        return None
    unit = unit_vector(value, field=name)
    expected = dims.get(name)
    if expected is not None and unit.size != expected:
        raise IndexMappingError(
            f"{name}: dimension {unit.size} does not match the index's {expected}",
            field=name, expected=expected, got=int(unit.size),
        )
    values: list[float] = unit.astype(np.float64).tolist()
    return values


def _text(name: str, value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list | tuple) and all(
        isinstance(x, str | int | float) and not isinstance(x, bool) for x in value
    ):
        return list(value)
    raise IndexMappingError(f"{name} must be text or a list of words", field=name)


def _labels(value: Any) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list | tuple) or not all(isinstance(x, str) for x in value):
        raise IndexMappingError("labels must be a list of strings", field="labels")
    return list(value)


def _scalar(name: str, kind: FieldKind, value: Any) -> Any:
    if value is None:
        return None
    if kind in ("keyword", "keyword_lower"):
        if not isinstance(value, str):
            raise IndexMappingError(f"{name} must be a string", field=name)
        if name == "sha256" and not _SHA256.fullmatch(value):
            raise IndexMappingError("sha256 must be 64 hexadecimal digits", field=name)
        if name == "phash":
            phash_to_int(value, on_error=IndexMappingError)
        return value
    if kind in ("integer", "long"):
        if not isinstance(value, int) or isinstance(value, bool):
            raise IndexMappingError(f"{name} must be an integer", field=name)
        limit = _INT_LIMITS[kind]
        if not -limit <= value < limit:
            raise IndexMappingError(f"{name} is out of range for a {kind}", field=name)
        return value
    if kind == "float":
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
            raise IndexMappingError(f"{name} must be a number", field=name)
        return value
    if kind == "boolean":
        if not isinstance(value, bool):
            raise IndexMappingError(f"{name} must be true or false", field=name)
        return value
    if kind == "date":
        parse_instant(value, name, IndexMappingError)
        if not _STRICT_DATE.fullmatch(value):
            raise IndexMappingError(
                f"{name}: use ISO 8601 like 2024-05-01T10:00:00Z (got {value[:40]!r})", field=name
            )
        return value
    # geo_point: only the {lat, lon} object form, the one every backend reads the same way.
    if (
        not isinstance(value, Mapping)
        or set(value) != {"lat", "lon"}
        or not all(isinstance(value[k], int | float) and not isinstance(value[k], bool) for k in value)
        or not -90 <= value["lat"] <= 90
        or not -180 <= value["lon"] <= 180
    ):
        raise IndexMappingError(f"{name} must be {{'lat': -90..90, 'lon': -180..180}}", field=name)
    return dict(value)
