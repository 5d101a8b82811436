"""Real photos that installed packages ship (scikit-image, scikit-learn) and one shared analyzer."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from pixdex.models.analysis import DEFAULT_MODEL_DIR, ImageAnalyzer, ModelSettings
from pixdex.models.manifest import TASK_IMAGE_CLASSIFIER, TASK_TEXT_EMBEDDER, Manifest
from pixdex.packages import package_dir

SKIMAGE_PHOTOS = ("chelsea", "coffee", "rocket", "astronaut", "motorcycle_left", "camera", "page", "coins",
                  "hubble_deep_field", "retina", "moon", "clock_motion", "brick", "grass", "gravel", "ihc",
                  "logo")
SKLEARN_PHOTOS = ("china", "flower")


def load_photos() -> dict[str, Image.Image]:
    photos: dict[str, Image.Image] = {}
    skimage_dir = package_dir("skimage")
    if skimage_dir is not None:
        for name in SKIMAGE_PHOTOS:
            found = sorted((skimage_dir / "data").glob(f"{name}.*"))
            if found:
                with Image.open(found[0]) as im:
                    photos[name] = im.convert("RGB")
    sklearn_dir = package_dir("sklearn")
    if sklearn_dir is not None:
        for name in SKLEARN_PHOTOS:
            path = sklearn_dir / "datasets" / "images" / f"{name}.jpg"
            if path.is_file():
                with Image.open(path) as im:
                    photos[name] = im.convert("RGB")
    return photos


@pytest.fixture(scope="session")
def photos() -> dict[str, Image.Image]:
    found = load_photos()
    if len(found) < len(SKIMAGE_PHOTOS) + len(SKLEARN_PHOTOS):
        pytest.skip("needs scikit-image and scikit-learn (their sample photos are the test set)")
    return found


@pytest.fixture(scope="session")
def built_models() -> Path:
    manifest = Manifest.load(DEFAULT_MODEL_DIR)
    if manifest.first(TASK_IMAGE_CLASSIFIER) is None or manifest.first(TASK_TEXT_EMBEDDER) is None:
        pytest.skip("models not built (pixdex models build)")
    return DEFAULT_MODEL_DIR


@pytest.fixture(scope="session")
def analyzer(built_models: Path) -> ImageAnalyzer:
    return ImageAnalyzer(ModelSettings(model_dir=built_models, ocr=False, safety=False))
