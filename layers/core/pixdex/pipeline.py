"""Image bytes -> partial documents. One method per function: compress, analyze, remove.

Every step is idempotent and ordered against the object itself rather than against event arrival:
an event is acted on only if it still describes the current object (same ETag / version), so a
redelivered event changes nothing and an older event never overwrites a newer state.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from PIL import Image

from pixdex import derivatives as derivs
from pixdex import exif as exif_fields
from pixdex import hashing, imaging
from pixdex.document import document_id, identity_fields
from pixdex.errors import ImageTooLargeError, PixdexError
from pixdex.events import ObjectEvent
from pixdex.index.base import ImageIndex
from pixdex.jobs import JobSubmitter
from pixdex.settings import Settings
from pixdex.storage import ObjectHead, ObjectStore

if TYPE_CHECKING:
    from pixdex.models.analysis import CaptionContext


class Outcome(enum.StrEnum):
    PROCESSED = "processed"
    DUPLICATE = "duplicate"      # this object version was already handled by this stage
    STALE = "stale"              # the object changed since the event; the newer event will handle it
    MISSING = "missing"          # the object is gone; its removal event handles the rest
    REMOVED = "removed"
    NOTHING_TO_REMOVE = "nothing_to_remove"
    RECREATED = "recreated"      # removal event, but the key holds a new object again
    ROUTED = "routed"            # too big for Lambda: queued for the GPU batch task


class Analyzer(Protocol):
    """The models' side of analyze (pixdex.models.analysis.ImageAnalyzer)."""

    @property
    def decode_side(self) -> int: ...

    def analyze_batch(self, images: Sequence[Image.Image],
                      context: Sequence[CaptionContext] | None = None) -> list[dict[str, Any]]: ...


# Hashes and EXIF need only a small decode; the models' own needs are added from their settings.
_ANALYZE_DECODE_SIZE = 512
# Fetch + decode threads per analyze batch: enough to keep a Lambda's (or the GPU task's) cores busy.
_DECODE_THREADS = 4


@dataclass(frozen=True)
class Resolved:
    key: str
    head: ObjectHead
    doc_id: str


@dataclass
class _Work:
    """One object that passed the freshness checks and is being processed by a stage."""

    resolved: Resolved
    identity: dict[str, Any]
    state_field: str
    state: dict[str, Any]
    data: bytes = b""


