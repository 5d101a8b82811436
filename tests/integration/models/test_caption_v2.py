"""Caption v2 through the real models: vectors mix the caption with the class projection, and say so."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pixdex.models.analysis import CaptionContext, ImageAnalyzer, ModelSettings, mix_caption_vectors
from pixdex.models.concepts import CLASS_TEXT_NAME


def test_v2_vector_is_the_caption_mixed_with_the_class_projection(built_models: Path,
                                                                  photos: dict[str, Image.Image]) -> None:
    base = {"model_dir": built_models, "ocr": False, "safety": False}
    v1 = ImageAnalyzer(ModelSettings(caption_style="v1", **base))  # type: ignore[arg-type]
    v2 = ImageAnalyzer(ModelSettings(caption_style="v2", **base))  # type: ignore[arg-type]
    context = [CaptionContext(exif_words=["Canon", "EOS"])]
    (old,) = v1.analyze_batch([photos["chelsea"]], context)
    (new,) = v2.analyze_batch([photos["chelsea"]], context)
    assert "Canon" in old["caption"] and "Canon" not in new["caption"]
    assert CLASS_TEXT_NAME in new["models"] and CLASS_TEXT_NAME not in old["models"]
    # Rebuild the v2 vector from its parts: the caption's embedding and the projection of the probabilities.
    caption_vector = v2.text_embedder().embed([new["caption"]])
    probabilities = v2._classifier.get().classify([photos["chelsea"]])[0].probabilities
    projected = v2._concepts.get().project(probabilities)
    expected = mix_caption_vectors(caption_vector, projected, v2.settings.caption_text_weight)[0]
    np.testing.assert_allclose(new["caption_vector"], expected, atol=1e-5)
    assert abs(float(np.linalg.norm(new["caption_vector"])) - 1.0) < 1e-5
    # The projection of a cat photo points at "a cat" in the query space.
    query = v2.embed_query("a cat")["caption_vector"]
    assert float(projected[0] @ query) > 0.3
