"""Image bytes -> partial documents. One method per function: compress, analyze, remove.

Every step is idempotent and ordered against the object itself rather than against event arrival:
an event is acted on only if it still describes the current object (same ETag / version), so a
redelivered event changes nothing and an older event never overwrites a newer state.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pixdex import derivatives as derivs
from pixdex import exif as exif_fields
from pixdex import hashing, imaging
from pixdex.document import document_id, identity_fields
from pixdex.errors import ImageTooLargeError, PixdexError
from pixdex.events import ObjectEvent
from pixdex.index.base import ImageIndex
from pixdex.settings import Settings
from pixdex.storage import ObjectHead, ObjectStore


class Outcome(enum.StrEnum):
    PROCESSED = "processed"
    DUPLICATE = "duplicate"      # this object version was already handled by this stage
    STALE = "stale"              # the object changed since the event; the newer event will handle it
    MISSING = "missing"          # the object is gone; its removal event handles the rest
    REMOVED = "removed"
    NOTHING_TO_REMOVE = "nothing_to_remove"
    RECREATED = "recreated"      # removal event, but the key holds a new object again


Stage = str  # "compress" | "analyze"

# Hashes and EXIF need only a small decode; models (issue 3) ask for their own input size.
_ANALYZE_DECODE_SIZE = 512


@dataclass(frozen=True)
class Resolved:
    key: str
    head: ObjectHead
    doc_id: str


class Pipeline:
    def __init__(self, settings: Settings, store: ObjectStore, index: ImageIndex) -> None:
        self.settings = settings
        self.store = store
        self.index = index

    # -- entry points --------------------------------------------------------------------------

    def handle(self, stage: str, event: ObjectEvent) -> Outcome:
        handlers: dict[str, Callable[[ObjectEvent], Outcome]] = {
            "compress": self.compress,
            "analyze": self.analyze,
            "remove": self.remove,
        }
        if stage not in handlers:
            raise ValueError(f"unknown stage {stage!r}")
        if event.kind == "removed" and stage != "remove":
            return Outcome.MISSING
        return handlers[stage](event)

    def compress(self, event: ObjectEvent) -> Outcome:
        return self._run_stage("compress", event, self._compress_fields)

    def analyze(self, event: ObjectEvent) -> Outcome:
        return self._run_stage("analyze", event, self._analyze_fields)

    def remove(self, event: ObjectEvent) -> Outcome:
        outcome = Outcome.NOTHING_TO_REMOVE
        for key in event.key_candidates():
            if self.store.head(event.bucket, key) is not None:
                # Deleted and uploaded again before this event ran: the document belongs to the new object.
                outcome = Outcome.RECREATED
                continue
            doc_id = document_id(event.bucket, key)
            if self.index.get(doc_id) is None:
                continue
            # Derivatives first: if we stop half-way the document still exists and a retry finishes.
            self.store.delete_prefix(self.settings.derivatives_bucket, f"{doc_id}/")
            self.index.delete(doc_id)
            outcome = Outcome.REMOVED
        return outcome

    # -- shared stage mechanics ----------------------------------------------------------------

    def _run_stage(
        self,
        stage: Stage,
        event: ObjectEvent,
        compute: Callable[[bytes, Resolved], dict[str, Any]],
    ) -> Outcome:
        resolved = self._resolve(event)
        if resolved is None:
            return Outcome.MISSING
        if _is_stale(event, resolved.head):
            return Outcome.STALE
        state_field = f"{stage}_state"
        existing = self.index.get(resolved.doc_id)
        if existing is not None and _same_version(existing.get(state_field), resolved.head):
            return Outcome.DUPLICATE
        identity = identity_fields(
            bucket=event.bucket,
            key=resolved.key,
            etag=resolved.head.etag,
            version_id=resolved.head.version_id,
            sequencer=event.sequencer,
            uploaded_at=_iso(event.time) or resolved.head.last_modified,
            tenant=self.settings.tenant_of_key(resolved.key),
        )
        state: dict[str, Any] = {
            "etag": resolved.head.etag,
            "version_id": resolved.head.version_id,
            "sequencer": event.sequencer,
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "error": None,
        }
        try:
            data, _ = self.store.get(event.bucket, resolved.key, max_bytes=self.settings.limits.max_bytes)
            if len(data) > self.settings.limits.max_bytes:
                raise ImageTooLargeError(
                    f"object is larger than the {self.settings.limits.max_bytes} byte limit",
                    limit=self.settings.limits.max_bytes,
                )
            fields = compute(data, resolved)
        except PixdexError as exc:
            if not exc.retryable:
                # Record why on the document so the user can see it, then fail the item so the queue
                # retries it and finally dead-letters it.
                state["error"] = {"code": exc.code, "message": exc.message}
                self.index.upsert(resolved.doc_id, {**identity, state_field: state})
            raise
        self.index.upsert(resolved.doc_id, {**identity, **fields, state_field: state})
        return Outcome.PROCESSED

    def _resolve(self, event: ObjectEvent) -> Resolved | None:
        for key in event.key_candidates():
            head = self.store.head(event.bucket, key)
            if head is not None:
                return Resolved(key=key, head=head, doc_id=document_id(event.bucket, key))
        return None

    # -- the stages' own work ------------------------------------------------------------------

    def _compress_fields(self, data: bytes, resolved: Resolved) -> dict[str, Any]:
        dset = self.settings.derivatives
        decoded = imaging.decode(data, self.settings.limits, target_size=dset.preview_size)
        made = derivs.make_derivatives(decoded, dset)
        out: dict[str, Any] = {}
        for d in made:
            key = f"{resolved.doc_id}/{d.name}.{d.extension}"
            self.store.put(
                self.settings.derivatives_bucket,
                key,
                d.data,
                content_type=d.content_type,
                metadata={"source-etag": resolved.head.etag},
                cache_control="public, max-age=31536000, immutable",
            )
            out[d.name] = {"key": key, **d.to_dict()}
        return {"derivatives": out, "compression": derivs.summarise(len(data), made).to_dict()}

    def _analyze_fields(self, data: bytes, resolved: Resolved) -> dict[str, Any]:
        decoded = imaging.decode(data, self.settings.limits, target_size=_ANALYZE_DECODE_SIZE)
        fields: dict[str, Any] = {
            "bytes": len(data),
            "sha256": hashing.sha256_hex(data),
            "format": decoded.format,
            "mode": decoded.mode,
            "width": decoded.width,
            "height": decoded.height,
            "frames": decoded.frames,
            "phash": hashing.phash(decoded.image),
        }
        fields.update(exif_fields.extract_exif(decoded.exif, store_gps=self.settings.store_gps))
        return fields


def _is_stale(event: ObjectEvent, head: ObjectHead) -> bool:
    if event.etag and event.etag.strip('"') != head.etag:
        return True
    return bool(event.version_id and head.version_id and event.version_id != head.version_id)


def _same_version(state: Any, head: ObjectHead) -> bool:
    return (
        isinstance(state, dict)
        and state.get("error") is None
        and state.get("etag") == head.etag
        and state.get("version_id") == head.version_id
    )


def _iso(value: str | None) -> str | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).isoformat(timespec="seconds")
    except ValueError:
        return None
