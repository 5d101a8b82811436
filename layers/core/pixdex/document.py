"""The indexed document: one per original object, written as partial upserts by each stage.

Fields are flat (one level) so every backend can store, filter and merge them the same way; each stage
owns its fields and only ever replaces those, so ``compress`` and ``analyze`` may finish in any order.
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any, Final

# Text fields searched by keyword (BM25). Each backend indexes exactly these.
TEXT_FIELDS: Final = ("name_text", "labels", "caption", "ocr_text", "tags", "exif_text")
# Their relative weights, the same on every backend. What names or describes the picture (file-name words,
# labels, caption, user tags) outranks text that merely appears in it (OCR) or around it (EXIF words):
# a photo *of* a cat should beat a screenshot that mentions cats.
TEXT_WEIGHTS: Final[dict[str, float]] = {
    "name_text": 4.0,
    "labels": 3.0,
    "caption": 2.0,
    "ocr_text": 1.0,
    "tags": 3.0,
    "exif_text": 0.5,
}
# Fields whose matches come back as highlighted snippets.
HIGHLIGHT_FIELDS: Final = ("caption", "ocr_text")

# Vector fields: name -> dimension (None: set by the model that fills it, e.g. an optional CLIP pair).
VECTOR_FIELDS: Final[dict[str, int | None]] = {
    "image_vector": 1280,
    # The same features of the photo's central part (Settings.crop_vector_fraction): what a tight crop of it
    # shows. Near duplicates compare full and crop vectors both ways. Written by analyze, like image_vector.
    "crop_vector": 1280,
    "caption_vector": 384,
    "clip_vector": None,
}

# Fields each stage owns. A stage's upsert never touches another stage's fields.
IDENTITY_FIELDS: Final = ("bucket", "key", "name", "name_text", "tenant", "uploaded_at", "etag",
                          "version_id", "sequencer")
COMPRESS_FIELDS: Final = ("derivatives", "compression", "compress_state")
ANALYZE_FIELDS: Final = (
    "bytes", "format", "mode", "width", "height", "frames", "sha256", "phash",
    "camera_make", "camera_model", "camera", "taken_at", "gps", "orientation", "exif_text",
    "box_frame", "analyze_state",
)

DEFAULT_TENANT: Final = "default"

_TOKEN_SPLIT = re.compile(r"[^0-9A-Za-z]+|(?<=[a-z])(?=[A-Z])")


def document_id(bucket: str, key: str) -> str:
    """Stable, URL-safe id from bucket and key: the same object always maps to the same document."""
    digest = hashlib.sha256(f"{bucket}\x00{key}".encode()).digest()[:18]
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def name_tokens(key: str) -> str:
    """Words from a key's file name and folders: 'trips/2024/BeachSunset_01.jpg' -> 'trips 2024 Beach ...'."""
    stem = key.rsplit(".", 1)[0] if "." in key.rsplit("/", 1)[-1] else key
    return " ".join(t for t in _TOKEN_SPLIT.split(stem) if t)


def identity_fields(
    *, bucket: str, key: str, etag: str | None, version_id: str | None, sequencer: str | None,
    uploaded_at: str | None, tenant: str = DEFAULT_TENANT,
) -> dict[str, Any]:
    return {
        "bucket": bucket,
        "key": key,
        "name": key.rsplit("/", 1)[-1],
        "name_text": name_tokens(key),
        "tenant": tenant,
        "etag": etag,
        "version_id": version_id,
        "sequencer": sequencer,
        "uploaded_at": uploaded_at,
    }
