"""Face boxes and 128-d face embeddings with dlib (dlib-bin) and the CC0 files of face_recognition_models.

Only the 5-point landmark model, the ResNet embedding model and (optionally) the MMOD CNN detector are
used; the 68-point landmark file in the same package is non-commercial and is never opened. Files are
loaded by path: importing ``face_recognition_models`` pulls ``pkg_resources``, which newer setuptools
no longer ship.

Face vectors are biometric data: the analyzer keeps this capability off unless settings turn it on.
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from PIL import Image

from pixdex.models.manifest import TASK_FACE_DET, TASK_FACE_EMBED, TASK_FACE_LANDMARKS, Manifest, package_path
from pixdex.models.session import ModelRunError, ModelUnavailableError

FaceDetectorKind = Literal["hog", "mmod"]
_FILES = {
    TASK_FACE_DET: "models/mmod_human_face_detector.dat",
    TASK_FACE_LANDMARKS: "models/shape_predictor_5_face_landmarks.dat",
    TASK_FACE_EMBED: "models/dlib_face_recognition_resnet_model_v1.dat",
}


@dataclass(frozen=True)
class FaceOptions:
    detector: FaceDetectorKind = "hog"
    # Detection image size: HOG finds faces down to ~80 px at this scale, and cost grows with area.
    max_side: int = 1024
    # Small images are upsampled once so that faces of ~40 px are still found.
    upsample_below: int = 640
    # HOG detection scores below this were mostly badges and textures on the sample photos.
    min_score: float = 0.3
    max_faces: int = 32


@dataclass
class FaceResult:
    boxes: list[dict[str, Any]] = field(default_factory=list)
    vectors: list[npt.NDArray[np.float32]] = field(default_factory=list)


def _path(manifest: Manifest, task: str) -> Path:
    entry = manifest.first(task)
    if entry is not None and entry.package is not None:
        return entry.resolve(Path("."))
    path = package_path("face_recognition_models") / _FILES[task]
    if not path.is_file():
        raise ModelUnavailableError(f"face_recognition_models ships no {_FILES[task]}")
    return path


def _dlib() -> Any:
    # dlib ships no type information; importing it by name keeps mypy strict everywhere else.
    return importlib.import_module("dlib")


class FaceAnalyzer:
    def __init__(self, manifest: Manifest, options: FaceOptions | None = None) -> None:
        self.options = options or FaceOptions()
        self.landmarks_path = _path(manifest, TASK_FACE_LANDMARKS)
        self.embed_path = _path(manifest, TASK_FACE_EMBED)
        self.mmod_path = _path(manifest, TASK_FACE_DET) if self.options.detector == "mmod" else None
        entries = [manifest.first(t) for t in (TASK_FACE_DET, TASK_FACE_LANDMARKS, TASK_FACE_EMBED)]
        self.versions = {e.name: e.provenance for e in entries if e is not None}
        self.versions["dlib-detector"] = self.options.detector
        self._models: tuple[Any, Any, Any] | None = None
        # dlib's detector and predictors keep scratch state: one call at a time per process.
        self._lock = threading.Lock()

    def _load(self) -> tuple[Any, Any, Any]:
        if self._models is None:
            try:
                dlib = _dlib()
            except ImportError as exc:
                raise ModelUnavailableError("face analysis needs the dlib-bin package") from exc
            if self.mmod_path is not None:
                detector = dlib.cnn_face_detection_model_v1(str(self.mmod_path))
            else:
                detector = dlib.get_frontal_face_detector()
            self._models = (
                detector,
                dlib.shape_predictor(str(self.landmarks_path)),
                dlib.face_recognition_model_v1(str(self.embed_path)),
            )
        return self._models

    def _detect(self, detector: Any, pixels: npt.NDArray[np.uint8], upsample: int) -> list[tuple[Any, float]]:
        if self.mmod_path is not None:
            return [(d.rect, float(d.confidence)) for d in detector(pixels, upsample)]
        rects, scores, _ = detector.run(pixels, upsample, 0.0)
        return [(r, float(s)) for r, s in zip(rects, scores, strict=True)]

    def analyze(self, image: Image.Image, embed: bool = True) -> FaceResult:
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        longest = max(rgb.size)
        scale = 1.0
        if longest > self.options.max_side:
            scale = self.options.max_side / longest
            rgb = rgb.resize((max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))),
                             Image.Resampling.BILINEAR, reducing_gap=2.0)
        pixels = np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))
        upsample = 1 if max(rgb.size) < self.options.upsample_below else 0
        back = 1.0 / scale
        with self._lock:
            detector, predictor, encoder = self._load()
            try:
                found = self._detect(detector, pixels, upsample)
                found = [f for f in found if f[1] >= self.options.min_score]
                found.sort(key=lambda f: -f[1])
                found = found[: self.options.max_faces]
                result = FaceResult()
                shapes = _dlib().full_object_detections()
                for rect, score in found:
                    x0, y0 = max(0, rect.left()), max(0, rect.top())
                    x1, y1 = min(rgb.width, rect.right()), min(rgb.height, rect.bottom())
                    result.boxes.append({
                        "box": [round(x0 * back, 1), round(y0 * back, 1), round(x1 * back, 1), round(y1 * back, 1)],
                        "score": round(score, 4),
                    })
                    shapes.append(predictor(pixels, rect))
                if embed and len(shapes):
                    descriptors = encoder.compute_face_descriptor(pixels, shapes)
                    result.vectors = [np.asarray(d, dtype=np.float32) for d in descriptors]
            except ModelUnavailableError:
                raise
            except Exception as exc:
                raise ModelRunError(f"face analysis failed: {exc}") from exc
        return result
