"""The CUDA provider on a GPU machine (the heavy task's image has onnxruntime-gpu). Skips elsewhere."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from pixdex.models.analysis import DEFAULT_MODEL_DIR, ImageAnalyzer, ModelSettings
from pixdex.models.session import RuntimeOptions

pytestmark = pytest.mark.skipif(
    "CUDAExecutionProvider" not in ort.get_available_providers(),
    reason="needs onnxruntime-gpu and a CUDA device (the heavy task's machine)",
)


def test_auto_selects_cuda_and_matches_cpu() -> None:
    assert RuntimeOptions().uses_cuda
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8))
    settings = ModelSettings(model_dir=DEFAULT_MODEL_DIR, ocr=False, safety=False, faces=False, clip=False)
    gpu = ImageAnalyzer(settings)
    cpu = ImageAnalyzer(dataclasses.replace(settings, providers=("CPUExecutionProvider",)))
    session = gpu._classifier.get().session.session()  # the provider actually bound, not just requested
    assert session.get_providers()[0] == "CUDAExecutionProvider"
    g = gpu.analyze_batch([image])[0]
    c = cpu.analyze_batch([image])[0]
    assert float(np.dot(g["image_vector"], c["image_vector"])) > 0.999
    assert g["label_scores"][0]["label"] == c["label_scores"][0]["label"]
