"""Caption embeddings: the semantic text-to-image path without CLIP, on the sample photos."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pixdex.models.analysis import CaptionContext, ImageAnalyzer

# Queries whose subject ImageNet's vocabulary covers: the intended photo must rank first. Queries about
# subjects outside it (moon, galaxies, cells...) are measured and reported in docs/quality.md, not asserted.
IMAGENET_QUERIES = {
    "a cat": "chelsea",
    "a cup of coffee": "coffee",
    "rocket launch": "rocket",
    "motorbike": "motorcycle_left",
    "photographer with a camera on a tripod": "camera",
    "chinese palace": "china",
    "a flower": "flower",
}


@pytest.fixture(scope="module")
def captioned(analyzer: ImageAnalyzer, photos: dict[str, Image.Image]) -> tuple[list[str], np.ndarray]:
    names = sorted(photos)
    docs = analyzer.analyze_batch([photos[n] for n in names], [CaptionContext() for _ in names])
    assert all(not d["model_errors"] for d in docs)
    return names, np.stack([d["caption_vector"] for d in docs])


@pytest.mark.parametrize(("query", "photo"), sorted(IMAGENET_QUERIES.items()))
def test_query_ranks_intended_photo_first(
    analyzer: ImageAnalyzer, captioned: tuple[list[str], np.ndarray], query: str, photo: str
) -> None:
    names, vectors = captioned
    scores = vectors @ analyzer.embed_query(query)["caption_vector"]
    ranking = [names[i] for i in np.argsort(-scores)]
    assert ranking[0] == photo, f"{query!r}: {ranking[:3]}"


def test_query_vectors_are_unit_and_semantic(analyzer: ImageAnalyzer) -> None:
    embedder = analyzer.text_embedder()
    vectors = embedder.embed(["a kitten sleeping", "a small cat asleep", "quarterly tax report", ""])
    assert vectors.shape == (4, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > 0.6 > vectors[0] @ vectors[2]
    # Batching and length-sorting must not change a text's vector.
    assert np.allclose(embedder.embed(["a small cat asleep"])[0], vectors[1], atol=1e-5)


def test_query_has_no_clip_vector_without_a_pair(analyzer: ImageAnalyzer) -> None:
    assert not analyzer.has_clip
    assert set(analyzer.embed_query("a cat")) == {"caption_vector"}
