"""OCR with rapidocr's packaged PP-OCR ONNX models: detect first, recognise only where text was found.

Most photos hold no text, so the expensive recogniser should never run (or even load) for them. Two
gates keep it that way: a cheap detection pass on a small copy of the image (the pre-check), then full
detection and recognition only when the pre-check found a text region.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pixdex.models.manifest import TASK_OCR_CLS, TASK_OCR_DET, TASK_OCR_REC, Manifest, package_path
from pixdex.models.session import ModelRunError, ModelUnavailableError, RuntimeOptions

# The PP-OCR files rapidocr 3.10 runs by default (multilingual PP-OCRv6 small det/rec, v2 orientation).
_DEFAULT_FILES = ("PP-OCRv6_det_small.onnx", "ch_ppocr_mobile_v2.0_cls_mobile.onnx", "PP-OCRv6_rec_small.onnx")


def rapidocr_model_files() -> tuple[str, str, str]:
    """(det, cls, rec) paths relative to the rapidocr package, checked to exist."""
    root = package_path("rapidocr")
    rel = tuple(f"models/{name}" for name in _DEFAULT_FILES)
    missing = [r for r in rel if not (root / r).is_file()]
    if missing:
        raise ModelUnavailableError(f"rapidocr ships no {missing[0]}")
    return rel[0], rel[1], rel[2]


@dataclass(frozen=True)
class OcrOptions:
    # Detection runs with the longer side at most this (never upscaled: rapidocr's default "min" limit
    # upscales small photos to 736 px on the short side, tripling the cost for nothing).
    det_max_side: int = 960
    # Pre-check detection size; 0 skips the pre-check and always runs full detection.
    precheck_max_side: int = 480
    min_text_score: float = 0.6
    # Lines shorter than this (after stripping) are dropped: single glyphs are mostly texture noise.
    min_text_chars: int = 2
    # Orientation classifier for upside-down text lines; off by default (photos rarely need it).
    use_orientation: bool = False


@dataclass
class OcrResult:
    text: str = ""
    boxes: list[dict[str, Any]] = field(default_factory=list)
    prechecked_out: bool = False

    @property
    def has_text(self) -> bool:
        return bool(self.text)


def _resolve(manifest: Manifest, task: str, fallback: str) -> Path:
    entry = manifest.first(task)
    if entry is not None and entry.package is not None:
        return entry.resolve(Path("."))
    path = package_path("rapidocr") / fallback
    if not path.is_file():
        raise ModelUnavailableError(f"rapidocr model not found: {path}")
    return path


def _limit(image: Image.Image, max_side: int) -> tuple[Image.Image, float]:
    """A copy with the longer side at most ``max_side`` and the factor back to original coordinates."""
    longest = max(image.size)
    if longest <= max_side:
        return image, 1.0
    scale = max_side / longest
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0), 1.0 / scale


def _bgr(image: Image.Image) -> np.ndarray[Any, Any]:
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    return np.ascontiguousarray(np.asarray(rgb)[:, :, ::-1])


class TextReader:
    def __init__(self, manifest: Manifest, options: RuntimeOptions, ocr: OcrOptions | None = None) -> None:
        self.options = ocr or OcrOptions()
        det_rel, cls_rel, rec_rel = _DEFAULT_FILES
        self.det_path = _resolve(manifest, TASK_OCR_DET, f"models/{det_rel}")
        self.cls_path = _resolve(manifest, TASK_OCR_CLS, f"models/{cls_rel}")
        self.rec_path = _resolve(manifest, TASK_OCR_REC, f"models/{rec_rel}")
        self.versions = {
            e.name: e.provenance for e in (manifest.first(TASK_OCR_DET), manifest.first(TASK_OCR_REC)) if e
        } or {"pp-ocr": "rapidocr"}
        self._runtime = options
        self._engine: Any = None
        # rapidocr keeps per-call flags (use_rec, use_cls) on the engine object: serialise calls.
        self._lock = threading.Lock()

    def _load(self) -> Any:
        if self._engine is None:
            try:
                from rapidocr import RapidOCR
            except ImportError as exc:
                raise ModelUnavailableError("OCR needs the rapidocr package") from exc
            threads = self._runtime.intra_op_threads
            self._engine = RapidOCR(params={
                "Global.log_level": "error",
                "Global.text_score": self.options.min_text_score,
                "Global.use_cls": self.options.use_orientation,
                "Det.model_path": str(self.det_path),
                "Cls.model_path": str(self.cls_path),
                "Rec.model_path": str(self.rec_path),
                "Det.limit_type": "max",
                "Det.limit_side_len": self.options.det_max_side,
                "EngineConfig.onnxruntime.intra_op_num_threads": threads if threads > 0 else -1,
                "EngineConfig.onnxruntime.inter_op_num_threads": 1,
                "EngineConfig.onnxruntime.use_cuda": self._runtime.uses_cuda,
            })
        return self._engine

    def precheck(self, image: Image.Image) -> bool:
        """True when a cheap low-resolution detection pass finds any text region."""
        if self.options.precheck_max_side <= 0:
            return True
        small, _ = _limit(image, self.options.precheck_max_side)
        with self._lock:
            engine = self._load()
            try:
                found = engine(_bgr(small), use_det=True, use_cls=False, use_rec=False)
            except Exception as exc:
                raise ModelRunError(f"OCR pre-check failed: {exc}") from exc
        boxes = getattr(found, "boxes", None)
        return boxes is not None and len(boxes) > 0

    def read(self, image: Image.Image) -> OcrResult:
        if not self.precheck(image):
            return OcrResult(prechecked_out=True)
        limited, back = _limit(image, self.options.det_max_side)
        with self._lock:
            engine = self._load()
            try:
                out = engine(_bgr(limited), use_det=True, use_cls=self.options.use_orientation, use_rec=True)
            except Exception as exc:
                raise ModelRunError(f"OCR failed: {exc}") from exc
        texts = getattr(out, "txts", None) or ()
        scores = getattr(out, "scores", None) or ()
        raw_boxes = getattr(out, "boxes", None)
        if raw_boxes is None or not texts:
            return OcrResult()
        lines: list[str] = []
        boxes: list[dict[str, Any]] = []
        for text, score, box in zip(texts, scores, raw_boxes, strict=False):
            clean = " ".join(str(text).split())
            if float(score) < self.options.min_text_score or len(clean) < self.options.min_text_chars:
                continue
            points = [[round(float(x) * back, 1), round(float(y) * back, 1)] for x, y in np.asarray(box)]
            lines.append(clean)
            boxes.append({"text": clean, "score": round(float(score), 4), "box": points})
        return OcrResult(text="\n".join(lines), boxes=boxes)