class Pipeline:
    def __init__(self, settings: Settings, store: ObjectStore, index: ImageIndex,
                 analyzer: Callable[[], Analyzer | None] | None = None, jobs: JobSubmitter | None = None) -> None:
        self.settings = settings
        self.store = store
        self.index = index
        # Set in Lambda (route huge images to the GPU task); unset in the GPU task itself.
        self.jobs = jobs
        # A factory, so the models load on the first analyze and never in compress or remove.
        self._analyzer = analyzer or (lambda: None)

    # -- entry points --------------------------------------------------------------------------

    def handle(self, stage: str, event: ObjectEvent) -> Outcome:
        if event.kind == "removed" and stage != "remove":
            return Outcome.MISSING
        if stage == "compress":
            return self.compress(event)
        if stage == "analyze":
            result = self.analyze_many([event])[0]
            if isinstance(result, Exception):
                raise result
            return result
        if stage == "remove":
            return self.remove(event)
        raise ValueError(f"unknown stage {stage!r}")

    def compress(self, event: ObjectEvent) -> Outcome:
        work = self._begin("compress", event)
        if isinstance(work, Outcome):
            return work
        try:
            self._fetch(event, work)
            fields = self._compress_fields(work)
        except PixdexError as exc:
            self._fail(work, exc)
            raise
        self._commit(work, fields)
        return Outcome.PROCESSED

    def analyze_many(self, events: Sequence[ObjectEvent]) -> list[Outcome | Exception]:
        """Analyze a batch: objects are fetched and decoded on a few threads (Pillow and S3 reads release the
        GIL), then the models run once over every image, so they see real batches. The result list matches
        ``events``; an item is an Outcome or the error that failed it (also recorded on its document)."""
        results: list[Outcome | Exception] = [Outcome.MISSING] * len(events)
        analyzer = self._analyzer() if events else None
        decode_side = max(_ANALYZE_DECODE_SIZE, analyzer.decode_side if analyzer is not None else 0)
        todo: list[tuple[int, ObjectEvent, _Work]] = []
        for i, event in enumerate(events):
            if event.kind == "removed":
                continue
            try:
                work = self._begin("analyze", event)
            except Exception as exc:
                results[i] = exc
                continue
            if isinstance(work, Outcome):
                results[i] = work
            else:
                todo.append((i, event, work))

        def prepare(item: tuple[int, ObjectEvent, _Work]) -> tuple[dict[str, Any], Image.Image] | None:
            _, event, work = item
            self._fetch(event, work)
            if self._wants_gpu(work):
                return None
            fields, image = self._analyze_fields(work, decode_side)
            work.data = b""  # a batch of large originals must not stay in memory while the models run
            return fields, image

        ready: list[tuple[int, _Work, dict[str, Any], Image.Image]] = []
        with ThreadPoolExecutor(max_workers=max(1, min(_DECODE_THREADS, len(todo)))) as pool:
            futures = [pool.submit(prepare, item) for item in todo]
            for (i, _, work), future in zip(todo, futures, strict=True):
                # Index writes and job submission stay on this thread, in event order.
                try:
                    try:
                        prepared = future.result()
                        if prepared is None:
                            self._route_to_gpu(work)
                            results[i] = Outcome.ROUTED
                            continue
                    except PixdexError as exc:
                        self._fail(work, exc)
                        raise
                    ready.append((i, work, *prepared))
                except Exception as exc:
                    results[i] = exc
        if analyzer is not None and ready:
            from pixdex.models.analysis import CaptionContext

            contexts = [CaptionContext(name_words=w.identity["name_text"].split(),
                                       exif_words=(f.get("exif_text") or "").split()) for _, w, f, _ in ready]
            for (_, _, fields, _), extra in zip(ready, analyzer.analyze_batch([r[3] for r in ready], contexts),
                                                strict=True):
                fields.update(extra)
                if "face_vectors" in fields:
                    # Kept on the document (few, opt-in), which every backend stores as JSON: plain lists.
                    fields["face_vectors"] = [[float(x) for x in v] for v in fields["face_vectors"]]
        for i, work, fields, _ in ready:
            try:
                self._commit(work, fields)
                results[i] = Outcome.PROCESSED
            except Exception as exc:
                results[i] = exc
        return results

    def analyze(self, event: ObjectEvent) -> Outcome:
        return self.handle("analyze", event)

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

    def _begin(self, stage: str, event: ObjectEvent) -> _Work | Outcome:
        resolved = self._resolve(event)
        if resolved is None:
            return Outcome.MISSING
        if _is_stale(event, resolved.head):
            return Outcome.STALE
        state_field = f"{stage}_state"
        existing = self.index.get(resolved.doc_id)
        state_now = existing.get(state_field) if existing is not None else None
        if _same_version(state_now, resolved.head) and not (self.jobs is None and _pending(state_now)):
            # Done already, or already queued for the GPU task (which itself runs without self.jobs).
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
        return _Work(resolved=resolved, identity=identity, state_field=state_field, state=state)

    def _fetch(self, event: ObjectEvent, work: _Work) -> None:
        limit = self.settings.limits.max_bytes
        data, _ = self.store.get(event.bucket, work.resolved.key, max_bytes=limit)
        if len(data) > limit:
            raise ImageTooLargeError(f"object is larger than the {limit} byte limit", limit=limit)
        work.data = data

    def _wants_gpu(self, work: _Work) -> bool:
        """Images over the pixel threshold go to the GPU task (read from the header, no decode)."""
        if self.jobs is None or not self.settings.routes_to_gpu:
            return False
        info = imaging.probe(work.data, self.settings.limits)
        return info.width * info.height > self.settings.gpu_pixel_threshold

    def _route_to_gpu(self, work: _Work) -> None:
        """Queue the object for the GPU task; the document records that its analysis is pending."""
        assert self.jobs is not None
        job_id = self.jobs.submit(bucket=work.identity["bucket"], keys=[work.resolved.key],
                                  name=f"pixdex-analyze-{work.resolved.doc_id}")
        self._commit(work, {}, state={**work.state, "pending": "gpu", "job_id": job_id})

    def _commit(self, work: _Work, fields: dict[str, Any], state: dict[str, Any] | None = None) -> None:
        self.index.upsert(work.resolved.doc_id,
                          {**work.identity, **fields, work.state_field: state if state is not None else work.state})

    def _fail(self, work: _Work, exc: PixdexError) -> None:
        if exc.retryable:
            return  # a transient failure says nothing about the object; the retry will tell
        # Record why on the document so the user can see it; the caller fails the item so the queue
        # retries it and finally dead-letters it.
        state = {**work.state, "error": {"code": exc.code, "message": exc.message}}
        self.index.upsert(work.resolved.doc_id, {**work.identity, work.state_field: state})

    def _resolve(self, event: ObjectEvent) -> Resolved | None:
        for key in event.key_candidates():
            head = self.store.head(event.bucket, key)
            if head is not None:
                return Resolved(key=key, head=head, doc_id=document_id(event.bucket, key))
        return None

    # -- the stages' own work ------------------------------------------------------------------

    def _compress_fields(self, work: _Work) -> dict[str, Any]:
        dset = self.settings.derivatives
        decoded = imaging.decode(work.data, self.settings.limits, target_size=dset.preview_size)
        made = derivs.make_derivatives(decoded, dset)
        out: dict[str, Any] = {}
        for d in made:
            key = f"{work.resolved.doc_id}/{d.name}.{d.extension}"
            self.store.put(
                self.settings.derivatives_bucket,
                key,
                d.data,
                content_type=d.content_type,
                metadata={"source-etag": work.resolved.head.etag},
                cache_control="public, max-age=31536000, immutable",
            )
            out[d.name] = {"key": key, **d.to_dict()}
        return {"derivatives": out, "compression": derivs.summarise(len(work.data), made).to_dict()}

    def _analyze_fields(self, work: _Work, decode_side: int) -> tuple[dict[str, Any], Image.Image]:
        decoded = imaging.decode(work.data, self.settings.limits, target_size=decode_side)
        fields: dict[str, Any] = {
            "bytes": len(work.data),
            "sha256": hashing.sha256_hex(work.data),
            "format": decoded.format,
            "mode": decoded.mode,
            "width": decoded.width,
            "height": decoded.height,
            "frames": decoded.frames,
            "phash": hashing.phash(decoded.image),
        }
        fields.update(exif_fields.extract_exif(decoded.exif, store_gps=self.settings.store_gps))
        image = decoded.image
        # OCR and face boxes are in this image's pixels (a JPEG may decode at 1/2..1/8 scale): a viewer needs
        # the frame to draw them over any rendition.
        fields["box_frame"] = [image.width, image.height]
        if image.mode != "RGB":
            # Models see images as people do: transparent areas over white.
            background = Image.new("RGB", image.size, (255, 255, 255))
            background.paste(image, mask=image.getchannel("A") if image.mode == "RGBA" else None)
            image = background
        return fields, image


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


def _pending(state: Any) -> bool:
    return isinstance(state, dict) and bool(state.get("pending"))


def _iso(value: str | None) -> str | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).isoformat(timespec="seconds")
    except ValueError:
        return None
