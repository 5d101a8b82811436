"""The analyze orchestrator: images in, document fields out, one failing model never sinks the others.

Each model family is created lazily on first use and its ONNX sessions are cached per process, so a
warm Lambda container pays load costs once; :meth:`ImageAnalyzer.warmup` moves them to init time.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
from PIL import Image

from pixdex.models.classifier import Classification, ImageClassifier, l2_normalise
from pixdex.models.clip import ClipModel, find_clip_pair
from pixdex.models.concepts import (
    CLASS_TEXT_NAME,
    TASK_CLASS_TEXT,
    ConceptProjector,
    class_text_matrix,
    load_table,
)
from pixdex.models.faces import FaceAnalyzer, FaceDetectorKind, FaceOptions, FaceResult
from pixdex.models.manifest import TASK_IMAGE_CLASSIFIER, TASK_TEXT_EMBEDDER, Manifest
from pixdex.models.ocr import OcrOptions, OcrResult, TextReader
from pixdex.models.safety import SafetyClassifier
from pixdex.models.session import ModelUnavailableError, RuntimeOptions
from pixdex.models.text_embedder import TextEmbedder

DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[3] / "models"
CAPABILITIES = ("classify", "embed", "caption", "ocr", "faces", "safety", "clip")
# How captions are written: v1 (labels, parents, OCR, name and EXIF words) is kept as the quality baseline.
CAPTION_STYLES = ("v1", "v2")
_T = TypeVar("_T")


@dataclass(frozen=True)
class ModelSettings:
    """Which models run and how. Faces are off by default: face vectors are biometric data."""

    model_dir: Path = DEFAULT_MODEL_DIR
    classify: bool = True
    embed: bool = True
    caption: bool = True
    ocr: bool = True
    faces: bool = False
    safety: bool = True
    # Used only when the model folder holds a CLIP-style pair; otherwise ignored.
    clip: bool = True
    top_k: int = 5
    # With embed: also the vector of the central fraction of each side (crop_vector; 0: none).
    crop_vector_fraction: float = 0.75
    # Classes below this probability (other than the top one) add no labels, only label_scores.
    min_label_score: float = 0.1
    caption_style: str = "v2"
    # v2 caption vectors: weight of the caption sentence's embedding against the classes' projection
    # (pixdex.models.concepts), and the projection's top classes and temperature. Chosen on the dev split
    # of the evaluation photos (docs/quality.md).
    caption_text_weight: float = 0.3
    concept_top_k: int = 20
    concept_temperature: float = 0.5
    batch_size: int = 16
    intra_op_threads: int = 0
    providers: tuple[str, ...] = ("auto",)
    ocr_precheck_side: int = 480
    ocr_max_side: int = 960
    ocr_min_score: float = 0.6
    face_detector: FaceDetectorKind = "hog"
    face_max_side: int = 1024

    def __post_init__(self) -> None:
        if self.caption_style not in CAPTION_STYLES:
            raise ValueError(f"caption_style: {self.caption_style!r}, expected one of {', '.join(CAPTION_STYLES)}")

    @property
    def runtime(self) -> RuntimeOptions:
        return RuntimeOptions(providers=tuple(self.providers), intra_op_threads=self.intra_op_threads)

    def enabled(self) -> list[str]:
        return [c for c in CAPABILITIES if getattr(self, c)]


@dataclass(frozen=True)
class CaptionContext:
    """Words that describe an image besides its pixels: from the file name/key and from EXIF."""

    name_words: Sequence[str] = ()
    exif_words: Sequence[str] = ()


# File-name noise that describes the camera's counter, not the picture.
_NAME_NOISE = frozenset({"img", "dsc", "dscn", "dscf", "pxl", "image", "photo", "pic", "jpg", "jpeg", "png",
                         "heic", "webp", "gif", "tif", "tiff", "copy", "final", "edit", "edited", "mvimg"})
_WORD = re.compile(r"[^\W_]+(?:['-][^\W_]+)*", re.UNICODE)


def _useful_words(words: Sequence[str]) -> list[str]:
    out: dict[str, None] = {}
    for chunk in words:
        for word in _WORD.findall(str(chunk)):
            lowered = word.lower()
            if lowered in _NAME_NOISE or lowered.isdigit() or len(lowered) < 2:
                continue
            out.setdefault(word, None)
    return list(out)


def build_caption(
    classification: Classification | None, ocr_text: str, context: CaptionContext,
    min_label_score: float, max_parents: int = 4, max_ocr_chars: int = 120,
) -> str:
    """A short sentence for the text embedder: what the classifier saw, its kinds, text, name, EXIF."""
    parts: list[str] = []
    if classification is not None and classification.top:
        top_class = classification.top[0][0]
        names = [top_class.name] + [c.name for c, p in classification.top[1:] if p >= min_label_score]
        names = list(dict.fromkeys(n.lower() for n in names))
        parents = [p for p in top_class.parents if p not in names][:max_parents]
        sentence = "a photo of " + ", ".join(names)
        if parents:
            sentence += f" ({', '.join(parents)})"
        parts.append(sentence)
    text = " ".join(ocr_text.split())
    if text:
        parts.append(f'with the text "{text[:max_ocr_chars]}"')
    name_words = _useful_words(context.name_words)
    if name_words:
        parts.append(" ".join(name_words))
    exif_words = _useful_words(context.exif_words)
    if exif_words:
        parts.append(" ".join(exif_words))
    return ". ".join(parts)


def build_caption_v2(
    classification: Classification | None, ocr_text: str, context: CaptionContext,
    min_label_score: float,
) -> str:
    """v1 without the EXIF words: camera makes and editing software ("Canon EOS 400D", "GIMP") say nothing
    about the picture and pull its embedding towards every other photo from that camera. They stay
    searchable by keyword (``exif_text``) and by the camera filter."""
    return build_caption(classification, ocr_text, CaptionContext(name_words=context.name_words), min_label_score)


def centre_crop(image: Image.Image, fraction: float) -> Image.Image:
    """The central ``fraction`` of each side: what a tight crop of the photo keeps, for crop_vector."""
    w, h = image.size
    cw, ch = max(1, round(w * fraction)), max(1, round(h * fraction))
    left, top = (w - cw) // 2, (h - ch) // 2
    return image.crop((left, top, left + cw, top + ch))


def mix_caption_vectors(caption: npt.NDArray[np.float32], concepts: npt.NDArray[np.float32],
                        caption_weight: float) -> npt.NDArray[np.float32]:
    """Unit vector of ``w * caption + (1 - w) * concepts`` (both unit vectors in the same text space)."""
    return l2_normalise((caption_weight * caption + (1.0 - caption_weight) * concepts).astype(np.float32))


def _error(exc: BaseException) -> str:
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {message}"


@dataclass
class _Lazy:
    """One model family, created on first use; a failed creation is remembered and not retried per image."""

    factory: Callable[[], Any]
    value: Any = None
    error: BaseException | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self) -> Any:
        if self.value is None:
            with self.lock:
                if self.value is None:
                    if self.error is not None:
                        raise self.error
                    try:
                        self.value = self.factory()
                    except Exception as exc:
                        self.error = exc
                        raise
        return self.value


class ImageAnalyzer:
    """All enabled models over a batch of RGB images; see :meth:`analyze_batch` for the fields."""

    def __init__(self, settings: ModelSettings | None = None) -> None:
        self.settings = settings or ModelSettings()
        self.model_dir = Path(self.settings.model_dir)
        self.manifest = Manifest.load(self.model_dir)
        runtime = self.settings.runtime
        s = self.settings
        self._classifier = _Lazy(lambda: ImageClassifier(
            self._entry(TASK_IMAGE_CLASSIFIER), self.model_dir, runtime, s.batch_size))
        self._text = _Lazy(lambda: TextEmbedder(
            self._entry(TASK_TEXT_EMBEDDER), self.model_dir, runtime, max(s.batch_size, 32)))
        self._ocr = _Lazy(lambda: TextReader(self.manifest, runtime, OcrOptions(
            det_max_side=s.ocr_max_side, precheck_max_side=s.ocr_precheck_side, min_text_score=s.ocr_min_score)))
        self._safety = _Lazy(lambda: SafetyClassifier(self.manifest, runtime, s.batch_size))
        self._faces = _Lazy(lambda: FaceAnalyzer(self.manifest, FaceOptions(
            detector=s.face_detector, max_side=s.face_max_side)))
        self._concepts = _Lazy(self._load_concepts)
        pair = find_clip_pair(self.model_dir, self.manifest) if s.clip else None
        self._clip = _Lazy(lambda: ClipModel(pair, self.model_dir, runtime, s.batch_size)) if pair else None

    def _entry(self, task: str) -> Any:
        entry = self.manifest.first(task)
        if entry is None:
            raise ModelUnavailableError(f"no {task} model in {self.model_dir / 'manifest.json'}")
        return entry

    def _load_concepts(self) -> ConceptProjector:
        text_entry = self._entry(TASK_TEXT_EMBEDDER)
        entry = self.manifest.first(TASK_CLASS_TEXT)
        table = load_table(entry, self.model_dir, text_entry)
        version = entry.provenance if table is not None and entry is not None else f"built+{text_entry.provenance}"
        if table is None:
            # No shipped table for this text model: build it once per process (seconds, not per image).
            table = class_text_matrix(self._text.get())
        s = self.settings
        return ConceptProjector(table, top_k=s.concept_top_k, temperature=s.concept_temperature, version=version)

    @property
    def decode_side(self) -> int:
        """The longest image side the enabled models can use: OCR and faces read small detail."""
        s = self.settings
        return max(s.ocr_max_side if s.ocr else 0, s.face_max_side if s.faces else 0)

    @property
    def has_clip(self) -> bool:
        return self._clip is not None

    def warmup(self) -> dict[str, str]:
        """Create every enabled model now (Lambda init time); returns capability -> error for failures."""
        probe = Image.new("RGB", (64, 64), (127, 127, 127))
        # Context words guarantee a caption, so the text embedder loads even if the classifier failed.
        (doc,) = self.analyze_batch([probe], [CaptionContext(name_words=["warmup"])])
        errors: dict[str, str] = dict(doc["model_errors"])
        if self._clip is not None and "clip" not in errors:
            clip = self._clip
            self._batch_step([doc], "clip", lambda: clip.get().embed_texts(["warmup"]))
            errors.update(doc["model_errors"])
        return errors

    # ------------------------------------------------------------------------------------------- batch

    def analyze_batch(
        self, images: Sequence[Image.Image], context: Sequence[CaptionContext] | None = None
    ) -> list[dict[str, Any]]:
        """Per image: labels, label_scores, image_vector, crop_vector, caption, caption_vector, ocr_text,
        ocr_boxes, has_text, nsfw_score, faces, face_count, face_vectors, clip_vector (when a CLIP pair is present),
        model_errors and models. Fields of a disabled or failed capability are absent; a failure is
        recorded in ``model_errors[capability]``.
        """
        s = self.settings
        contexts = list(context) if context is not None else [CaptionContext() for _ in images]
        if len(contexts) != len(images):
            raise ValueError(f"{len(images)} images but {len(contexts)} caption contexts")
        images = [im if im.mode == "RGB" else im.convert("RGB") for im in images]
        docs: list[dict[str, Any]] = [{"model_errors": {}, "models": {}} for _ in images]
        if not images:
            return docs

        classifications: list[Classification | None] = [None] * len(images)
        if s.classify or s.embed or s.caption:
            # The centre crops ride in the same classifier batch: one model call, one preprocessing pass.
            crops = [centre_crop(im, s.crop_vector_fraction) for im in images] if s.embed and \
                s.crop_vector_fraction > 0 else []
            found = self._batch_step(docs, "classify" if s.classify else "embed",
                                     lambda: self._classifier.get().classify([*images, *crops], s.top_k))
            if found is not None:
                classifications = list(found[:len(images)])
                version = self._classifier.get().entry.provenance
                for i, (doc, result) in enumerate(zip(docs, found[:len(images)], strict=True)):
                    if s.classify:
                        doc["label_scores"] = result.label_scores()
                        doc["labels"] = result.labels(s.min_label_score)
                    if s.embed:
                        doc["image_vector"] = result.vector
                        if crops:
                            doc["crop_vector"] = found[len(images) + i].vector
                    doc["models"][self._classifier.get().entry.name] = version

        ocr_texts = [""] * len(images)
        if s.ocr:
            reader: Callable[[Image.Image], OcrResult] = lambda im: self._ocr.get().read(im)  # noqa: E731
            for i, (doc, image) in enumerate(zip(docs, images, strict=True)):
                read = self._one_step(doc, "ocr", functools.partial(reader, image))
                if read is None:
                    continue
                doc["ocr_text"] = read.text
                doc["ocr_boxes"] = read.boxes
                doc["has_text"] = read.has_text
                ocr_texts[i] = read.text
                doc["models"].update(self._ocr.get().versions)

        if s.safety:
            scores = self._batch_step(docs, "safety", lambda: self._safety.get().scores(images))
            if scores is not None:
                for doc, score in zip(docs, scores, strict=True):
                    doc["nsfw_score"] = round(score, 6)
                    doc["models"]["open-nsfw"] = self._safety.get().version

        if s.faces:
            detect: Callable[[Image.Image], FaceResult] = lambda im: self._faces.get().analyze(im)  # noqa: E731
            for doc, image in zip(docs, images, strict=True):
                faces = self._one_step(doc, "faces", functools.partial(detect, image))
                if faces is None:
                    continue
                doc["faces"] = faces.boxes
                doc["face_count"] = len(faces.boxes)
                doc["face_vectors"] = [l2_normalise(v) for v in faces.vectors]
                doc["models"].update(self._faces.get().versions)

        if self._clip is not None:
            clip = self._clip
            vectors = self._batch_step(docs, "clip", lambda: clip.get().embed_images(images))
            if vectors is not None:
                for doc, vector in zip(docs, vectors, strict=True):
                    doc["clip_vector"] = vector
                    doc["models"]["clip"] = clip.get().version

        if s.caption:
            builder = build_caption if s.caption_style == "v1" else build_caption_v2
            captions = [
                builder(c, t, ctx, s.min_label_score)
                for c, t, ctx in zip(classifications, ocr_texts, contexts, strict=True)
            ]
            for doc, caption in zip(docs, captions, strict=True):
                doc["caption"] = caption
            with_text = [i for i, c in enumerate(captions) if c]
            vectors = self._batch_step(
                [docs[i] for i in with_text], "caption",
                lambda: self._text.get().embed([captions[i] for i in with_text]),
            )
            if vectors is not None and s.caption_style != "v1":
                vectors = self._with_concepts(docs, with_text, vectors, classifications)
            if vectors is not None:
                for i, vector in zip(with_text, vectors, strict=True):
                    docs[i]["caption_vector"] = vector
                    docs[i]["models"][self._text.get().entry.name] = self._text.get().entry.provenance
        return docs

    def _with_concepts(self, docs: list[dict[str, Any]], rows: list[int], vectors: npt.NDArray[np.float32],
                       classifications: Sequence[Classification | None]) -> npt.NDArray[np.float32]:
        """Caption vectors mixed with the class-probability projection, for images the classifier saw."""
        seen: list[int] = []
        rows_of_probs: list[npt.NDArray[np.float32]] = []
        for j, i in enumerate(rows):
            found = classifications[i]
            if found is not None and found.probabilities is not None:
                seen.append(j)
                rows_of_probs.append(found.probabilities)
        if not seen:
            return vectors
        probs = np.stack(rows_of_probs)
        projected = self._batch_step([docs[rows[j]] for j in seen], "caption",
                                     lambda: self._concepts.get().project(probs))
        if projected is None:
            return vectors  # the plain caption vector is still a caption vector
        out = vectors.copy()
        out[seen] = mix_caption_vectors(vectors[seen], projected, self.settings.caption_text_weight)
        for j in seen:
            # Documents name what made their vectors, so a reindex can tell v1 caption vectors from v2.
            docs[rows[j]]["models"][CLASS_TEXT_NAME] = self._concepts.get().version
        return out

    @staticmethod
    def _batch_step(docs: list[dict[str, Any]], capability: str, run: Callable[[], _T]) -> _T | None:
        if not docs:
            return None
        try:
            return run()
        except Exception as exc:  # one model's failure must not lose the other fields
            for doc in docs:
                doc["model_errors"][capability] = _error(exc)
            return None

    @staticmethod
    def _one_step(doc: dict[str, Any], capability: str, run: Callable[[], _T]) -> _T | None:
        try:
            return run()
        except Exception as exc:  # per image: one bad image must not cost the batch its OCR or faces
            doc["model_errors"][capability] = _error(exc)
            return None

    # ----------------------------------------------------------------------------------- single calls

    def classify(self, image: Image.Image, top_k: int | None = None) -> dict[str, Any]:
        """labels, label_scores and image_vector for one image (POST /classify)."""
        result = self._classifier.get().classify([image.convert("RGB")], top_k or self.settings.top_k)[0]
        return {
            "labels": result.labels(self.settings.min_label_score),
            "label_scores": result.label_scores(),
            "image_vector": result.vector,
            "models": {self._classifier.get().entry.name: self._classifier.get().entry.provenance},
        }

    def recognize(self, image: Image.Image, context: CaptionContext | None = None) -> dict[str, Any]:
        """Every enabled capability for one image (POST /recognize)."""
        return self.analyze_batch([image], [context or CaptionContext()])[0]

    def image_vectors(self, image: Image.Image) -> dict[str, npt.NDArray[np.float32]]:
        """Vectors for query-by-image: image_vector, crop_vector (unless off), and clip_vector when a CLIP
        pair is present."""
        rgb = image.convert("RGB")
        fraction = self.settings.crop_vector_fraction
        found = self._classifier.get().classify([rgb, centre_crop(rgb, fraction)] if fraction > 0 else [rgb], 1)
        out = {"image_vector": found[0].vector}
        if fraction > 0:
            out["crop_vector"] = found[1].vector
        if self._clip is not None:
            out["clip_vector"] = self._clip.get().embed_images([image.convert("RGB")])[0]
        return out

    def embed_query(self, text: str) -> dict[str, npt.NDArray[np.float32]]:
        """Vectors for a text query: caption_vector always, clip_vector when a CLIP pair is present."""
        out = {"caption_vector": self._text.get().embed([text])[0]}
        if self._clip is not None:
            out["clip_vector"] = self._clip.get().embed_texts([text])[0]
        return out

    def text_embedder(self) -> TextEmbedder:
        embedder: TextEmbedder = self._text.get()
        return embedder

    @property
    def model_versions(self) -> dict[str, str]:
        out = {e.name: e.provenance for e in self.manifest.models if e.file is not None}
        if self._clip is not None:
            out["clip"] = "present"
        return out
