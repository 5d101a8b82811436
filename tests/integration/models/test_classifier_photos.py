"""EfficientNet-Lite0 on real photos: sensible labels, WordNet parents, near-duplicate similarity."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from pixdex.models.analysis import ImageAnalyzer

# Photo -> ImageNet classes any of which is a correct answer (the photo's subject in ImageNet's terms).
EXPECTED_TOP5 = {
    "chelsea": {"tabby", "tiger cat", "Egyptian cat"},
    "coffee": {"espresso", "cup", "coffee mug"},
    "rocket": {"missile", "projectile", "space shuttle"},
    "motorcycle_left": {"moped", "motor scooter"},
    "camera": {"tripod", "reflex camera"},
    "china": {"palace", "bell cote", "pagoda", "monastery"},
    "flower": {"daisy"},
}

# Measured on these photos (docs/quality.md): transformed copies scored >= 0.655 against their original,
# different photos <= 0.484. The threshold sits between, closer to the copies' worst case.
NEAR_DUPLICATE_THRESHOLD = 0.6


@pytest.mark.parametrize("photo", sorted(EXPECTED_TOP5))
def test_expected_class_in_top5(analyzer: ImageAnalyzer, photos: dict[str, Image.Image], photo: str) -> None:
    result = analyzer.classify(photos[photo], top_k=5)
    top5 = {s["label"] for s in result["label_scores"]}
    expected = {e.lower() for e in EXPECTED_TOP5[photo]}
    assert top5 & expected, f"{photo}: top-5 {result['label_scores']} has none of {expected}"


def test_cat_photo_is_found_by_parent_terms(analyzer: ImageAnalyzer, photos: dict[str, Image.Image]) -> None:
    labels = analyzer.classify(photos["chelsea"])["labels"]
    assert {"cat", "feline", "animal"} <= set(labels)
    coffee = analyzer.classify(photos["coffee"])["labels"]
    assert {"espresso", "coffee", "beverage"} <= set(coffee)


def _jpeg(im: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as decoded:
        return decoded.convert("RGB")


def _crop10(im: Image.Image) -> Image.Image:
    dx, dy = im.width // 20, im.height // 20
    return im.crop((dx, dy, im.width - dx, im.height - dy))


TRANSFORMS = {
    "resized_50pct": lambda im: im.resize((im.width // 2, im.height // 2), Image.Resampling.BILINEAR),
    "jpeg_q20": lambda im: _jpeg(im, 20),
    "cropped_10pct": _crop10,
    "flipped": ImageOps.mirror,
}


@pytest.mark.parametrize("transform", sorted(TRANSFORMS))
def test_near_duplicates_score_above_threshold_others_below(
    analyzer: ImageAnalyzer, photos: dict[str, Image.Image], transform: str
) -> None:
    names = sorted(photos)
    originals = np.stack([analyzer.image_vectors(photos[n])["image_vector"] for n in names])
    copies = np.stack([analyzer.image_vectors(TRANSFORMS[transform](photos[n]))["image_vector"] for n in names])
    sims = copies @ originals.T
    for i, name in enumerate(names):
        assert sims[i, i] >= NEAR_DUPLICATE_THRESHOLD, f"{name} {transform}: {sims[i, i]:.3f}"
        others = np.delete(sims[i], i)
        assert others.max() < NEAR_DUPLICATE_THRESHOLD, f"{name} {transform} vs others: {others.max():.3f}"
    assert np.allclose(np.linalg.norm(copies, axis=1), 1.0, atol=1e-5)
